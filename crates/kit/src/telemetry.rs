//! Logging. `RUST_LOG` (or the configured level) filters; the format is human
//! or JSON. Every line logged while serving a request carries its request id
//! through the request span opened in [`crate::http`].

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;

use crate::config::LogFormat;

/// The filter used when neither `RUST_LOG` nor the config names one.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn";

/// Installs the global subscriber; later calls (tests) are ignored.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| filter.map(str::to_owned))
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let result = match format {
        LogFormat::Human => {
            fmt().with_env_filter(filter).with_target(false).with_ansi(std::io::stdout().is_terminal()).try_init()
        }
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
    };
    drop(result);
}
