//! `rewards`: the gateway, auth and events services in one binary.

mod commands;

/// mimalloc: the gateway allocates a little per request on every core, where
/// glibc's malloc contends on its locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use rewards_kit::config::LogFormat;

use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(name = "rewards", version, about = "Event rewards platform: gateway, auth and events services")]
struct Cli {
    /// TOML config file (settings from the environment override it).
    #[arg(long, short, global = true, env = "REWARDS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format, overriding the config.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform in one process on embedded SQLite stores.
    Up(UpArgs),
    /// Run the gateway alone.
    Gateway,
    /// Run the auth service alone.
    Auth,
    /// Run the events service alone.
    Events,
    /// Operator chores.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Create or upgrade the services' store schemas, then exit.
    Migrate {
        /// Which service's store to migrate.
        #[arg(long, value_enum, default_value_t = MigrateTarget::All)]
        service: MigrateTarget,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Add a new access-token signing key (published now, signing after the lead time).
    RotateKeys,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Directory of the SQLite stores (created when missing).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Gateway address [default: 127.0.0.1:3000].
    #[arg(long)]
    gateway_listen: Option<SocketAddr>,
    /// Auth service address [default: 127.0.0.1:3001].
    #[arg(long)]
    auth_listen: Option<SocketAddr>,
    /// Events service address [default: 127.0.0.1:3002].
    #[arg(long)]
    events_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MigrateTarget {
    Auth,
    Events,
    All,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("rewards: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(format) = cli.log_format {
        settings.log_format = format;
    }
    rewards_kit::telemetry::init(settings.log_format, settings.log_level.as_deref());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => {
                if let Some(dir) = args.data_dir {
                    settings.data_dir = dir;
                }
                if let Some(addr) = args.gateway_listen {
                    settings.gateway.listen = addr;
                }
                if let Some(addr) = args.auth_listen {
                    settings.auth.listen = addr;
                }
                if let Some(addr) = args.events_listen {
                    settings.events.listen = addr;
                }
                commands::up(settings).await
            }
            Command::Gateway => commands::gateway(settings).await,
            Command::Auth => commands::auth(settings).await,
            Command::Events => commands::events(settings).await,
            Command::Admin(AdminCommand::RotateKeys) => commands::rotate_keys(&settings).await,
            Command::Migrate { service } => {
                commands::migrate(
                    &settings,
                    matches!(service, MigrateTarget::Auth | MigrateTarget::All),
                    matches!(service, MigrateTarget::Events | MigrateTarget::All),
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("rewards: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
