//! The allocator: which subnet a host gets, when its lease is still its own, and what an
//! operator may reserve or revoke. Every decision is written against [`Registry`], so it is
//! unit-tested on an in-memory registry with etcd's semantics; only the I/O is etcd's.

mod acquire;
mod choose;
mod renew;
mod reserve;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::debug;

use super::decode::Entry;
use super::registry::Registry;
use super::StoreError;
use crate::config::NetworkConfig;
use crate::lease::Lease;

/// How many lost creation races an acquisition survives.
const MAX_ATTEMPTS: u32 = 20;

/// What this host held before, for the acquisition to prefer: the subnets in the previous
/// subnet.env (or the lease being re-acquired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Previous {
    pub subnet: Option<Ipv4Net>,
    pub subnet6: Option<Ipv6Net>,
}

impl From<Option<Ipv4Net>> for Previous {
    fn from(subnet: Option<Ipv4Net>) -> Previous {
        Previous {
            subnet,
            subnet6: None,
        }
    }
}

/// The decisions about leases, made against one registry.
pub(super) struct Allocator<'r, R> {
    reg: &'r R,
    /// Picks the index of a random free subnet below the count it is given.
    pick: fn(usize) -> usize,
}

impl<'r, R: Registry> Allocator<'r, R> {
    pub(super) fn new(reg: &'r R) -> Self {
        Allocator {
            reg,
            pick: |n| rand::random_range(0..n),
        }
    }

    /// The full etcd key of a lease.
    fn key(&self, lease: &Lease) -> String {
        self.reg.layout().lease_key(lease)
    }

    /// Best effort: an etcd lease nobody uses expires on its own anyway.
    async fn revoke_quietly(&self, id: i64) {
        if let Err(e) = self.reg.revoke(id).await {
            debug!("{e}");
        }
    }

    /// Revokes etcd lease `id` when no key hangs on it any more: it would only linger until
    /// its TTL runs out.
    async fn revoke_if_unused(&self, id: i64) {
        match self.reg.time_to_live(id).await {
            Ok(t) if t.remaining > 0 && t.keys == 0 => self.revoke_quietly(id).await,
            Ok(_) => {}
            Err(e) => debug!("{e}"),
        }
    }
}

/// The leases as one listing found them.
struct Snapshot {
    entries: Vec<Entry>,
}

impl Snapshot {
    /// The keys that hold a usable lease.
    fn leases(&self) -> impl Iterator<Item = &Lease> + Clone {
        self.entries.iter().filter_map(|e| e.lease.as_ref().ok())
    }

    /// Every subnet a key names, of either family: a key whose value does not parse still
    /// holds its IPv4 subnet.
    fn taken(&self) -> HashSet<IpNet> {
        self.leases()
            .flat_map(|l| [Some(IpNet::V4(l.subnet)), l.subnet6.map(IpNet::V6)])
            .flatten()
            .chain(self.entries.iter().filter_map(|e| e.subnet.map(IpNet::V4)))
            .collect()
    }
}

/// The error for a subnet outside the network (of its family), if it is.
fn not_in_network(cfg: &NetworkConfig, subnet: IpNet) -> Result<(), StoreError> {
    if cfg.contains(subnet) {
        return Ok(());
    }
    let family = crate::subnet::Family::of(subnet.addr());
    let len = match subnet {
        IpNet::V4(_) => cfg.subnet_len,
        IpNet::V6(_) => cfg.ipv6_subnet_len,
    };
    Err(StoreError::NotInNetwork {
        subnet: subnet.to_string(),
        network: cfg
            .network_of(family)
            .map(|n| n.to_string())
            .unwrap_or_default(),
        len,
    })
}
