//! Reading the network from any registry: the config, the leases with their expirations, one
//! subnet's key. Listings are decoded by the rules of [`decode`](super::decode).

use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;

use super::decode::{decode_all, sort_entries, Entry, LeaseList};
use super::registry::Registry;
use super::StoreError;
use crate::config::NetworkConfig;
use crate::lease::Lease;

/// The network config; `Ok(None)` when the key does not exist.
pub(super) async fn config(reg: &impl Registry) -> Result<Option<NetworkConfig>, StoreError> {
    let key = reg.layout().config_key();
    let Some(kv) = reg.get(&key).await? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&kv.value);
    NetworkConfig::parse(&text)
        .map(Some)
        .map_err(|problems| StoreError::Config { key, problems })
}

/// Every key under the subnets prefix, decoded, at `revision` (0: now); and the revision.
pub(super) async fn entries(
    reg: &impl Registry,
    revision: i64,
) -> Result<(Vec<Entry>, i64), StoreError> {
    let listing = reg.list(&reg.layout().subnets_prefix(), revision).await?;
    Ok((decode_all(reg.layout(), listing.kvs), listing.revision))
}

/// The entry whose key names `subnet` (also a dual-stack key starting with it).
pub(super) async fn find_entry(
    reg: &impl Registry,
    subnet: Ipv4Net,
) -> Result<Option<Entry>, StoreError> {
    let key = reg.layout().subnet_key(subnet, None);
    let listing = reg.list(&key, 0).await?;
    Ok(decode_all(reg.layout(), listing.kvs)
        .into_iter()
        .find(|e| e.subnet == Some(subnet)))
}

/// Sets `expiration` of every non-reservation from its etcd lease's remaining TTL.
pub(super) async fn fill_expirations(
    reg: &impl Registry,
    leases: &mut [Lease],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = leases.iter().filter_map(|l| l.etcd_lease_id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let ttls = reg.ttls(&ids).await?;
    let now = SystemTime::now();
    for l in leases.iter_mut() {
        if let Some(id) = l.etcd_lease_id {
            let secs = ttls.get(&id).copied().unwrap_or(0).max(0) as u64;
            l.expiration = Some(now + Duration::from_secs(secs));
        }
    }
    Ok(())
}

/// All leases, sorted by subnet, at `revision` (0: now); with `timed`, with their
/// expirations. With a config, leases outside its network are skipped.
pub(super) async fn list(
    reg: &impl Registry,
    cfg: Option<&NetworkConfig>,
    revision: i64,
    timed: bool,
) -> Result<LeaseList, StoreError> {
    let (entries, revision) = entries(reg, revision).await?;
    let (mut leases, skipped) = sort_entries(entries, cfg);
    if timed {
        fill_expirations(reg, &mut leases).await?;
    }
    Ok(LeaseList {
        leases,
        skipped,
        revision,
        timed,
    })
}

/// The lease of one subnet with its expiration, if any (a key that does not parse is an
/// error naming it).
pub(super) async fn lease(
    reg: &impl Registry,
    subnet: Ipv4Net,
) -> Result<Option<Lease>, StoreError> {
    let Some(e) = find_entry(reg, subnet).await? else {
        return Ok(None);
    };
    let mut lease = e.into_lease()?;
    fill_expirations(reg, std::slice::from_mut(&mut lease)).await?;
    Ok(Some(lease))
}
