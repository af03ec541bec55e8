//! Health healing: a node whose instance fails its EC2 status checks for long enough is
//! recycled on its ENI (`auto_healing`), at most so often; one AWS has scheduled for
//! maintenance (an AWS Health event) is recycled ahead of it, in the node's daily
//! maintenance window if it has one.

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When a node whose status checks fail is recycled. EC2 runs the checks every minute; a
/// check reported `initializing` or `insufficient-data` is not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoHealing {
    /// On by default.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long the instance or system status check must have been `impaired` (EC2's
    /// `ImpairedSince`) before the node is recycled: 60 to 86,400 s, default 300.
    #[serde(default = "default_unhealthy", deserialize_with = "crate::views::count::whole")]
    #[schemars(range(min = 60, max = 86400))]
    pub unhealthy_duration_seconds: u32,
    /// After each launch, the instance is not judged for this long (it boots), as EC2 Auto
    /// Scaling's health check grace period: 0 to 86,400 s, default 300 (its console default).
    #[serde(default = "default_grace", deserialize_with = "crate::views::count::whole")]
    #[schemars(range(min = 0, max = 86400))]
    pub grace_period_seconds: u32,
    /// At most this many heals within `window_hours`: then the node gets the
    /// `healing_stopped` condition and is not healed again until the window has passed (a bad
    /// AMI must not recycle forever). 1 to 20, default 3.
    #[serde(default = "default_max_heals", deserialize_with = "crate::views::count::small")]
    #[schemars(range(min = 1, max = 20))]
    pub max_heals: u8,
    /// 1 to 168, default 24.
    #[serde(default = "default_window", deserialize_with = "crate::views::count::whole")]
    #[schemars(range(min = 1, max = 168))]
    pub window_hours: u32,
}

impl Default for AutoHealing {
    fn default() -> Self {
        AutoHealing {
            enabled: true,
            unhealthy_duration_seconds: default_unhealthy(),
            grace_period_seconds: default_grace(),
            max_heals: default_max_heals(),
            window_hours: default_window(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_unhealthy() -> u32 {
    300
}
fn default_grace() -> u32 {
    300
}
fn default_max_heals() -> u8 {
    3
}
fn default_window() -> u32 {
    24
}

impl AutoHealing {
    /// What EC2 or Tether would refuse, naming the field (relative to `auto_healing`).
    pub fn check(&self) -> Result<(), (String, String)> {
        let within = |name: &str, value: u32, min: u32, max: u32| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err((name.to_owned(), format!("{value} is outside {min} to {max}")))
            }
        };
        within("unhealthy_duration_seconds", self.unhealthy_duration_seconds, 60, 86_400)?;
        within("grace_period_seconds", self.grace_period_seconds, 0, 86_400)?;
        within("max_heals", u32::from(self.max_heals), 1, 20)?;
        within("window_hours", self.window_hours, 1, 168)
    }
}

/// A daily window (UTC) for planned work: a recycle ahead of an AWS scheduled event runs at
/// its start. `end` before `start` spans midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DailyWindow {
    /// `HH:MM:SS`, UTC.
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl DailyWindow {
    /// The start of the last window that opens before `before` (strictly).
    pub fn last_start_before(&self, before: DateTime<Utc>) -> DateTime<Utc> {
        let today = before.date_naive().and_time(self.start).and_utc();
        if today < before {
            today
        } else {
            today - TimeDelta::days(1)
        }
    }
}

/// What EC2's status checks say of an instance now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impaired {
    /// `instance status`, `system status`, or both.
    pub checks: String,
    /// When the check failed (EC2's `ImpairedSince`, the earlier of the two); `None` if EC2
    /// did not say (then the node is not healed: Tether cannot tell for how long).
    pub since: Option<DateTime<Utc>>,
}

/// A recycle planned ahead of an AWS scheduled event on the node's instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlannedRecycle {
    /// When the reconciler recycles the node (at its next run after it).
    pub at: DateTime<Utc>,
    /// The instance the event is about: a node that moved on to another has nothing to do.
    pub instance_id: String,
    /// The event's words: its type code, ARN and start.
    pub why: String,
}

/// The AWS Health event type codes of EC2's scheduled changes to an instance that Tether
/// recycles ahead of: retirement (EBS-backed instances get the `PERSISTENT` one), reboots,
/// stops, and the maintenance that may impair it.
pub fn recycles_ahead(type_code: &str) -> bool {
    type_code.starts_with("AWS_EC2_")
        && ["RETIREMENT", "REBOOT", "STOP_SCHEDULED", "MAINTENANCE_SCHEDULED", "TERMINATION_SCHEDULED"].iter().any(|word| type_code.contains(word))
        && !type_code.contains("DEDICATED_HOST")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn the_last_window_before_an_event_opens_the_day_of_it_or_the_day_before() {
        let window = DailyWindow { start: NaiveTime::from_hms_opt(2, 0, 0).unwrap_or_default(), end: NaiveTime::from_hms_opt(4, 0, 0).unwrap_or_default() };
        assert_eq!(window.last_start_before(at("2026-12-01T10:00:00Z")), at("2026-12-01T02:00:00Z"));
        assert_eq!(window.last_start_before(at("2026-12-01T01:00:00Z")), at("2026-11-30T02:00:00Z"));
        assert_eq!(window.last_start_before(at("2026-12-01T02:00:00Z")), at("2026-11-30T02:00:00Z"), "strictly before");
    }

    #[test]
    fn scheduled_changes_to_an_instance_are_recycled_ahead_of() {
        for code in ["AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED", "AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED", "AWS_EC2_INSTANCE_STOP_SCHEDULED", "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED"] {
            assert!(recycles_ahead(code), "{code}");
        }
        for code in ["AWS_EC2_OPERATIONAL_ISSUE", "AWS_EC2_DEDICATED_HOST_RETIREMENT_SCHEDULED", "AWS_S3_OPERATIONAL_ISSUE"] {
            assert!(!recycles_ahead(code), "{code}");
        }
    }

    #[test]
    fn auto_healing_defaults_and_refusals() {
        let default: AutoHealing = serde_json::from_value(serde_json::json!({})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default, AutoHealing::default());
        assert!(default.enabled && default.check().is_ok());
        let short = AutoHealing { unhealthy_duration_seconds: 10, ..default };
        assert_eq!(short.check().map_err(|e| e.0), Err("unhealthy_duration_seconds".to_owned()));
    }
}
