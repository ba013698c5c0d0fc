//! weftctl: look into and manage the network config and the subnet leases in etcd, and check
//! this host. Tables for people (every value from etcd escaped), `-o json` for scripts; etcd
//! flags and environment are weftd's. One file per subcommand.

// No function over 80 lines (clippy.toml); CI runs clippy with -D warnings.
#![warn(clippy::too_many_lines)]

/// A line for a person on standard output, escaped whole (see [`weft::show::Safe`]): a value
/// from etcd cannot reach the terminal as control characters or break the line. JSON for
/// scripts is printed with `println!`, exact.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(weft::show::Safe(std::io::stdout().lock()), $($arg)*);
    }};
}

/// The same on standard error, for warnings and errors.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(weft::show::Safe(std::io::stderr().lock()), $($arg)*);
    }};
}

mod check;
mod config;
mod docker;
mod leases;
mod migrate;
mod policy;
mod reservations;
mod status;
mod text;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use weft::store::{EtcdOptions, EtcdStore};

#[derive(Parser, Debug)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect and manage weft's network config and subnet leases in etcd"
)]
pub struct Cli {
    #[command(flatten)]
    etcd: EtcdOptions,
    /// Output format of read commands.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The network config at <prefix>/config.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// The hosts' subnet leases (`weftctl leases` lists them).
    Leases {
        #[command(subcommand)]
        command: Option<leases::LeasesCmd>,
    },
    /// The cluster in a few lines: hosts ready, not ready, gone or without status, versions,
    /// backends, unreachable pairs, drift repairs, the subnet pool, etcd. Exit 0 when
    /// healthy, 1 when not, 3 when etcd cannot be reached.
    Status(status::StatusArgs),
    /// A change of Backend.Type under way: show it, or tell more hosts (or all) to move.
    Migrate(migrate::MigrateArgs),
    /// Subnets pinned to a PublicIP; they never expire.
    #[command(subcommand)]
    Reservations(reservations::ReservationsCmd),
    /// Compare this host's kernel (device, routes, neighbours, FDB) and subnet.env with the
    /// leases; print what is wrong and exit 1, or print nothing and exit 0.
    Check(check::CheckArgs),
    /// Network policies (Kubernetes NetworkPolicy) for every container of the network.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Namespace labels, which policies' namespaceSelector chooses by.
    #[command(subcommand)]
    Namespace(policy::NamespaceCmd),
    /// Print dockerd's settings for this host's subnet from subnet.env (--bip, --ip-masq,
    /// --mtu), as flannel's mk-docker-opts.sh does, with its flags; needs no etcd.
    DockerOpts(docker::DockerOptsArgs),
    /// Print a completion script for SHELL, e.g.
    /// `weftctl completions bash > /etc/bash_completion.d/weftctl`; needs no etcd.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write weftctl's manual pages into DIR: weftctl(1) and one per subcommand
    /// (weftctl-leases(1), weftctl-leases-show(1), ...), made from these definitions by
    /// clap_mangen; the package is built with them.
    #[command(hide = true)]
    ManPages { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "weftctl", &mut out);
            return ExitCode::SUCCESS;
        }
        Command::ManPages { dir } => {
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir));
            if let Err(e) = written {
                esay!("weftctl: writing manual pages into {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            return ExitCode::SUCCESS;
        }
        Command::DockerOpts(args) => {
            return match docker::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    esay!("weftctl: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    weft::logging::init(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        weft::logging::Format::Text,
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            esay!("weftctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Status(args) = &cli.command {
        return rt.block_on(status::status(&cli.etcd, cli.output, args));
    }
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            esay!("weftctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let store = EtcdStore::connect(&cli.etcd).await?;
    let out = cli.output;
    match cli.command {
        Command::Config(cmd) => config::run(&store, out, cmd).await,
        Command::Leases { command } => leases::run(&store, out, command).await,
        Command::Reservations(cmd) => reservations::run(&store, out, cmd).await,
        Command::Check(args) => check::run(&store, out, args).await,
        Command::Policy(cmd) => policy::run(&store, out, cmd).await,
        Command::Namespace(cmd) => policy::run_namespace(&store, out, cmd).await,
        Command::Migrate(args) => migrate::run(&store, args).await,
        // Handled by main before this point.
        Command::Completions { .. }
        | Command::ManPages { .. }
        | Command::DockerOpts(_)
        | Command::Status(_) => Ok(()),
    }
}
