//! `weftctl status`, the ALIVE column of `weftctl leases` and `weftctl leases reclaim`: the
//! cluster seen through the hosts' status records. The view itself is weft::status::view;
//! this file reads etcd once per kind of key and prints.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use weft::config::NetworkConfig;
use weft::status::view::{ClusterView, Host, HostState, PAIRS_SHOWN};
use weft::status::PolicyStatus;
use weft::store::{EtcdOptions, EtcdStore, PolicyKey, Reclaimed, StoreError};

use super::text::{count, short_duration};
use super::Format;

/// Exit codes of `weftctl status`.
const UNHEALTHY: u8 = 1;
const ETCD_UNREACHABLE: u8 = 3;

/// The largest cluster `--matrix` draws.
const MATRIX_MAX: usize = 40;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Unhealthy when fewer than this share of the subnet pool is free, in percent.
    #[arg(long, default_value_t = 10.0, value_parser = parse_percent)]
    pool_warn_below: f64,
    /// Drift repairs within this window are listed (e.g. 1h, 30m).
    #[arg(long, default_value = "1h", value_parser = weft::duration::parse)]
    repairs_within: Duration,
    /// Also draw which host reaches which (up to 40 hosts).
    #[arg(long)]
    matrix: bool,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = (s.trim_end_matches('%').parse())
        .map_err(|_| format!("{s:?}: not a percentage (e.g. 10 or 10%)"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{s:?}: must be between 0 and 100"));
    }
    Ok(p)
}

fn stamp_json(t: Option<weft::status::Stamp>) -> Value {
    t.map_or(Value::Null, |t| json!(t.to_string()))
}

/// `yes`, `no since …`, or `-` for a host without a status record (not weft).
pub fn alive_text(h: &Host, now: SystemTime) -> String {
    match &h.state {
        HostState::Ready => "yes".into(),
        HostState::NotReady => "yes (not ready)".into(),
        HostState::Gone { since } => {
            format!("no since {since} ({} ago)", short_duration(since.age(now)))
        }
        HostState::NoStatus => "-".into(),
    }
}

fn state_name(s: &HostState) -> &'static str {
    match s {
        HostState::Ready => "ready",
        HostState::NotReady => "not ready",
        HostState::Gone { .. } => "gone",
        HostState::NoStatus => "no status",
    }
}

pub fn host_json(h: &Host) -> Value {
    let r = h.record.as_ref();
    json!({
        "subnet": h.lease.subnet.to_string(),
        "key": h.lease.key_name(),
        "public_ip": h.lease.attrs.public_ip.to_string(),
        "reserved": h.lease.is_reservation(),
        "state": state_name(&h.state),
        "alive": match h.state {
            HostState::Ready | HostState::NotReady => json!(true),
            HostState::Gone { .. } => json!(false),
            HostState::NoStatus => Value::Null,
        },
        "gone_since": match h.state {
            HostState::Gone { since } => json!(since.to_string()),
            _ => Value::Null,
        },
        "status": r.map(|r| serde_json::to_value(r).unwrap_or(Value::Null)),
    })
}

/// The config (required here: the pool needs it), the leases and weft's keys.
async fn read_view(store: &EtcdStore) -> Result<ClusterView> {
    let cfg: NetworkConfig = store.get_config().await?.ok_or(StoreError::NoConfig {
        key: store.config_key(),
    })?;
    let list = store.list_leases_untimed(Some(&cfg)).await?;
    let keys = store.list_weft().await?;
    let view = ClusterView::build(&cfg, &list.leases, &keys);
    for s in &list.skipped {
        esay!("weftctl: warning: skipping {}: {}", s.key, s.reason);
    }
    for u in &view.unreadable {
        esay!("weftctl: warning: skipping {u}");
    }
    Ok(view)
}

/// `weftctl status`: exit 0 healthy, 1 unhealthy, 3 etcd unreachable, 1 on other errors.
pub async fn status(etcd: &EtcdOptions, out: Format, args: &StatusArgs) -> ExitCode {
    let view = async {
        let store = EtcdStore::connect(etcd).await?;
        read_view(&store).await.map(|v| (store, v))
    };
    let (store, view) = match view.await {
        Ok(v) => v,
        Err(e) => return failed(etcd, out, e),
    };
    let policies = match store.list_policy(Some(PolicyKey::Policy)).await {
        Ok(keys) => keys.keys.len() as u64,
        Err(e) => return failed(etcd, out, e.into()),
    };
    let policy = PolicyView::build(&view, policies);
    let newest = match newest_config(&store).await {
        Ok(n) => n,
        Err(e) => return failed(etcd, out, e),
    };
    let now = SystemTime::now();
    let mut problems = view.problems(args.pool_warn_below);
    let behind = weft::status::behind::behind(&view.hosts, newest);
    for (h, why) in &behind {
        problems.push(format!("{} {why}", view.name(h.lease.subnet)));
    }
    let config = Config { newest, behind };
    let result = match out {
        Format::Json => print_json(&store, &view, &policy, &config, &problems, args, now),
        Format::Table => print_summary(&store, &view, &policy, &config, &problems, args, now),
    };
    if let Err(e) = result {
        esay!("weftctl: {e:#}");
        return ExitCode::from(UNHEALTHY);
    }
    match problems.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(UNHEALTHY),
    }
}

/// The revision of `<prefix>/config` every host should run (the record's when there is no
/// document).
async fn newest_config(store: &EtcdStore) -> Result<i64> {
    let keys = store.config_keys().await?;
    let record = keys.running.as_ref().map(|(_, rev)| *rev);
    Ok(keys.config.map(|(_, rev)| rev).or(record).unwrap_or(0))
}

/// The fleet against the newest config: the revision, and the hosts that do not run it.
struct Config<'a> {
    newest: i64,
    behind: Vec<(&'a Host, String)>,
}

fn failed(etcd: &EtcdOptions, out: Format, e: anyhow::Error) -> ExitCode {
    let unreachable = e
        .downcast_ref::<StoreError>()
        .is_some_and(|s| s.is_transient());
    if out == Format::Json {
        let v = json!({
            "healthy": false,
            "etcd": {"endpoints": etcd.endpoints, "reachable": !unreachable, "error": format!("{e:#}")},
        });
        println!("{v}");
    }
    esay!("weftctl: {e:#}");
    ExitCode::from(if unreachable {
        ETCD_UNREACHABLE
    } else {
        UNHEALTHY
    })
}

fn print_json(
    store: &EtcdStore,
    view: &ClusterView,
    policy: &PolicyView,
    config: &Config,
    problems: &[String],
    args: &StatusArgs,
    now: SystemTime,
) -> Result<()> {
    let p = view.pool;
    let v = json!({
        "healthy": problems.is_empty(),
        "problems": problems,
        "hosts": view.hosts.iter().map(host_json).collect::<Vec<_>>(),
        "unreachable_pairs": view.pairs.iter().map(|x| json!({
            "a": x.a.to_string(), "b": x.b.to_string(), "since": x.since.to_string(),
        })).collect::<Vec<_>>(),
        "recent_drift_repairs": view.recent_repairs(args.repairs_within, now).iter().map(|h| json!({
            "subnet": h.lease.subnet.to_string(),
            "count": h.record.as_ref().map_or(0, |r| r.drift_repairs.count),
            "last": stamp_json(h.record.as_ref().and_then(|r| r.drift_repairs.last)),
        })).collect::<Vec<_>>(),
        "pool": {"total": p.total, "used": p.used, "reserved": p.reserved, "free": p.free,
                 "free_percent": p.free_percent(), "warn_below_percent": args.pool_warn_below},
        "etcd": {"endpoints": store.endpoints(), "reachable": true},
        "policy": policy.json(),
        "config": {"revision": config.newest, "behind": config.behind.iter().map(|(h, why)| json!({
            "subnet": h.lease.subnet.to_string(), "public_ip": h.lease.attrs.public_ip.to_string(),
            "config": h.record.as_ref().and_then(|r| r.config.clone()), "why": why,
        })).collect::<Vec<_>>()},
        "unreadable": view.unreadable,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Counts of a field over the weft hosts, `0.1.0 (3), 0.2.0 (1)`.
fn tally(view: &ClusterView, f: impl Fn(&weft::status::StatusRecord) -> String) -> String {
    let mut n = std::collections::BTreeMap::<String, usize>::new();
    for r in view.hosts.iter().filter_map(|h| h.record.as_ref()) {
        *n.entry(f(r)).or_default() += 1;
    }
    if n.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = n.into_iter().map(|(k, c)| format!("{k} ({c})")).collect();
    parts.join(", ")
}

/// The cluster in a few lines, a section each, then the verdict.
fn print_summary(
    store: &EtcdStore,
    view: &ClusterView,
    policy: &PolicyView,
    config: &Config,
    problems: &[String],
    args: &StatusArgs,
    now: SystemTime,
) -> Result<()> {
    let mut o = weft::show::Safe(std::io::stdout().lock());
    print_hosts(&mut o, view, now)?;
    writeln!(o, "versions:  {}", tally(view, |r| r.version.clone()))?;
    writeln!(o, "backends:  {}", tally(view, |r| r.backend.clone()))?;
    print_config(&mut o, view, config)?;
    print_reach(&mut o, view)?;
    print_repairs(&mut o, view, args, now)?;
    print_pool(&mut o, view, args)?;
    policy.print(&mut o)?;
    writeln!(o, "etcd:      reachable at {}", store.endpoints())?;
    if args.matrix {
        print_matrix(&mut o, view)?;
    }
    match problems.len() {
        0 => writeln!(o, "healthy")?,
        n => {
            writeln!(o, "unhealthy: {}", count(n as u64, "problem"))?;
            for p in problems {
                writeln!(o, "  {p}")?;
            }
        }
    }
    Ok(())
}

/// How many hosts are in each state, and each that is not ready.
fn print_hosts(o: &mut impl Write, view: &ClusterView, now: SystemTime) -> Result<()> {
    let count = |s: &str| {
        (view.hosts.iter())
            .filter(|h| state_name(&h.state) == s)
            .count()
    };
    writeln!(
        o,
        "hosts:     {} ({} ready, {} not ready, {} gone, {} no status)",
        view.hosts.len(),
        count("ready"),
        count("not ready"),
        count("gone"),
        count("no status")
    )?;
    for h in view.hosts.iter().filter(|h| h.state != HostState::Ready) {
        let what = match &h.state {
            HostState::NoStatus => "no status (not weft?)".to_string(),
            _ => alive_text(h, now),
        };
        let (subnet, ip) = (
            h.lease.subnet.to_string(),
            h.lease.attrs.public_ip.to_string(),
        );
        writeln!(o, "  {subnet:<18} {ip:<15} {what}")?;
    }
    Ok(())
}

/// The config revision the fleet should run, and each live host that does not, with why.
fn print_config(o: &mut impl Write, view: &ClusterView, config: &Config) -> Result<()> {
    let n = config.behind.len();
    match n {
        0 => writeln!(
            o,
            "config:    revision {}, run by every host that reports one",
            config.newest
        )?,
        _ => writeln!(
            o,
            "config:    revision {}; {} not on it",
            config.newest,
            count(n as u64, "host")
        )?,
    }
    for (h, why) in &config.behind {
        writeln!(o, "  {} {why}", view.name(h.lease.subnet))?;
    }
    Ok(())
}

/// The pairs that cannot reach each other, as the hosts report them: the first few named,
/// the rest counted (a record names only its longest unreachable peers).
fn print_reach(o: &mut impl Write, view: &ClusterView) -> Result<()> {
    let u = view.unnamed;
    match view.pairs.as_slice() {
        [] if u.peers == 0 => {
            writeln!(o, "reach:     every host reaches every other (as reported)")?
        }
        pairs => {
            let n = pairs.len();
            writeln!(
                o,
                "reach:     {} cannot reach each other",
                count(n as u64, "pair")
            )?;
            for p in pairs.iter().take(PAIRS_SHOWN) {
                let (a, b) = (view.name(p.a), view.name(p.b));
                writeln!(o, "  {a} <-> {b} since {}", p.since)?;
            }
            if n > PAIRS_SHOWN {
                let more = count((n - PAIRS_SHOWN) as u64, "more pair");
                writeln!(o, "  … {more} (weftctl status -o json lists them)")?;
            }
        }
    }
    if u.peers > 0 {
        writeln!(
            o,
            "  … and {} counted by {} but not named (/peers on each host lists them)",
            count(u.peers, "unreachable peer"),
            count(u.hosts, "host"),
        )?;
    }
    Ok(())
}

/// The hosts that repaired drift within `--repairs-within`.
fn print_repairs(
    o: &mut impl Write,
    view: &ClusterView,
    args: &StatusArgs,
    now: SystemTime,
) -> Result<()> {
    let repairs = view.recent_repairs(args.repairs_within, now);
    let within = humantime::format_duration(args.repairs_within);
    let n = count(repairs.len() as u64, "host");
    writeln!(o, "repairs:   {n} repaired drift within {within}")?;
    for h in repairs {
        let r = h.record.as_ref().map(|r| &r.drift_repairs);
        let last = r.and_then(|r| r.last).map_or("-".into(), |t| t.to_string());
        let repairs = count(r.map_or(0, |r| r.count), "repair");
        let (subnet, ip) = (
            h.lease.subnet.to_string(),
            h.lease.attrs.public_ip.to_string(),
        );
        writeln!(o, "  {subnet:<18} {ip:<15} {repairs}, last {last}")?;
    }
    Ok(())
}

/// The subnet pool, with a warning below `--pool-warn-below`.
fn print_pool(o: &mut impl Write, view: &ClusterView, args: &StatusArgs) -> Result<()> {
    let p = view.pool;
    let low = if p.free_percent() < args.pool_warn_below {
        format!("  WARNING: below {}%", args.pool_warn_below)
    } else {
        String::new()
    };
    writeln!(
        o,
        "pool:      {}: {} used, {} reserved, {} free ({:.1}% free){low}",
        count(p.total, "subnet"),
        p.used,
        p.reserved,
        p.free,
        p.free_percent()
    )?;
    Ok(())
}

/// Rows are the reporting hosts, columns the peers: `.` reached, `x` unreachable, `?` no
/// record from the row's host, `-` itself.
fn print_matrix(o: &mut impl Write, view: &ClusterView) -> Result<()> {
    let hosts = &view.hosts;
    if hosts.len() > MATRIX_MAX {
        writeln!(
            o,
            "matrix:    {} hosts is too many to draw (at most {MATRIX_MAX})",
            hosts.len()
        )?;
        return Ok(());
    }
    writeln!(
        o,
        "matrix:    row cannot reach column: x; no record: ?; not named by a record that \
         counts more than it names: ~"
    )?;
    for (i, h) in hosts.iter().enumerate() {
        let (subnet, ip) = (h.lease.subnet.to_string(), h.lease.attrs.public_ip);
        writeln!(o, "  {i:>2}  {subnet:<18} {ip}")?;
    }
    let head: String = (0..hosts.len()).map(|i| format!("{i:>3}")).collect();
    writeln!(o, "     {head}")?;
    for (i, h) in hosts.iter().enumerate() {
        let cells: String = (hosts.iter().enumerate())
            .map(|(j, peer)| {
                let c = match &h.record {
                    _ if i == j => '-',
                    None => '?',
                    Some(r)
                        if r.unreachable
                            .iter()
                            .any(|u| u.peer == peer.lease.key_name()) =>
                    {
                        'x'
                    }
                    // It counts more than it names: this peer may be one of them.
                    Some(r) if r.unreachable_total() > r.unreachable.len() as u64 => '~',
                    Some(_) => '.',
                };
                format!("{c:>3}")
            })
            .collect();
        writeln!(o, "  {i:>2} {cells}")?;
    }
    Ok(())
}

/// `weftctl leases reclaim`: shows each gone host and whether its lease goes; removes them
/// only with `--yes` or a "y" typed at the terminal.
pub async fn reclaim(store: &EtcdStore, gone_for: Duration, yes: bool) -> Result<()> {
    let view = read_view(store).await?;
    let now = SystemTime::now();
    let chosen = view.reclaimable(gone_for, now);
    for h in view.hosts.iter() {
        let HostState::Gone { since } = h.state else {
            continue;
        };
        let (subnet, ip) = (
            h.lease.subnet.to_string(),
            h.lease.attrs.public_ip.to_string(),
        );
        let age = since.age(now);
        let why = if h.lease.is_reservation() {
            "kept: a reservation".to_string()
        } else if age < gone_for {
            format!(
                "kept: gone for less than {}",
                humantime::format_duration(gone_for)
            )
        } else {
            "will be removed".to_string()
        };
        say!(
            "{subnet:<18} {ip:<15} gone since {since} ({} ago): {why}",
            short_duration(age)
        );
    }
    if chosen.is_empty() {
        say!("nothing to reclaim");
        return Ok(());
    }
    if !yes && !confirmed(chosen.len())? {
        say!("nothing removed (confirm with --yes)");
        return Ok(());
    }
    for h in chosen {
        match store.reclaim(&h.lease).await? {
            Reclaimed::Removed => say!("reclaimed {}", h.lease.subnet),
            Reclaimed::Changed => say!(
                "left {}: it changed since it was read, or its host is back",
                h.lease.subnet
            ),
        }
    }
    Ok(())
}

fn confirmed(n: usize) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    write!(
        weft::show::Safe(std::io::stdout()),
        "remove {}? [y/N] ",
        count(n as u64, "lease")
    )?;
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| anyhow!("reading the answer: {e}"))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Network policy across the hosts, from their records: the policies in etcd, the hosts
/// that hold fewer (they have not caught up, or cannot), the containers, the packets
/// refused and the policies that refused most.
struct PolicyView {
    in_etcd: u64,
    /// Hosts with a policy part in their record, by subnet.
    hosts: Vec<(String, PolicyStatus)>,
    /// Refused packets by policy, over the hosts' top lists.
    top: Vec<(String, u64)>,
}

impl PolicyView {
    fn build(view: &ClusterView, in_etcd: u64) -> PolicyView {
        let hosts: Vec<(String, PolicyStatus)> = (view.hosts.iter())
            .filter_map(|h| {
                let p = h.record.as_ref()?.policy.clone()?;
                Some((h.lease.subnet.to_string(), p))
            })
            .collect();
        let mut by_policy = std::collections::BTreeMap::<String, u64>::new();
        for d in hosts.iter().flat_map(|(_, p)| &p.top_drops) {
            *by_policy.entry(d.policy.clone()).or_default() += d.packets;
        }
        let mut top: Vec<(String, u64)> = by_policy.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(weft::status::TOP_DROPS);
        PolicyView {
            in_etcd,
            hosts,
            top,
        }
    }

    fn behind(&self) -> impl Iterator<Item = &(String, PolicyStatus)> {
        self.hosts
            .iter()
            .filter(|(_, p)| p.policies != self.in_etcd)
    }

    fn json(&self) -> Value {
        json!({
            "policies": self.in_etcd,
            "hosts": self.hosts.len(),
            "behind": self.behind().map(|(s, p)| json!({"subnet": s, "policies": p.policies})).collect::<Vec<_>>(),
            "local_workloads": self.hosts.iter().map(|(_, p)| p.local_workloads).sum::<u64>(),
            "dropped": self.hosts.iter().map(|(_, p)| p.dropped).sum::<u64>(),
            "top_drops": self.top.iter().map(|(p, n)| json!({"policy": p, "packets": n})).collect::<Vec<_>>(),
        })
    }

    fn print(&self, o: &mut impl Write) -> Result<()> {
        if self.in_etcd == 0 && self.hosts.iter().all(|(_, p)| p.policies == 0) {
            writeln!(o, "policy:    no network policy")?;
            return Ok(());
        }
        let behind: Vec<&(String, PolicyStatus)> = self.behind().collect();
        let workloads: u64 = self.hosts.iter().map(|(_, p)| p.local_workloads).sum();
        let dropped: u64 = self.hosts.iter().map(|(_, p)| p.dropped).sum();
        let policies = match self.in_etcd {
            1 => "1 policy".to_string(),
            n => format!("{n} policies"),
        };
        let hold = match self.hosts.len() - behind.len() {
            1 => "1 host holds".to_string(),
            n => format!("{n} hosts hold"),
        };
        writeln!(
            o,
            "policy:    {policies}; {hold} them all, {} behind; {}; {} refused",
            behind.len(),
            count(workloads, "container"),
            count(dropped, "packet"),
        )?;
        if !self.top.is_empty() {
            let top: Vec<String> = self.top.iter().map(|(p, n)| format!("{p} {n}")).collect();
            writeln!(o, "  most refused by: {}", top.join(", "))?;
        }
        for (subnet, p) in behind {
            let applied = p.applied.map_or("never".into(), |t| t.to_string());
            writeln!(
                o,
                "  {subnet:<18} holds {} of {} policies (last applied {applied})",
                p.policies, self.in_etcd
            )?;
        }
        Ok(())
    }
}
