//! Secret config values (SMTP passwords, webhook URLs) and where they come from.
//!
//! A [`Secret`] never shows its value through `Debug` or `Display`, so a config printed in a log,
//! an error or a panic message cannot leak it. The value is read with [`Secret::expose`], at the
//! one place that sends it.
//!
//! In the config a secret is written as a literal, as `${ENV_VAR}` (read from the environment
//! when the config is loaded), or given through a sibling `*_file:` key naming a file whose
//! contents (trailing newline removed) are the value. A relative `*_file` path is looked up in
//! `$CREDENTIALS_DIRECTORY` first (systemd's `LoadCredential=`), then beside the config.

use std::fmt;
use std::path::{Path, PathBuf};

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the code that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the value in `text` with `[redacted]` (for error messages of
    /// libraries that echo what they were given, such as a URL).
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from, as written in the config (before it is resolved).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `${NAME}`: the environment variable NAME.
    Env(String),
    /// `*_file: PATH`.
    File(PathBuf),
    /// Written in the config itself.
    Literal(Secret),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "Env({n})"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Literal(_) => f.write_str("Literal([redacted])"),
        }
    }
}

impl SecretSource {
    /// Reads a config string: `${NAME}` names an environment variable, anything else is literal.
    pub fn from_config_str(s: &str) -> SecretSource {
        match s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(name) if !name.is_empty() => SecretSource::Env(name.to_string()),
            _ => SecretSource::Literal(Secret::new(s)),
        }
    }

    /// The value. `config_dir` resolves a relative file path (after `$CREDENTIALS_DIRECTORY`).
    /// The error names the variable or file, never the value.
    pub fn resolve(&self, config_dir: &Path) -> Result<Secret, String> {
        self.resolve_with(config_dir, |k| std::env::var_os(k))
    }

    /// [`SecretSource::resolve`] with an explicit environment (for tests).
    pub fn resolve_with(
        &self,
        config_dir: &Path,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Secret, String> {
        match self {
            SecretSource::Literal(s) => Ok(s.clone()),
            SecretSource::Env(name) => match env(name) {
                Some(v) if !v.is_empty() => v
                    .into_string()
                    .map(Secret)
                    .map_err(|_| format!("environment variable {name} is not valid UTF-8")),
                _ => Err(format!("environment variable {name} is not set")),
            },
            SecretSource::File(p) => {
                let path = if p.is_absolute() {
                    p.clone()
                } else {
                    env("CREDENTIALS_DIRECTORY")
                        .map(|d| PathBuf::from(d).join(p))
                        .filter(|c| c.exists())
                        .unwrap_or_else(|| config_dir.join(p))
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(format!("secret file {} is empty", path.display()));
                }
                Ok(Secret(value.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2-password");
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{s:?}").contains("hunter2"));
        let src = SecretSource::from_config_str("hunter2-password");
        assert!(!format!("{src:?}").contains("hunter2"));
        assert_eq!(
            s.redact("POST https://x/hunter2-password failed"),
            "POST https://x/[redacted] failed"
        );
    }

    #[test]
    fn resolves_env_and_files_with_credentials_directory_first() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("smtp"), "from-creds\n").unwrap();
        std::fs::write(dir.path().join("smtp"), "beside-config\n").unwrap();
        let env = |k: &str| match k {
            "CREDENTIALS_DIRECTORY" => Some(creds.clone().into_os_string()),
            "SMTP_PASSWORD" => Some("pw".into()),
            _ => None,
        };
        let file = SecretSource::File("smtp".into());
        assert_eq!(
            file.resolve_with(dir.path(), env).unwrap().expose(),
            "from-creds"
        );
        let no_creds = |_: &str| None;
        assert_eq!(
            file.resolve_with(dir.path(), no_creds).unwrap().expose(),
            "beside-config"
        );
        let var = SecretSource::from_config_str("${SMTP_PASSWORD}");
        assert_eq!(var.resolve_with(dir.path(), env).unwrap().expose(), "pw");
        let missing = SecretSource::from_config_str("${NOPE}").resolve_with(dir.path(), env);
        assert_eq!(missing.unwrap_err(), "environment variable NOPE is not set");
    }
}
