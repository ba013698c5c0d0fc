//! weftctl: look into and manage the network config and the subnet leases in etcd.
//! Tables for people, `-o json` for scripts; etcd flags and environment are weftd's.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

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

#[path = "weftctl/cluster.rs"]
mod cluster;

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use weft::check::Finding;
use weft::config::NetworkConfig;
use weft::docker::{self, DockerOptsFormat};
use weft::iface::{self, IfaceSelect};
use weft::lease::{Lease, LeaseEvent};
use weft::netlink::Netlink;
use weft::store::{EtcdOptions, EtcdStore, LeaseList, StoreError};
use weft::subnet::{parse_lease_target, parse_subnet, Family, LeaseTarget};
use weft::subnet_env::{write_atomically, SubnetEnv};

#[derive(Parser, Debug)]
#[command(
    name = "weftctl",
    version,
    about = "Inspect and manage weft's network config and subnet leases in etcd"
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdOptions,
    /// Output format of read commands.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The network config at <prefix>/config.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The hosts' subnet leases (`weftctl leases` lists them).
    Leases {
        #[command(subcommand)]
        command: Option<LeasesCmd>,
    },
    /// The cluster in a few lines: hosts ready, not ready, gone or without status, versions,
    /// backends, unreachable pairs, drift repairs, the subnet pool, etcd. Exit 0 when
    /// healthy, 1 when not, 3 when etcd cannot be reached.
    Status(cluster::StatusArgs),
    /// Subnets pinned to a PublicIP; they never expire.
    #[command(subcommand)]
    Reservations(ReservationsCmd),
    /// Compare this host's kernel (device, routes, neighbours, FDB) and subnet.env with the
    /// leases; print what is wrong and exit 1, or print nothing and exit 0.
    Check(CheckArgs),
    /// Print dockerd's settings for this host's subnet from subnet.env (--bip, --ip-masq,
    /// --mtu), as flannel's mk-docker-opts.sh does, with its flags; needs no etcd.
    DockerOpts(DockerOptsArgs),
    /// Print a completion script for SHELL, e.g.
    /// `weftctl completions bash > /etc/bash_completion.d/weftctl`; needs no etcd.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How to find this host's facts: the same flags (and WEFTD_* variables) as weftd's, so one
/// environment file serves both.
#[derive(clap::Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    select: IfaceSelect,
    /// The subnet file weftd writes.
    #[arg(
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: std::path::PathBuf,
    /// Name of the VXLAN device (default flannel.<VNI>).
    #[arg(long, env = "WEFTD_VXLAN_DEVICE")]
    vxlan_device: Option<String>,
}

/// flannel's mk-docker-opts.sh flags, under the same letters.
#[derive(clap::Args, Debug)]
struct DockerOptsArgs {
    /// The subnet file weftd writes.
    #[arg(
        short = 'f',
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: std::path::PathBuf,
    /// Write the variables to this file (atomically) instead of printing them, e.g.
    /// /run/docker_opts.env.
    #[arg(short = 'd', long)]
    dest: Option<std::path::PathBuf>,
    /// One variable per option: DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU.
    #[arg(short = 'i', long)]
    individual: bool,
    /// All options in one variable (see --key). Without -i or -c, both are written.
    #[arg(short = 'c', long)]
    combined: bool,
    /// Name of the combined variable.
    #[arg(short = 'k', long, default_value = "DOCKER_OPTS")]
    key: String,
    /// Leave --ip-masq out (for dockerd versions without it).
    #[arg(short = 'm', long)]
    without_ip_masq: bool,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Print the config as stored (`-o json`: with every default filled in). Secret settings
    /// (the WireGuard PSK) are shown as "(hidden)".
    Get {
        /// Show secret settings as they are.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Validate a config and store it.
    Set {
        /// A file with the config JSON, or `-` for standard input.
        file: String,
    },
}

#[derive(Subcommand, Debug)]
enum LeasesCmd {
    /// All leases, sorted by subnet.
    List,
    /// One lease, by subnet, by an address inside its subnet, or by its PublicIP.
    Show { target: String },
    /// Print one line per lease change as it happens.
    Watch,
    /// Revoke a lease: delete exactly that subnet's key, unless it changed since it was read
    /// (its host will acquire a new lease). Other keys on the same etcd lease stay.
    Revoke { subnet: String },
    /// Remove the leases of hosts gone (status record expired) for at least --gone-for;
    /// shows what it would remove and removes it only with --yes or a confirmation.
    /// Reservations are never removed.
    Reclaim {
        /// e.g. 1h, 30m.
        #[arg(long, value_parser = cluster::parse_duration)]
        gone_for: Duration,
        /// Remove without asking.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ReservationsCmd {
    /// All reservations, sorted by subnet.
    List,
    /// Reserve SUBNET for the host with PUBLIC_IP.
    Add {
        subnet: String,
        public_ip: Ipv4Addr,
        /// Also reserve this IPv6 subnet (dual stack); needs --public-ipv6.
        #[arg(long, requires = "public_ipv6")]
        ipv6_subnet: Option<Ipv6Net>,
        /// The host's public IPv6 address, with --ipv6-subnet.
        #[arg(long, requires = "ipv6_subnet")]
        public_ipv6: Option<Ipv6Addr>,
    },
    /// Remove a reservation.
    Remove { subnet: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "weftctl", &mut out);
            return ExitCode::SUCCESS;
        }
        Command::DockerOpts(args) => {
            return match docker_opts(&args) {
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
        return rt.block_on(cluster::status(&cli.etcd, cli.output, args));
    }
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            esay!("weftctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn docker_opts(args: &DockerOptsArgs) -> Result<()> {
    let env = SubnetEnv::read(&args.subnet_file)?;
    let format = DockerOptsFormat {
        individual: args.individual,
        combined: args.combined,
        key: args.key.clone(),
        without_ip_masq: args.without_ip_masq,
    };
    let text = docker::render(&env, &args.subnet_file.to_string_lossy(), &format)?;
    match &args.dest {
        Some(dest) => write_atomically(dest, &text)?,
        None => print!("{text}"),
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let store = EtcdStore::connect(&cli.etcd).await?;
    let out = cli.output;
    match cli.command {
        Command::Config(ConfigCmd::Get { show_secrets }) => {
            config_get(&store, out, show_secrets).await
        }
        Command::Config(ConfigCmd::Set { file }) => config_set(&store, &file).await,
        Command::Leases { command } => match command.unwrap_or(LeasesCmd::List) {
            LeasesCmd::List => leases_list(&store, out, false).await,
            LeasesCmd::Show { target } => leases_show(&store, out, &target).await,
            LeasesCmd::Watch => leases_watch(&store, out).await,
            LeasesCmd::Revoke { subnet } => {
                let sn = parse_subnet(&subnet)?;
                if !store.revoke_lease(sn).await? {
                    bail!("no lease for {sn}");
                }
                say!("revoked {sn}");
                Ok(())
            }
            LeasesCmd::Reclaim { gone_for, yes } => cluster::reclaim(&store, gone_for, yes).await,
        },
        Command::Reservations(cmd) => match cmd {
            ReservationsCmd::List => leases_list(&store, out, true).await,
            ReservationsCmd::Add {
                subnet,
                public_ip,
                ipv6_subnet,
                public_ipv6,
            } => {
                let sn = parse_subnet(&subnet)?;
                let v6 = ipv6_subnet.zip(public_ipv6);
                if let Some((s6, _)) = v6.filter(|(s6, _)| s6.trunc() != *s6) {
                    bail!("--ipv6-subnet {s6}: not a subnet address (host bits are set)");
                }
                store.add_reservation(sn, public_ip, v6).await?;
                match v6 {
                    Some((s6, ip6)) => say!("reserved {sn} and {s6} for {public_ip} and {ip6}"),
                    None => say!("reserved {sn} for {public_ip}"),
                }
                Ok(())
            }
            ReservationsCmd::Remove { subnet } => {
                let sn = parse_subnet(&subnet)?;
                if !store.remove_reservation(sn).await? {
                    bail!("no reservation for {sn}");
                }
                say!("removed the reservation of {sn}");
                Ok(())
            }
        },
        Command::Check(args) => check(&store, out, args).await,
        // Handled by main before this point.
        Command::Completions { .. } | Command::DockerOpts(_) | Command::Status(_) => Ok(()),
    }
}

/// `weftctl check`: findings on stdout (one per line, or JSON), leases this host cannot mend
/// as notes on stderr; an error (exit 1) when anything is wrong.
async fn check(store: &EtcdStore, out: Format, args: CheckArgs) -> Result<()> {
    let cfg = store
        .get_config()
        .await?
        .ok_or_else(|| anyhow!("no network config in etcd at {}", store.config_key()))?;
    let list = store.list_leases(Some(&cfg)).await?;
    let env = SubnetEnv::read(&args.subnet_file).ok();
    let select = args.select;
    let mut nl = Netlink::new().context("cannot open a netlink socket")?;
    let ext = iface::choose_in(&mut nl, &select).context("cannot choose the external interface")?;
    // This host's lease holds its PublicIP; the one subnet.env names wins if several do.
    let mine: Vec<&Lease> = list
        .leases
        .iter()
        .filter(|l| l.attrs.public_ip == ext.public_ip)
        .collect();
    let env_subnet = env.as_ref().and_then(|e| e.subnet_network());
    let own = mine
        .iter()
        .find(|l| Some(l.subnet) == env_subnet)
        .or(mine.first())
        .copied();
    let mut report = weft::check::check(
        &mut nl,
        &cfg,
        &ext,
        args.vxlan_device.as_deref(),
        own,
        &list.leases,
        env.as_ref(),
    )?;
    if let Some(f) = weft::check::docker_bridge(&mut nl, env.as_ref())? {
        report.findings.push(f);
    }
    report
        .findings
        .extend(weft::check::container_bridges(&mut nl)?);
    for s in &list.skipped {
        report.notes.push(Finding(format!(
            "key {} is not a usable lease: {}",
            s.key, s.reason
        )));
    }
    match out {
        Format::Json => println!(
            "{}",
            json!({
                "findings": report.findings.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
                "notes": report.notes.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            for f in &report.findings {
                say!("{f}");
            }
            for n in &report.notes {
                esay!("note: {n}");
            }
        }
    }
    match report.findings.len() {
        0 => Ok(()),
        1 => bail!("1 problem on this host"),
        n => bail!("{n} problems on this host"),
    }
}

async fn config_get(store: &EtcdStore, out: Format, show_secrets: bool) -> Result<()> {
    let key = store.config_key();
    let text = store
        .get_config_text()
        .await?
        .ok_or(StoreError::NoConfig { key: key.clone() })?;
    let parsed = NetworkConfig::parse(&text);
    match out {
        Format::Table => {
            say_config(&text, show_secrets)?;
            if let Err(problems) = parsed {
                let e = StoreError::Config { key, problems };
                esay!("weftctl: warning: the config is not valid: {e}");
            }
        }
        Format::Json => {
            let cfg = parsed.map_err(|problems| StoreError::Config { key, problems })?;
            let mut doc = cfg.effective_json();
            if !show_secrets {
                weft::config::hide_secrets(&mut doc);
            }
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

/// The stored config as it is, unless it holds a secret: then as JSON with the secret hidden
/// (a text that is not JSON cannot be searched for one, so it is shown only when asked).
fn say_config(text: &str, show_secrets: bool) -> Result<()> {
    if show_secrets {
        println!("{}", weft::show::escape_lines(text.trim_end()));
        return Ok(());
    }
    let Ok(mut doc) = serde_json::from_str::<Value>(text) else {
        bail!("the stored config is not valid JSON, so a secret in it cannot be hidden; --show-secrets prints it as stored");
    };
    let hidden = weft::config::hide_secrets(&mut doc);
    if hidden.is_empty() {
        println!("{}", weft::show::escape_lines(text.trim_end()));
    } else {
        let pretty = serde_json::to_string_pretty(&doc)?;
        println!("{}", weft::show::escape_lines(&pretty));
        esay!(
            "weftctl: {} hidden; --show-secrets shows it",
            hidden.join(", ")
        );
    }
    Ok(())
}

async fn config_set(store: &EtcdStore, file: &str) -> Result<()> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the config from standard input")?;
        s
    } else {
        weft::file::read_text(std::path::Path::new(file), weft::file::limit::LARGE)?
    };
    store.put_config(&text).await?;
    say!("config written to {}", store.config_key());
    Ok(())
}

/// The config, if there is a valid one; listing works without it.
async fn config_for_listing(store: &EtcdStore) -> Result<Option<NetworkConfig>> {
    match store.get_config().await {
        Ok(cfg) => Ok(cfg),
        Err(e @ StoreError::Config { .. }) => {
            esay!("weftctl: warning: leases are not checked against the network: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn warn_skipped(list: &LeaseList) {
    for s in &list.skipped {
        esay!("weftctl: warning: skipping {}: {}", s.key, s.reason);
    }
}

async fn leases_list(store: &EtcdStore, out: Format, only_reservations: bool) -> Result<()> {
    let cfg = config_for_listing(store).await?;
    let list = store.list_leases(cfg.as_ref()).await?;
    warn_skipped(&list);
    // The ALIVE column is an addition: a user who may read the leases but not weft's own
    // keys still gets the leases.
    let keys = match store.list_weft().await {
        Ok(keys) => keys,
        Err(e) if e.is_refusal() => {
            esay!("weftctl: warning: no ALIVE column: {e}");
            Default::default()
        }
        Err(e) => return Err(e.into()),
    };
    let (hosts, unreadable) = weft::status::view::hosts(&list.leases, &keys);
    for u in &unreadable {
        esay!("weftctl: warning: skipping {u}");
    }
    let hosts: Vec<_> = hosts
        .iter()
        .filter(|h| !only_reservations || h.lease.is_reservation())
        .collect();
    // The parts of a lease no host uses, by the datapath's own rules.
    let refused: Vec<Vec<(Family, String)>> = (hosts.iter())
        .map(|h| match &cfg {
            Some(cfg) => weft::reconcile::refused_parts(cfg, &h.lease),
            None => Vec::new(),
        })
        .collect();
    for (h, parts) in hosts.iter().zip(&refused) {
        for (family, why) in parts {
            esay!(
                "weftctl: warning: {}: its {family} part is not used by any host: {why}",
                h.lease.key_name()
            );
        }
    }
    match out {
        Format::Json => {
            let v: Vec<Value> = (hosts.iter().zip(&refused))
                .map(|(h, parts)| {
                    let mut v = lease_json(&h.lease);
                    let host = cluster::host_json(h);
                    v["alive"] = host["alive"].clone();
                    v["gone_since"] = host["gone_since"].clone();
                    v["refused"] = parts
                        .iter()
                        .map(|(f, why)| (f.to_string(), json!(why)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            let now = SystemTime::now();
            let alive: Vec<String> = hosts.iter().map(|h| cluster::alive_text(h, now)).collect();
            let leases: Vec<&Lease> = hosts.iter().map(|h| &h.lease).collect();
            print_table(&leases, &alive, &refused)
        }
    }
    Ok(())
}

fn lease_json(l: &Lease) -> Value {
    json!({
        "subnet": l.subnet.to_string(),
        "public_ip": l.attrs.public_ip.to_string(),
        "ipv6_subnet": l.subnet6.map(|s| s.to_string()),
        "public_ipv6": l.attrs.public_ipv6.map(|a| a.to_string()),
        "backend_type": l.attrs.backend_type,
        "backend_data": l.attrs.backend_data,
        "backend_v6_data": l.attrs.backend_v6_data,
        "public_key": l.attrs.public_key(),
        "public_key_v6": l.attrs.public_key_v6(),
        "expires_at": l.expiration.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "reserved": l.is_reservation(),
    })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn expires(l: &Lease) -> String {
    let Some(t) = l.expiration else {
        return "reserved".into();
    };
    match t.duration_since(SystemTime::now()) {
        Ok(d) if d.as_secs() > 0 => short_duration(d),
        _ => "expired".into(),
    }
}

/// `23h59m`, `4m10s`, `9s`: two units at most, no spaces, so columns stay columns.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// A WireGuard public key shortened for a table column (`-o json` has it whole): enough of
/// it to tell hosts apart and to find it in `wg show`.
fn short_key(k: &str) -> String {
    format!("{}…", &k[..k.len().min(10)])
}

/// The leases as a table; the IPv6 columns appear when any lease has an IPv6 part. A part of
/// a lease in `refused` is marked so.
fn print_table(leases: &[&Lease], alive: &[String], refused: &[Vec<(Family, String)>]) {
    let v6 = leases
        .iter()
        .any(|l| l.subnet6.is_some() || l.attrs.public_ipv6.is_some());
    let wg = leases.iter().any(|l| l.attrs.public_key().is_some());
    let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = (leases.iter().zip(alive).zip(refused))
        .map(|((l, alive), refused)| {
            let mark = |f: Family, s: String| match refused.iter().any(|(r, _)| *r == f) {
                true => format!("{s} (refused)"),
                false => s,
            };
            let mut row = vec![
                mark(Family::V4, l.subnet.to_string()),
                l.attrs.public_ip.to_string(),
            ];
            if v6 {
                row.push(dash(l.subnet6.map(|s| mark(Family::V6, s.to_string()))));
                row.push(dash(l.attrs.public_ipv6.map(|a| a.to_string())));
            }
            row.push(or_dash(&l.attrs.backend_type).to_string());
            row.push(dash(if wg {
                l.attrs.public_key().map(|k| short_key(&k))
            } else {
                l.attrs.vxlan_data().map(|v| v.vtep_mac)
            }));
            row.push(expires(l));
            row.push(alive.clone());
            row
        })
        .collect();
    let mut header = vec!["SUBNET", "PUBLIC IP"];
    if v6 {
        header.extend(["IPV6 SUBNET", "PUBLIC IPV6"]);
    }
    // One column of what peers send to: the VTEP MAC, or a WireGuard network's public keys.
    header.extend([
        "BACKEND",
        if wg { "PUBLIC KEY" } else { "VTEP MAC" },
        "EXPIRES",
        "ALIVE",
    ]);
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut stdout = weft::show::Safe(std::io::stdout().lock());
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        let _ = writeln!(stdout, "{}", line.join("  ").trim_end());
    }
}

async fn leases_show(store: &EtcdStore, out: Format, target: &str) -> Result<()> {
    let lease = match parse_lease_target(target)? {
        LeaseTarget::Subnet(sn) => store.get_lease(sn).await?,
        target => {
            let cfg = config_for_listing(store).await?;
            let list = store.list_leases(cfg.as_ref()).await?;
            let found = |f: &dyn Fn(&Lease) -> bool| list.leases.iter().find(|l| f(l)).cloned();
            match target {
                LeaseTarget::Subnet6(s6) => found(&|l| l.subnet6 == Some(s6)),
                LeaseTarget::Address(IpAddr::V4(ip)) => found(&|l| l.subnet.contains(&ip))
                    .or_else(|| found(&|l| l.attrs.public_ip == ip)),
                LeaseTarget::Address(IpAddr::V6(ip)) => {
                    found(&|l| l.subnet6.is_some_and(|s| s.contains(&ip)))
                        .or_else(|| found(&|l| l.attrs.public_ipv6 == Some(ip)))
                }
                LeaseTarget::Subnet(_) => unreachable!("looked up by key above"),
            }
        }
    };
    let l = lease.ok_or_else(|| anyhow!("no lease for {target}"))?;
    match out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&lease_json(&l))?),
        Format::Table => {
            let vx = l.attrs.vxlan_data();
            let expiry = match l.expiration {
                None => "never (reserved)".to_string(),
                Some(t) => format!(
                    "{} (in {})",
                    humantime::format_rfc3339_seconds(t),
                    expires(&l)
                ),
            };
            let rows = [
                ("Subnet", l.subnet.to_string()),
                (
                    "IPv6 subnet",
                    l.subnet6
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
                ("Public IP", l.attrs.public_ip.to_string()),
                (
                    "Public IPv6",
                    l.attrs
                        .public_ipv6
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
                ("Backend", or_dash(&l.attrs.backend_type).to_string()),
                (
                    "VNI",
                    vx.as_ref()
                        .map(|v| v.vni.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
                (
                    "VTEP MAC",
                    vx.map(|v| v.vtep_mac).unwrap_or_else(|| "-".into()),
                ),
                (
                    "Public key",
                    l.attrs.public_key().unwrap_or_else(|| "-".into()),
                ),
                ("Expires", expiry),
                (
                    "etcd lease",
                    l.etcd_lease_id
                        .map(|id| format!("{id:x}"))
                        .unwrap_or_else(|| "none".into()),
                ),
                ("Key", store.lease_key(&l)),
                (
                    "BackendData",
                    l.attrs
                        .backend_data
                        .as_ref()
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
            ];
            for (k, v) in rows {
                say!("{:<12} {v}", format!("{k}:"));
            }
        }
    }
    Ok(())
}

async fn leases_watch(store: &EtcdStore, out: Format) -> Result<()> {
    let cfg = config_for_listing(store).await?;
    let list = store.list_leases(cfg.as_ref()).await?;
    warn_skipped(&list);
    let mut watcher = store.watch_from_list(cfg, &list);
    let mut stdout = std::io::stdout();
    loop {
        let events = watcher.next().await?;
        for e in events {
            let line = match out {
                Format::Json => event_json(&e).to_string(),
                Format::Table => weft::show::escape(&event_line(&e)).into_owned(),
            };
            // A closed pipe (`| head`) ends the watch quietly.
            if writeln!(stdout, "{line}")
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

fn event_json(e: &LeaseEvent) -> Value {
    let mut v = lease_json(e.lease());
    v["event"] = json!(e.kind());
    v
}

fn event_line(e: &LeaseEvent) -> String {
    let l = e.lease();
    let mac = l
        .attrs
        .vxlan_data()
        .map(|v| v.vtep_mac)
        .or_else(|| l.attrs.public_key().map(|k| short_key(&k)))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<8} {} {} {} {} {}",
        e.kind(),
        l.subnet,
        l.attrs.public_ip,
        or_dash(&l.attrs.backend_type),
        mac,
        expires(l)
    )
}
