//! The whole platform's configuration: defaults < `--config` TOML file <
//! `REWARDS_*` environment (nested keys with `__`, e.g.
//! `REWARDS_AUTH__DATABASE_URL`) < command-line flags.

use std::path::{Path, PathBuf};

use rewards_auth::AuthSettings;
use rewards_events::EventsSettings;
use rewards_gateway::GatewaySettings;
use rewards_kit::config::{LogFormat, Secret};
use rewards_kit::identity::IdentityKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Where SQLite stores live unless a service names its own `database_url`.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `info,rewards_auth=debug` (`RUST_LOG` wins).
    pub log_level: Option<String>,
    /// The gateway-to-service identity secret (32+ bytes). `rewards up`
    /// generates one per run when unset; separate processes must share one.
    pub identity_secret: Secret,
    /// The bootstrap admin's password, read from `REWARDS_ADMIN_PASSWORD`
    /// (the same as `[auth] admin_password`).
    pub admin_password: Secret,
    pub gateway: GatewaySettings,
    pub auth: AuthSettings,
    pub events: EventsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Human,
            log_level: None,
            identity_secret: Secret::default(),
            admin_password: Secret::default(),
            gateway: GatewaySettings::default(),
            auth: AuthSettings::default(),
            events: EventsSettings::default(),
        }
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut settings: Self = rewards_kit::config::load(file)?;
        if !settings.auth.admin_password.is_set() {
            settings.auth.admin_password = settings.admin_password.clone();
        }
        Ok(settings)
    }

    pub fn auth_database_url(&self) -> String {
        self.auth.database_url(&self.data_dir)
    }

    pub fn events_database_url(&self) -> String {
        self.events.database_url(&self.data_dir)
    }

    /// The configured identity key; an error when none is configured.
    pub fn identity_key(&self) -> anyhow::Result<IdentityKey> {
        let secret = self.identity_secret.expose().ok_or_else(|| {
            anyhow::anyhow!(
                "REWARDS_IDENTITY_SECRET (or `identity_secret` in the config file) must be set when services \
                 run as separate processes; all of them need the same value"
            )
        })?;
        IdentityKey::from_secret(secret.as_bytes()).map_err(anyhow::Error::msg)
    }

    /// The configured key, or a fresh one for this run only.
    pub fn identity_key_or_generate(&self) -> anyhow::Result<IdentityKey> {
        if self.identity_secret.is_set() {
            self.identity_key()
        } else {
            tracing::info!("no identity secret configured: generated one for this run");
            Ok(IdentityKey::generate())
        }
    }
}
