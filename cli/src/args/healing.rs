//! Auto-healing, the maintenance window and scheduled actions: what `nodes create`,
//! `nodes update` and `groups create` accept.

use chrono::NaiveTime;
use clap::Args;
use tether::health::{AutoHealing, DailyWindow};
use tether::schedules::{Schedule, ScheduledAction};

/// Auto-healing and the maintenance window of a new node or group template; the flags not
/// given take the API's defaults (healing on, after 300 s impaired, grace 300 s, at most 3
/// heals per 24 h; no window).
#[derive(Debug, Args)]
pub struct HealingArgs {
    /// Recycle the node when its instance fails its EC2 status checks (the default)
    #[arg(long, conflicts_with = "no_auto_healing")]
    pub auto_healing: bool,
    /// Never recycle the node for failed status checks
    #[arg(long)]
    pub no_auto_healing: bool,
    /// How long a status check must have been impaired before the node is recycled, 60 to
    /// 86400 seconds (default 300)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(60..=86_400))]
    pub unhealthy_after: Option<u32>,
    /// How long after each launch the instance is not judged (it boots), 0 to 86400 seconds
    /// (default 300)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub healing_grace: Option<u32>,
    /// At most N heals (1 to 20) within HOURS (1 to 168), then healing stops with the
    /// healing_stopped condition until the window has passed (default 3/24)
    #[arg(long, value_name = MAX_HEALS_FORM, value_parser = parse_max_heals)]
    pub max_heals: Option<MaxHeals>,
    /// A daily window, HH:MM-HH:MM (UTC), in which a recycle ahead of an AWS scheduled event
    /// (retirement, reboot, stop) runs (default: at once, when the event arrives)
    #[arg(long, value_name = WINDOW_FORM, value_parser = parse_daily_window)]
    pub maintenance_window: Option<DailyWindow>,
}

impl HealingArgs {
    /// The auto-healing settings: the defaults with the flags given.
    pub fn policy(&self) -> AutoHealing {
        self.changes().apply(AutoHealing::default())
    }

    fn changes(&self) -> HealingChanges {
        HealingChanges {
            enabled: on_off(self.auto_healing, self.no_auto_healing),
            unhealthy_duration_seconds: self.unhealthy_after,
            grace_period_seconds: self.healing_grace,
            max_heals: self.max_heals,
        }
    }
}

/// The node's scheduled actions (`nodes create`; a group's members are paused and resumed
/// by their group).
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Pause, resume or recycle the node on a cron schedule: 'ACTION CRON [TIME_ZONE]' as one
    /// quoted argument, e.g. 'pause 0 20 * * 1-5 Europe/Paris' (ACTION pause, resume or
    /// recycle; CRON five fields, minute hour day-of-month month day-of-week, or @daily and
    /// the like; TIME_ZONE an IANA name, default UTC; repeat the flag, at most 10)
    #[arg(long = "schedule", value_name = SCHEDULE_FORM, value_parser = parse_schedule)]
    pub schedules: Vec<Schedule>,
}

/// Changes of auto-healing, the maintenance window and the schedules (`nodes update`).
#[derive(Debug, Args)]
pub struct HealingChangeArgs {
    /// Turn auto-healing on. Each auto-healing flag changes that setting of the node's
    /// (read first) and keeps the others
    #[arg(long, group = "change", conflicts_with = "no_auto_healing")]
    pub auto_healing: bool,
    /// Turn auto-healing off (its other settings are kept for when it is on again)
    #[arg(long, group = "change")]
    pub no_auto_healing: bool,
    /// How long a status check must have been impaired before the node is recycled, 60 to 86400 seconds
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(60..=86_400), group = "change")]
    pub unhealthy_after: Option<u32>,
    /// How long after each launch the instance is not judged, 0 to 86400 seconds
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=86_400), group = "change")]
    pub healing_grace: Option<u32>,
    /// At most N heals (1 to 20) within HOURS (1 to 168; without it, the node's window is kept)
    #[arg(long, value_name = MAX_HEALS_FORM, value_parser = parse_max_heals, group = "change")]
    pub max_heals: Option<MaxHeals>,
    /// The daily maintenance window, HH:MM-HH:MM (UTC)
    #[arg(long, value_name = WINDOW_FORM, value_parser = parse_daily_window, group = "change", conflicts_with = "no_maintenance_window")]
    pub maintenance_window: Option<DailyWindow>,
    /// Remove the maintenance window (a recycle ahead of an AWS event then runs at once)
    #[arg(long, group = "change")]
    pub no_maintenance_window: bool,
    /// A scheduled action, 'ACTION CRON [TIME_ZONE]' as one quoted argument (repeat the flag;
    /// replaces every schedule)
    #[arg(long = "schedule", value_name = SCHEDULE_FORM, value_parser = parse_schedule, group = "change", conflicts_with = "no_schedules")]
    pub schedules: Vec<Schedule>,
    /// Remove every schedule
    #[arg(long, group = "change")]
    pub no_schedules: bool,
}

impl HealingChangeArgs {
    /// The auto-healing changes given, if any.
    pub fn changes(&self) -> Option<HealingChanges> {
        let changes = HealingChanges {
            enabled: on_off(self.auto_healing, self.no_auto_healing),
            unhealthy_duration_seconds: self.unhealthy_after,
            grace_period_seconds: self.healing_grace,
            max_heals: self.max_heals,
        };
        (changes != HealingChanges::default()).then_some(changes)
    }

    /// `Some(None)`: remove the window.
    pub fn maintenance_window(&self) -> Option<Option<DailyWindow>> {
        self.maintenance_window.map(Some).or_else(|| self.no_maintenance_window.then_some(None))
    }

    /// The whole new list, if it changes (`[]`: none).
    pub fn schedules(&self) -> Option<Vec<Schedule>> {
        (self.no_schedules || !self.schedules.is_empty()).then(|| self.schedules.clone())
    }
}

fn on_off(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

/// Settings of auto-healing to change; `None`: left as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealingChanges {
    pub enabled: Option<bool>,
    pub unhealthy_duration_seconds: Option<u32>,
    pub grace_period_seconds: Option<u32>,
    pub max_heals: Option<MaxHeals>,
}

impl HealingChanges {
    /// `policy` with the settings given changed.
    pub fn apply(self, policy: AutoHealing) -> AutoHealing {
        AutoHealing {
            enabled: self.enabled.unwrap_or(policy.enabled),
            unhealthy_duration_seconds: self.unhealthy_duration_seconds.unwrap_or(policy.unhealthy_duration_seconds),
            grace_period_seconds: self.grace_period_seconds.unwrap_or(policy.grace_period_seconds),
            max_heals: self.max_heals.map_or(policy.max_heals, |m| m.count),
            window_hours: self.max_heals.and_then(|m| m.window_hours).unwrap_or(policy.window_hours),
        }
    }
}

/// `--max-heals N[/HOURS]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxHeals {
    pub count: u8,
    /// `None`: the current window (the default one, 24 h, for a new node).
    pub window_hours: Option<u32>,
}

pub(crate) const MAX_HEALS_FORM: &str = "N[/HOURS]";
pub(crate) const WINDOW_FORM: &str = "HH:MM-HH:MM";
pub(crate) const SCHEDULE_FORM: &str = "ACTION CRON [TIME_ZONE]";

/// `N[/HOURS]`: 1 to 20 heals, within 1 to 168 hours.
pub(crate) fn parse_max_heals(raw: &str) -> Result<MaxHeals, String> {
    let form = format!("give {MAX_HEALS_FORM}, e.g. 3 or 3/24 (at most 3 heals within 24 hours)");
    let (count, hours) = raw.split_once('/').map_or((raw, None), |(c, h)| (c, Some(h)));
    let count = count.trim().parse::<u8>().ok().filter(|c| (1..=20).contains(c)).ok_or_else(|| format!("`{}` is not 1 to 20 heals: {form}", count.trim()))?;
    let window_hours = match hours {
        None => None,
        Some(h) => Some(h.trim().parse::<u32>().ok().filter(|h| (1..=168).contains(h)).ok_or_else(|| format!("`{}` is not 1 to 168 hours: {form}", h.trim()))?),
    };
    Ok(MaxHeals { count, window_hours })
}

/// `HH:MM-HH:MM` (UTC; `HH:MM:SS` taken too); an end before the start spans midnight.
pub(crate) fn parse_daily_window(raw: &str) -> Result<DailyWindow, String> {
    let form = format!("give {WINDOW_FORM} (UTC), e.g. 02:00-04:00");
    let time = |t: &str| {
        let t = t.trim();
        NaiveTime::parse_from_str(t, "%H:%M").or_else(|_| NaiveTime::parse_from_str(t, "%H:%M:%S")).map_err(|_| format!("`{t}` is no time of day: {form}"))
    };
    let (start, end) = raw.split_once('-').ok_or_else(|| format!("`{raw}`: {form}"))?;
    let (start, end) = (time(start)?, time(end)?);
    if start == end {
        return Err(format!("`{raw}` is an empty window: {form}"));
    }
    Ok(DailyWindow { start, end })
}

/// `ACTION CRON [TIME_ZONE]` in one argument: the action word, five cron fields (or one
/// `@daily`-like word), then an optional IANA zone. The field count and the zone are checked
/// here; the fields' values by the API (its 422 names `spec.schedules[i].cron`).
pub(crate) fn parse_schedule(raw: &str) -> Result<Schedule, String> {
    let form = format!("give '{SCHEDULE_FORM}' as one quoted argument, e.g. 'pause 0 20 * * 1-5 Europe/Paris'");
    let mut words = raw.split_whitespace();
    let action = match words.next() {
        Some("pause") => ScheduledAction::Pause,
        Some("resume") => ScheduledAction::Resume,
        Some("recycle") => ScheduledAction::Recycle,
        Some(other) => return Err(format!("`{other}` is no action: pause, resume or recycle; {form}")),
        None => return Err(format!("nothing given: {form}")),
    };
    let rest: Vec<&str> = words.collect();
    let cron_fields = match rest.first() {
        None => return Err(format!("`{raw}` has no cron pattern: {form}")),
        Some(word) if word.starts_with('@') => 1,
        Some(_) => 5,
    };
    let zone_given = |word: &str| Schedule { action, cron: "@daily".into(), time_zone: word.into() }.check().is_ok();
    let (cron, time_zone) = match rest.len() {
        n if n == cron_fields => {
            // Four fields and a zone read as five fields: say so rather than let the API
            // refuse the pattern.
            if let Some(zone) = rest.last().filter(|w| cron_fields == 5 && zone_given(w)) {
                return Err(format!("`{}` has 4 cron fields before the time zone {zone}: {form}", rest[..4].join(" ")));
            }
            (rest.join(" "), "UTC".to_owned())
        }
        n if n == cron_fields + 1 => {
            let zone = rest[cron_fields];
            if !zone_given(zone) {
                return Err(format!("`{zone}` is no IANA time zone (like UTC or Europe/Paris): {form}"));
            }
            (rest[..cron_fields].join(" "), zone.to_owned())
        }
        _ if cron_fields == 1 => return Err(format!("`{}`: nothing but a time zone comes after {}: {form}", rest[1..].join(" "), rest[0])),
        n if n < 5 => return Err(format!("`{}` has {n} cron fields: give five (minute hour day-of-month month day-of-week); {form}", rest.join(" "))),
        n => return Err(format!("`{}` has {n} words after the action: five cron fields and a time zone at most; {form}", rest.join(" "))),
    };
    Ok(Schedule { action, cron, time_zone })
}
