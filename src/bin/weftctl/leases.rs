//! `weftctl leases`: list, show, watch, revoke and reclaim the hosts' subnet leases. Each
//! lease's parts are checked by the datapath's own rules, and its backend data is shown
//! through its backend's summary (the VTEP MAC, the public key).

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use weft::backend;
use weft::config::NetworkConfig;
use weft::lease::{Lease, LeaseEvent};
use weft::store::{EtcdStore, LeaseList, StoreError};
use weft::subnet::{parse_lease_target, parse_subnet, Family, LeaseTarget};

use super::text::short_duration;
use super::{status, Format};

#[derive(Subcommand, Debug)]
pub enum LeasesCmd {
    /// All leases, sorted by subnet.
    List {
        /// Look up every lease's expiry even in a large fleet (one etcd request per lease;
        /// done by default up to 500 leases).
        #[arg(long)]
        expiry: bool,
    },
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
        #[arg(long, value_parser = weft::duration::parse)]
        gone_for: Duration,
        /// Remove without asking.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(store: &EtcdStore, out: Format, cmd: Option<LeasesCmd>) -> Result<()> {
    match cmd.unwrap_or(LeasesCmd::List { expiry: false }) {
        LeasesCmd::List { expiry } => list(store, out, false, expiry).await,
        LeasesCmd::Show { target } => show(store, out, &target).await,
        LeasesCmd::Watch => watch(store, out).await,
        LeasesCmd::Revoke { subnet } => {
            let sn = parse_subnet(&subnet)?;
            if !store.revoke_lease(sn).await? {
                bail!("no lease for {sn}");
            }
            say!("revoked {sn}");
            Ok(())
        }
        LeasesCmd::Reclaim { gone_for, yes } => status::reclaim(store, gone_for, yes).await,
    }
}

/// The config, if there is a valid one; listing works without it.
pub async fn config_for_listing(store: &EtcdStore) -> Result<Option<NetworkConfig>> {
    match store.get_config().await {
        Ok(cfg) => Ok(cfg),
        Err(e @ StoreError::Config { .. }) => {
            esay!("weftctl: warning: leases are not checked against the network: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Leases whose expiry is looked up without being asked: each costs etcd one request, so a
/// listing of a large fleet stays one round trip unless `--expiry` asks for them.
const EXPIRY_LOOKUPS_MAX: usize = 500;

/// Looks up the expiries when asked or when the leases are few; says so when it did not.
async fn time_if_few(store: &EtcdStore, list: &mut LeaseList, asked: bool) -> Result<()> {
    let on_etcd_leases = list.leases.iter().filter(|l| !l.is_reservation()).count();
    if asked || on_etcd_leases <= EXPIRY_LOOKUPS_MAX {
        store.time_leases(list).await?;
    } else {
        esay!(
            "weftctl: expiries not looked up for {on_etcd_leases} leases (one etcd request \
             each); `weftctl leases list --expiry` looks them up"
        );
    }
    Ok(())
}

pub fn warn_skipped(list: &LeaseList) {
    for s in &list.skipped {
        esay!("weftctl: warning: skipping {}: {}", s.key, s.reason);
    }
}

/// `leases` (or `reservations list` with `only_reservations`): every lease with its host's
/// liveness and the parts no host uses marked.
pub async fn list(
    store: &EtcdStore,
    out: Format,
    only_reservations: bool,
    expiry: bool,
) -> Result<()> {
    let cfg = config_for_listing(store).await?;
    let mut list = store.list_leases_untimed(cfg.as_ref()).await?;
    if !only_reservations {
        time_if_few(store, &mut list, expiry).await?;
    }
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
            Some(cfg) => weft::plan::refused_parts(cfg, &h.lease),
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
                    let host = status::host_json(h);
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
            let alive: Vec<String> = hosts.iter().map(|h| status::alive_text(h, now)).collect();
            let leases: Vec<&Lease> = hosts.iter().map(|h| &h.lease).collect();
            print_table(cfg.as_ref(), &leases, &alive, &refused)
        }
    }
    Ok(())
}

fn lease_json(l: &Lease) -> Value {
    let mut v = json!({
        "subnet": l.subnet.to_string(),
        "public_ip": l.attrs.public_ip.to_string(),
        "ipv6_subnet": l.subnet6.map(|s| s.to_string()),
        "public_ipv6": l.attrs.public_ipv6.map(|a| a.to_string()),
        "backend_type": l.attrs.backend_type,
        "backend_data": l.attrs.backend_data,
        "backend_v6_data": l.attrs.backend_v6_data,
        "expires_at": l.expiration.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "reserved": l.is_reservation(),
    });
    // Every listing has the same keys: each backend's summary field, null where it has none.
    for field in backend::summary_json_fields() {
        for (f, key) in [
            (Family::V4, field.to_string()),
            (Family::V6, format!("{field}_v6")),
        ] {
            let value = backend::summary(&l.attrs, f)
                .filter(|(s, _)| s.json == Some(field))
                .map(|(_, text)| text);
            v[key] = json!(value);
        }
    }
    v
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
        let what = if l.is_reservation() { "reserved" } else { "?" };
        return what.into();
    };
    match t.duration_since(SystemTime::now()) {
        Ok(d) if d.as_secs() > 0 => short_duration(d),
        _ => "expired".into(),
    }
}

/// A lease's backend data as a table shows it (in full with `-o json`): its backend's
/// summary, shortened as the backend says (a public key to enough of it to tell hosts apart
/// and find it in `wg show`).
fn summary_cell(l: &Lease) -> Option<String> {
    let (s, text) = backend::summary(&l.attrs, Family::V4)?;
    if s.short == 0 || text.chars().count() <= s.short {
        return Some(text);
    }
    Some(text.chars().take(s.short).collect::<String>() + "…")
}

/// The header of the backend data column: the summaries of the network's backend and of the
/// leases' (one column; several backends' names joined while a fleet is mixed).
fn summary_header(cfg: Option<&NetworkConfig>, leases: &[&Lease]) -> String {
    let mut names: Vec<&str> = Vec::new();
    let types = (cfg.map(|c| c.backend.type_name()).into_iter())
        .chain(leases.iter().map(|l| l.attrs.backend_type.as_str()));
    for s in types.filter_map(backend::summary_of) {
        if !names.contains(&s.column) {
            names.push(s.column);
        }
    }
    match names.is_empty() {
        true => "BACKEND DATA".into(),
        false => names.join(" / "),
    }
}

/// The leases as a table; the IPv6 columns appear when any lease has an IPv6 part. A part of
/// a lease in `refused` is marked so.
fn print_table(
    cfg: Option<&NetworkConfig>,
    leases: &[&Lease],
    alive: &[String],
    refused: &[Vec<(Family, String)>],
) {
    let v6 = leases
        .iter()
        .any(|l| l.subnet6.is_some() || l.attrs.public_ipv6.is_some());
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
            row.push(dash(summary_cell(l)));
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
    let data = summary_header(cfg, leases);
    header.extend(["BACKEND", data.as_str(), "EXPIRES", "ALIVE"]);
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

/// `leases show`: one lease, by subnet (one key read), or by an address inside a subnet or a
/// PublicIP (a listing).
async fn show(store: &EtcdStore, out: Format, target: &str) -> Result<()> {
    let lease = match parse_lease_target(target)? {
        LeaseTarget::Subnet(sn) => store.get_lease(sn).await?,
        other => find(store, other).await?,
    };
    let l = lease.ok_or_else(|| anyhow!("no lease for {target}"))?;
    match out {
        Format::Json => println!("{}", serde_json::to_string_pretty(&lease_json(&l))?),
        Format::Table => {
            for (k, v) in show_rows(store, &l) {
                say!("{:<12} {v}", format!("{k}:"));
            }
        }
    }
    Ok(())
}

/// The lease an IPv6 subnet, or an address, names: the one whose subnet holds it, else the
/// one whose PublicIP it is.
async fn find(store: &EtcdStore, target: LeaseTarget) -> Result<Option<Lease>> {
    let cfg = config_for_listing(store).await?;
    let list = store.list_leases(cfg.as_ref()).await?;
    let found = |f: &dyn Fn(&Lease) -> bool| list.leases.iter().find(|l| f(l)).cloned();
    Ok(match target {
        LeaseTarget::Subnet(sn) => found(&|l| l.subnet == sn),
        LeaseTarget::Subnet6(s6) => found(&|l| l.subnet6 == Some(s6)),
        LeaseTarget::Address(IpAddr::V4(ip)) => {
            found(&|l| l.subnet.contains(&ip)).or_else(|| found(&|l| l.attrs.public_ip == ip))
        }
        LeaseTarget::Address(IpAddr::V6(ip)) => {
            found(&|l| l.subnet6.is_some_and(|s| s.contains(&ip)))
                .or_else(|| found(&|l| l.attrs.public_ipv6 == Some(ip)))
        }
    })
}

/// The rows of `leases show`: the lease's parts, its backend's summary of each family's data,
/// when it expires, where it lives.
fn show_rows(store: &EtcdStore, l: &Lease) -> Vec<(String, String)> {
    let dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    let expiry = match l.expiration {
        None => "never (reserved)".to_string(),
        Some(t) => format!(
            "{} (in {})",
            humantime::format_rfc3339_seconds(t),
            expires(l)
        ),
    };
    let mut rows = vec![
        ("Subnet".into(), l.subnet.to_string()),
        ("IPv6 subnet".into(), dash(l.subnet6.map(|s| s.to_string()))),
        ("Public IP".into(), l.attrs.public_ip.to_string()),
        (
            "Public IPv6".into(),
            dash(l.attrs.public_ipv6.map(|a| a.to_string())),
        ),
        ("Backend".into(), or_dash(&l.attrs.backend_type).to_string()),
    ];
    for (f, suffix) in [(Family::V4, ""), (Family::V6, " (IPv6)")] {
        if let Some((s, text)) = backend::summary(&l.attrs, f) {
            rows.push((format!("{}{suffix}", s.column), text));
        }
    }
    let id = l.etcd_lease_id.map(|id| format!("{id:x}"));
    let data = l.attrs.backend_data.as_ref().map(|v| v.to_string());
    rows.extend([
        ("Expires".into(), expiry),
        ("etcd lease".into(), id.unwrap_or_else(|| "none".into())),
        ("Key".into(), store.lease_key(l)),
        ("BackendData".into(), dash(data)),
    ]);
    rows
}

async fn watch(store: &EtcdStore, out: Format) -> Result<()> {
    let cfg = config_for_listing(store).await?;
    let list = store.list_leases(cfg.as_ref()).await?;
    warn_skipped(&list);
    let mut watcher = store.watch_from_list(cfg, list);
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
    let mac = summary_cell(l).unwrap_or_else(|| "-".into());
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
