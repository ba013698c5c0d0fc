//! `weftctl migrate`: which hosts a change of `Backend.Type` under way moves. `weftctl config
//! set --hosts` starts a migration with some hosts; this command tells more (by name, the next
//! batch, or all) to move, by rewriting the running-config record weftd follows; `--finish`
//! ends it once every host speaks only the new backend, so that a host joining later starts
//! with the new backend alone.

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use weft::live::{Hosts, RunningConfig};
use weft::store::EtcdStore;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Tell these hosts to move too (their IPv4 subnets, comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    hosts: Vec<Ipv4Net>,
    /// Tell the next N hosts not told yet to move (in subnet order).
    #[arg(long, conflicts_with_all = ["all", "hosts"])]
    batch: Option<usize>,
    /// Tell every host to move.
    #[arg(long)]
    all: bool,
    /// End the migration once every host with a lease speaks only the new backend; refused,
    /// with the hosts still speaking the old one, before.
    #[arg(long, conflicts_with_all = ["all", "hosts", "batch"])]
    finish: bool,
}

/// Shows the migration under way, or widens it to `--hosts` or `--all` (guarded by the record
/// as read: a concurrent change makes it fail rather than be overwritten).
pub async fn run(store: &EtcdStore, args: MigrateArgs) -> Result<()> {
    let keys = store.config_keys().await?;
    let Some((bytes, rev)) = &keys.running else {
        bail!(
            "no running config at {}: weftd has not started on any host",
            store.running_key()
        );
    };
    let mut record = RunningConfig::parse(&store.running_key(), bytes)?;
    let (from, to) = match (&record.migration, record.network()) {
        (Some(m), Ok(cfg)) => (m.from["Type"].as_str().unwrap_or("?").to_string(), cfg.backend.type_name()),
        _ => bail!("no backend migration under way (weftctl config set with a new Backend.Type starts one)"),
    };
    if args.finish {
        return finish(store, record, *rev, &from, to).await;
    }
    let more = match args.batch {
        Some(n) => next_batch(store, &record, n).await?,
        None => args.hosts.iter().map(|n| n.trunc()).collect(),
    };
    let m = record.migration.as_mut().expect("a migration");
    match (&m.hosts, args.all) {
        (_, true) => m.hosts = Hosts::All,
        (Hosts::All, false) if !more.is_empty() => bail!("every host is told to move already"),
        (Hosts::Some(set), false) if !more.is_empty() => {
            m.hosts = Hosts::Some(set.iter().copied().chain(more).collect());
        }
        _ => {
            say!("migration from {from} to {to}: {}", told(&m.hosts));
            return Ok(());
        }
    }
    if !store.put_running(&record.to_json(), Some(*rev)).await? {
        bail!(
            "{} changed while this ran; nothing written: run again",
            store.running_key()
        );
    }
    let m = record.migration.as_ref().expect("a migration");
    say!("migration from {from} to {to}: {}", told(&m.hosts));
    say!("weftctl status shows each host that has not moved, and why");
    Ok(())
}

/// Ends the migration of `record` (read at `rev`) from backend `from` to `to` once no lease
/// speaks `from` any more: a lease that does is a host (or a flannel host) that still needs
/// it, and ending the migration would take it from every other host.
async fn finish(
    store: &EtcdStore,
    mut record: RunningConfig,
    rev: i64,
    from: &str,
    to: &str,
) -> Result<()> {
    let leases = store.list_leases_untimed(None).await?.leases;
    let old: Vec<String> = (leases.iter())
        .filter(|l| !l.is_reservation() && l.attrs.speaks(from).is_some())
        .map(|l| format!("{} at {}", l.subnet, l.attrs.public_ip))
        .collect();
    if !old.is_empty() {
        bail!(
            "not finished: {} still speak {from}: {}",
            old.len(),
            old.join(", ")
        );
    }
    record.migration = None;
    if !store.put_running(&record.to_json(), Some(rev)).await? {
        bail!(
            "{} changed while this ran; nothing written: run again",
            store.running_key()
        );
    }
    say!("migration from {from} to {to} finished: every host runs {to} alone");
    Ok(())
}

/// The first `n` leases' subnets (in subnet order) the migration of `record` does not tell
/// to move yet.
async fn next_batch(store: &EtcdStore, record: &RunningConfig, n: usize) -> Result<Vec<Ipv4Net>> {
    let Some(Hosts::Some(told)) = record.migration.as_ref().map(|m| &m.hosts) else {
        bail!("every host is told to move already");
    };
    let mut subnets: Vec<Ipv4Net> = (store.list_leases_untimed(None).await?.leases.iter())
        .filter(|l| !l.is_reservation() && !told.contains(&l.subnet))
        .map(|l| l.subnet)
        .collect();
    subnets.sort();
    subnets.truncate(n);
    if subnets.is_empty() {
        bail!("every host with a lease is told to move already");
    }
    Ok(subnets)
}

fn told(hosts: &Hosts) -> String {
    match hosts {
        Hosts::All => "every host is told to move".into(),
        Hosts::Some(set) => {
            let names: Vec<String> = set.iter().map(|n| n.to_string()).collect();
            format!(
                "told to move: {}",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )
        }
    }
}
