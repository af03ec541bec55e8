//! Scheduled actions: a node paused, resumed or recycled on a cron schedule in an IANA time
//! zone (a development cluster paused at night and resumed in the morning, keeping every
//! address and volume). The reconciler evaluates them at each run (every minute): a slot
//! that came at most `MISSED_SLOT_TOLERANCE` ago and has not run yet runs, once.

use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How late a slot may still run: a reconciler run that was late, failed or throttled
/// catches up within this; an older slot is skipped (the next one comes).
pub const MISSED_SLOT_TOLERANCE: TimeDelta = TimeDelta::minutes(15);
/// How many schedules a node may have.
pub const MAX_SCHEDULES: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub action: ScheduledAction,
    /// Five cron fields (minute hour day-of-month month day-of-week), as Vixie cron reads
    /// them: `0 20 * * 1-5` is 20:00 Monday to Friday. Names (`MON`, `JAN`) and `@daily`
    /// and the like work too.
    pub cron: String,
    /// An IANA time zone (`Europe/Paris`); the slots follow its daylight saving time.
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduledAction {
    Pause,
    Resume,
    Recycle,
}

impl ScheduledAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduledAction::Pause => "pause",
            ScheduledAction::Resume => "resume",
            ScheduledAction::Recycle => "recycle",
        }
    }
}

impl Schedule {
    /// What identifies the schedule among the node's: its slots' record is kept under it.
    pub fn key(&self) -> String {
        format!("{} {} {}", self.action.as_str(), self.cron.trim(), self.time_zone)
    }

    fn parsed(&self) -> Result<(croner::Cron, chrono_tz::Tz), (String, String)> {
        let fields = self.cron.split_whitespace().count();
        if !self.cron.trim_start().starts_with('@') && fields != 5 {
            return Err(("cron".into(), format!("`{}` has {fields} fields: give five (minute hour day-of-month month day-of-week), like `0 20 * * 1-5`", self.cron.escape_debug())));
        }
        let cron = croner::Cron::from_str(self.cron.trim()).map_err(|e| ("cron".to_owned(), format!("`{}` is no cron pattern: {e}", self.cron.escape_debug())))?;
        let zone = chrono_tz::Tz::from_str(&self.time_zone).map_err(|_| ("time_zone".to_owned(), format!("`{}` is no IANA time zone: give one like UTC or Europe/Paris", self.time_zone.escape_debug())))?;
        Ok((cron, zone))
    }

    /// Refuses a pattern or zone that cannot be evaluated, naming the field.
    pub fn check(&self) -> Result<(), (String, String)> {
        self.parsed().map(drop)
    }

    /// The latest slot after `after` and no later than `now`, if one came; `None` for a
    /// schedule that cannot be evaluated (refused when it was set).
    pub fn due(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (cron, zone) = self.parsed().ok()?;
        let mut at = after.with_timezone(&zone);
        let mut latest = None;
        // At most one slot a minute: bounded by the minutes between `after` and `now`.
        while let Ok(next) = cron.find_next_occurrence(&at, false) {
            if next.with_timezone(&Utc) > now {
                break;
            }
            latest = Some(next.with_timezone(&Utc));
            at = next;
        }
        latest
    }
}

/// The runs of `schedules` set now: a new one counts its slots from `now` (a slot that came
/// before it was set does not run), a removed one is forgotten.
pub fn runs_from(runs: &mut std::collections::BTreeMap<String, DateTime<Utc>>, schedules: &[Schedule], now: DateTime<Utc>) {
    let keys: Vec<String> = schedules.iter().map(Schedule::key).collect();
    runs.retain(|key, _| keys.contains(key));
    for key in keys {
        runs.entry(key).or_insert(now);
    }
}

/// Refuses schedules that cannot be evaluated, naming the field relative to `schedules`.
pub fn check_schedules(schedules: &[Schedule]) -> Result<(), (String, String)> {
    if schedules.len() > MAX_SCHEDULES {
        return Err(("schedules".into(), format!("at most {MAX_SCHEDULES} schedules")));
    }
    for (i, schedule) in schedules.iter().enumerate() {
        schedule.check().map_err(|(field, reason)| (format!("schedules[{i}].{field}"), reason))?;
        if schedules[..i].iter().any(|s| s.key() == schedule.key()) {
            return Err((format!("schedules[{i}]"), "listed twice".into()));
        }
    }
    Ok(())
}

/// The schedule whose slot is due now, with the slot: the one come last if several are (a
/// node is not paused and resumed in one run). `last_run` says when each schedule's last
/// slot ran (by `Schedule::key`); a schedule with none counts from `since`. A slot older
/// than `MISSED_SLOT_TOLERANCE` is skipped.
pub fn due_now<'a>(schedules: &'a [Schedule], last_run: &std::collections::BTreeMap<String, DateTime<Utc>>, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<(&'a Schedule, DateTime<Utc>)> {
    let earliest = now - MISSED_SLOT_TOLERANCE;
    schedules
        .iter()
        .filter_map(|s| {
            let after = last_run.get(&s.key()).copied().unwrap_or(since).max(earliest - TimeDelta::seconds(1));
            s.due(after, now).filter(|slot| *slot >= earliest).map(|slot| (s, slot))
        })
        .max_by_key(|(_, slot)| *slot)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_default()
    }

    fn schedule(action: ScheduledAction, cron: &str, zone: &str) -> Schedule {
        Schedule { action, cron: cron.into(), time_zone: zone.into() }
    }

    #[test]
    fn a_slot_runs_once_and_a_late_run_still_catches_it_within_the_tolerance() {
        // 20:00 in Paris on a weekday is 19:00 UTC in winter.
        let pause = schedule(ScheduledAction::Pause, "0 20 * * 1-5", "Europe/Paris");
        let created = at("2026-11-30T08:00:00Z"); // a Monday
        let none = BTreeMap::new();
        assert_eq!(due_now(std::slice::from_ref(&pause), &none, created, at("2026-11-30T18:59:00Z")), None);
        let (_, slot) = due_now(std::slice::from_ref(&pause), &none, created, at("2026-11-30T19:00:30Z")).expect("due");
        assert_eq!(slot, at("2026-11-30T19:00:00Z"));
        let ran = BTreeMap::from([(pause.key(), slot)]);
        assert_eq!(due_now(std::slice::from_ref(&pause), &ran, created, at("2026-11-30T19:05:00Z")), None, "once");
        assert!(due_now(std::slice::from_ref(&pause), &none, created, at("2026-11-30T19:14:00Z")).is_some(), "late, within 15 min");
        assert_eq!(due_now(std::slice::from_ref(&pause), &none, created, at("2026-11-30T19:16:00Z")), None, "missed by more");
        // Summer time: the same 20:00 in Paris is 18:00 UTC.
        let june = at("2026-06-01T18:00:10Z");
        assert_eq!(due_now(std::slice::from_ref(&pause), &none, june - TimeDelta::hours(1), june).map(|d| d.1), Some(at("2026-06-01T18:00:00Z")));
        // The weekend: nothing.
        assert_eq!(due_now(std::slice::from_ref(&pause), &none, created, at("2026-12-05T19:00:30Z")), None);
    }

    #[test]
    fn of_two_due_slots_the_later_runs() {
        let schedules = [schedule(ScheduledAction::Pause, "0 19 * * *", "UTC"), schedule(ScheduledAction::Resume, "5 19 * * *", "UTC")];
        let (which, _) = due_now(&schedules, &BTreeMap::new(), at("2026-11-30T00:00:00Z"), at("2026-11-30T19:06:00Z")).expect("due");
        assert_eq!(which.action, ScheduledAction::Resume);
    }

    #[test]
    fn patterns_and_zones_are_checked_naming_the_field() {
        assert!(check_schedules(&[schedule(ScheduledAction::Recycle, "@daily", "UTC"), schedule(ScheduledAction::Pause, "30 2 * * SUN", "America/New_York")]).is_ok());
        let refused = |s: Schedule| check_schedules(&[s]).map_err(|e| format!("{}: {}", e.0, e.1)).unwrap_err();
        assert!(refused(schedule(ScheduledAction::Pause, "0 20 * *", "UTC")).starts_with("schedules[0].cron: `0 20 * *` has 4 fields"));
        assert!(refused(schedule(ScheduledAction::Pause, "61 20 * * *", "UTC")).starts_with("schedules[0].cron"));
        assert!(refused(schedule(ScheduledAction::Pause, "0 20 * * *", "Mars/Olympus")).starts_with("schedules[0].time_zone"));
        let twice = schedule(ScheduledAction::Pause, "0 20 * * *", "UTC");
        assert!(check_schedules(&[twice.clone(), twice]).is_err());
    }
}
