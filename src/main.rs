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
    /// Check a configuration file and print what it sets up; exit 1 naming every problem.
    CheckConfig {
        /// The configuration file.
        #[arg(long, env = "BERTH_CONFIG", default_value = "mirror.toml")]
        config: PathBuf,
    },
    /// Write containerd hosts.toml files that send pulls to a berth mirror first.
    ///
    /// Writes DIR/<registry>/hosts.toml for each --registry (and DIR/_default/hosts.toml with
    /// --default); containerd reads them with config_path = "/etc/containerd/certs.d".
    HostsToml {
        /// The mirror as containerd reaches it, e.g. http://berth.example:5000.
        #[arg(long)]
        mirror: String,
        /// A registry to mirror (repeatable).
        #[arg(long = "registry", default_value = "docker.io")]
        registries: Vec<String>,
        /// Also write _default/hosts.toml (every other registry tries the mirror first too).
        #[arg(long)]
        default: bool,
        /// The certs.d folder.
        #[arg(long, default_value = "/etc/containerd/certs.d")]
        dir: PathBuf,
    },
    /// Print an htpasswd line (bcrypt) for [auth] htpasswd_file; the password is read from stdin.
    Htpasswd {
        /// The user name.
        user: String,
    },
    /// Warm a running berth's tiers with images before they are pulled.
    ///
    /// When the admin API needs a token, put it in BERTH_ADMIN_TOKEN.
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
        /// Also have every peer of that berth preheat the same digests.
        #[arg(long)]
        cluster: bool,
        /// Also warm the images' signatures and attestations (referrers and the tag schema).
        #[arg(long)]
        referrers: bool,
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
        Command::CheckConfig { config } => check_config(config),
        Command::Htpasswd { user } => {
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() {
                eprintln!("berth htpasswd: cannot read the password from stdin");
                return ExitCode::from(2);
            }
            match berth::htpasswd_line(&user, password.trim_end_matches(['\r', '\n'])) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth htpasswd: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::HostsToml { mirror, registries, default, dir } => {
            match berth::cli::hosts_toml::write(&dir, &mirror, &registries, default) {
                Ok(files) => {
                    files.iter().for_each(|f| println!("wrote {}", f.display()));
                    if let Ok(others) = berth::cli::hosts_toml::other_clients(&mirror, &registries) {
                        print!("{others}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth hosts-toml: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Preheat { admin, platforms, tiers, pin, cluster, referrers, json, images } => {
            berth::cli::preheat::run(berth::cli::preheat::Args {
                admin,
                platforms,
                tiers,
                pin,
                cluster,
                referrers,
                json,
                images,
            })
        }
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    match berth::check::load_file(&path) {
        Ok(loaded) => {
            let c = loaded.config();
            println!("{}: ok", path.display());
            println!("  registry API on {}, admin on {}", c.server.listen, c.server.admin_listen);
            println!(
                "  storage in {}: memory {} (objects up to {}), disk {}",
                c.storage.dir.display(),
                bytesize::ByteSize::b(c.storage.memory_capacity).display().iec(),
                bytesize::ByteSize::b(c.storage.memory_max_object).display().iec(),
                bytesize::ByteSize::b(c.storage.disk_capacity).display().iec(),
            );
            for r in &c.registries {
                let default = if r.host == c.server.default_registry { " (requests without ns)" } else { "" };
                println!("  registry {} -> {}{default}", r.host, r.endpoint);
            }
            for p in &c.pins {
                println!("  pinned {p}");
            }
            if let Some(p) = &c.peers {
                let listed: Vec<&str> = p.static_peers.iter().map(|u| u.as_str()).collect();
                println!(
                    "  peer {} with {listed:?}{}",
                    p.self_url,
                    p.dns.as_ref().map(|d| format!(" and dns {d}")).unwrap_or_default()
                );
            }
            if let Some(b) = &c.bucket {
                println!("  bucket {} (upload {:?})", b.url, b.upload);
                let reached =
                    tokio::runtime::Runtime::new().map(|rt| rt.block_on(berth::check::reach_bucket(&loaded)));
                match reached {
                    Ok(Ok(())) => println!("  bucket answers"),
                    Ok(Err(why)) => {
                        eprintln!("{}: {why}", path.display());
                        return ExitCode::FAILURE;
                    }
                    Err(e) => {
                        eprintln!("{}: cannot ask the bucket: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf) -> ExitCode {
    let loaded = match berth::check::load_file(&path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("berth: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        let server = berth::Server::start_loaded(loaded).await?;
        let reloads = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            while hup.recv().await.is_some() {
                if let Err(e) = server.reload() {
                    tracing::error!(error = %e, "reload failed; what did not load stays as it was");
                }
            }
        };
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = reloads => {}
        }
        server.stop().await
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
