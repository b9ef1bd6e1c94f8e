//! Configuration: defaults < TOML file < `REWARDS_`-prefixed environment.
//!
//! Nested keys are separated by a double underscore in the environment:
//! `[auth] database_url` is `REWARDS_AUTH__DATABASE_URL`. Values are typed;
//! a value of the wrong type stops the process with a message naming the key.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The environment prefix of every setting.
pub const ENV_PREFIX: &str = "REWARDS_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
}

/// Loads `T` from its defaults, then `file` (when given), then the environment.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
    figment.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A secret setting: deserialised from config, never printed by `Debug`, and
/// serialised (for figment's defaults) only as absent.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(Option<SecretString>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Some(SecretString::from(value.into())))
    }

    pub fn expose(&self) -> Option<&str> {
        self.0.as_ref().map(|s| s.expose_secret()).filter(|s| !s.is_empty())
    }

    pub fn is_set(&self) -> bool {
        self.expose().is_some()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() { "Secret(<redacted>)" } else { "Secret(<unset>)" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        name: String,
        token: Secret,
        inner: Inner,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        port: u16,
    }

    impl Default for Inner {
        fn default() -> Self {
            Self { port: 3001 }
        }
    }

    #[test]
    fn environment_beats_file_beats_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", "name = \"from-file\"\n[inner]\nport = 4000\n")?;
            let c: Sample = load(Some(Path::new("r.toml"))).unwrap();
            assert_eq!((c.name.as_str(), c.inner.port), ("from-file", 4000));

            jail.set_env("REWARDS_INNER__PORT", "5000");
            jail.set_env("REWARDS_TOKEN", "hunter2-hunter2");
            let c: Sample = load(Some(Path::new("r.toml"))).unwrap();
            assert_eq!((c.name.as_str(), c.inner.port), ("from-file", 5000));
            assert_eq!(c.token.expose(), Some("hunter2-hunter2"));
            assert!(!format!("{c:?}").contains("hunter2"));

            let c: Sample = load(None).unwrap();
            assert_eq!((c.name.as_str(), c.inner.port), ("", 5000));
            Ok(())
        });
    }

    #[test]
    fn wrong_types_unknown_nested_keys_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("REWARDS_INNER__PORT", "not-a-port");
            let err = load::<Sample>(None).unwrap_err().to_string();
            assert!(err.contains("port"), "{err}");
            jail.clear_env();
            jail.create_file("typo.toml", "[inner]\nprot = 1\n")?;
            assert!(load::<Sample>(Some(Path::new("typo.toml"))).is_err());
            assert!(matches!(load::<Sample>(Some(Path::new("nope.toml"))), Err(ConfigError::MissingFile(_))));
            Ok(())
        });
    }
}
