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
        if let Some(raw) = lookup("TETHER_RETRY_MAX_DELAY_MS") {
            let ms = raw.parse::<u64>().ok().filter(|ms| *ms > 0).ok_or(ConfigError::Invalid {
                name: "TETHER_RETRY_MAX_DELAY_MS",
                value: raw.clone(),
                expected: "expected a positive number of milliseconds",
            })?;
            settings.retry_max_delay = Duration::from_millis(ms);
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
}
