//! Remediation: restarting the generation service when a drift is confirmed.

use serde::Deserialize;

use crate::duration::ConfigDuration;

/// What to restart: a systemd unit, or a command (argv, never through a shell).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RestartTarget {
    /// `systemctl restart UNIT`.
    Unit(String),
    /// This argv.
    Command(Vec<String>),
}

/// `remediation:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationConfig {
    /// What to restart.
    pub restart: RestartTarget,
    /// Restarts allowed per `window`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The window `max_restarts` counts in.
    #[serde(default = "default_window")]
    pub window: ConfigDuration,
    /// Wait this long after a restart before re-checking the drifting cases.
    #[serde(default = "default_recheck_delay")]
    pub recheck_delay: ConfigDuration,
    /// Kill the restart command after this long.
    #[serde(default = "default_restart_timeout")]
    pub timeout: ConfigDuration,
    /// Store new baselines when drift persists after a restart (opt-in).
    #[serde(default)]
    pub auto_rebaseline: bool,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_window() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(3600))
}
fn default_recheck_delay() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30))
}
fn default_restart_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(120))
}
