//! Configuration, read once from the environment at cold start.

use std::time::Duration;

use crate::service::Settings;

#[derive(Clone, Debug)]
pub struct Config {
    /// `TETHER_TABLE_NAME`: the DynamoDB table holding the nodes.
    pub table_name: String,
    pub settings: Settings,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is not set; set it to {1}")]
    Missing(&'static str, &'static str),
    #[error("environment variable {name} is `{value}`; {expected}")]
    Invalid { name: &'static str, value: String, expected: &'static str },
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The same, from any lookup: tests pass a map instead of touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let table_name = lookup("TETHER_TABLE_NAME")
            .filter(|t| !t.is_empty())
            .ok_or(ConfigError::Missing("TETHER_TABLE_NAME", "the name of Tether's DynamoDB table"))?;
        let mut settings = Settings::default();
        let positive = |name: &'static str, expected: &'static str| -> Result<Option<u64>, ConfigError> {
            let Some(raw) = lookup(name) else { return Ok(None) };
            raw.parse::<u64>().ok().filter(|n| *n > 0).map(Some).ok_or(ConfigError::Invalid { name, value: raw.clone(), expected })
        };
        if let Some(ms) = positive("TETHER_RETRY_MAX_DELAY_MS", "expected a positive number of milliseconds")? {
            settings.retry_max_delay = Duration::from_millis(ms);
        }
        if let Some(seconds) = positive("TETHER_STUCK_AFTER_SECONDS", "expected a positive number of seconds")? {
            settings.stuck_after = Duration::from_secs(seconds);
        }
        if let Some(nodes) = positive("TETHER_RECONCILE_MAX_NODES", "expected a positive number of nodes")? {
            settings.reconcile_max_nodes = usize::try_from(nodes).unwrap_or(usize::MAX);
        }
        Ok(Config { table_name, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn table_name_is_required_and_named_in_the_error() {
        let err = Config::from_lookup(lookup(&[])).expect_err("missing");
        assert!(err.to_string().contains("TETHER_TABLE_NAME"), "{err}");
    }

    #[test]
    fn reads_table_and_retry_delay() {
        let config = Config::from_lookup(lookup(&[("TETHER_TABLE_NAME", "t"), ("TETHER_RETRY_MAX_DELAY_MS", "750")]))
            .expect("valid");
        assert_eq!(config.table_name, "t");
        assert_eq!(config.settings.retry_max_delay, Duration::from_millis(750));
        let err = Config::from_lookup(lookup(&[("TETHER_TABLE_NAME", "t"), ("TETHER_RETRY_MAX_DELAY_MS", "soon")]))
            .expect_err("invalid");
        assert!(err.to_string().contains("TETHER_RETRY_MAX_DELAY_MS"), "{err}");
    }

    #[test]
    fn reads_the_reconciler_bounds() {
        let config = Config::from_lookup(lookup(&[("TETHER_TABLE_NAME", "t"), ("TETHER_STUCK_AFTER_SECONDS", "120"), ("TETHER_RECONCILE_MAX_NODES", "50")]))
            .expect("valid");
        assert_eq!(config.settings.stuck_after, Duration::from_secs(120));
        assert_eq!(config.settings.reconcile_max_nodes, 50);
        let err = Config::from_lookup(lookup(&[("TETHER_TABLE_NAME", "t"), ("TETHER_RECONCILE_MAX_NODES", "0")])).expect_err("zero");
        assert!(err.to_string().contains("TETHER_RECONCILE_MAX_NODES"), "{err}");
    }
}
