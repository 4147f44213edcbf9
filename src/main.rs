use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "A container registry mirror")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API and the admin listener.
    Serve {
        /// The configuration file.
        #[arg(long, env = "BERTH_CONFIG", default_value = "mirror.toml")]
        config: PathBuf,
    },
    /// Warm a running berth's tiers with images before they are pulled.
    ///
    /// Exit status: 0 when every blob is cached, 1 when the job failed, 2 when it could not run.
    Preheat {
        /// The admin listener of the berth to preheat.
        #[arg(long, env = "BERTH_ADMIN", default_value = "http://127.0.0.1:5001")]
        admin: String,
        /// A platform to preheat, os/arch[/variant] (repeatable); default: the server's [preheat] platforms.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// A tier to fill, memory or disk (repeatable); default: both.
        #[arg(long = "tier")]
        tiers: Vec<String>,
        /// Record the images as pinned, so that GC keeps them.
        #[arg(long)]
        pin: bool,
        /// Print the final status as JSON instead of the summary.
        #[arg(long)]
        json: bool,
        /// Images, as docker names them (alpine:3.20, ghcr.io/org/app@sha256:...).
        #[arg(required = true)]
        images: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Preheat { admin, platforms, tiers, pin, json, images } => {
            berth::cli::preheat::run(berth::cli::preheat::Args { admin, platforms, tiers, pin, json, images })
        }
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let config = match berth::config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        let server = berth::Server::start(&config).await?;
        server.run_until(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
