//! Acquiring this host's lease in flannel's order, and the IPv6 de-duplication after it. The
//! creation transaction guards a key, and a key names both subnets: the IPv4 subnet is
//! guarded by it, the IPv6 one only by the check after writing.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, info, warn};

use super::choose::choose;
use super::{Allocator, Previous, Snapshot, MAX_ATTEMPTS};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs};
use crate::store::read::entries;
use crate::store::registry::Registry;
use crate::store::StoreError;

/// What an acquisition asks for.
struct Request<'a> {
    cfg: &'a NetworkConfig,
    attrs: &'a LeaseAttrs,
    /// The attributes as stored.
    value: String,
    prev: Previous,
    ttl: Duration,
    /// The network has IPv6 and this host a public IPv6 address.
    want6: bool,
}

/// The etcd lease an acquisition hangs its key on: granted once, on first need, and kept
/// across lost races; revoked if the acquisition fails before a key uses it.
struct Grant<'r, R> {
    reg: &'r R,
    ttl: Duration,
    id: Option<i64>,
}

impl<R: Registry> Grant<'_, R> {
    async fn id(&mut self) -> Result<i64, StoreError> {
        match self.id {
            Some(id) => Ok(id),
            None => Ok(*self.id.insert(self.reg.grant(self.ttl).await?)),
        }
    }

    /// A key now hangs on the etcd lease: it is no longer ours to revoke.
    fn used(&mut self) {
        self.id = None;
    }
}

impl<R: Registry> Allocator<'_, R> {
    /// Acquires this host's lease, in flannel's order: the lease already holding
    /// `attrs.public_ip` if it still fits the config (its attributes are rewritten), else
    /// `prev.subnet` if free, else a random free subnet among the first 100 free ones.
    /// With IPv6 (the network has it and `attrs` carries a `PublicIPv6`) the IPv6 subnet is
    /// chosen the same way on its own: the reused lease's when it still fits, else
    /// `prev.subnet6`, else a random free one; a reused lease whose IPv6 part must change is
    /// moved to its new key in one transaction. A lost race re-reads the leases and retries.
    pub(in crate::store) async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        prev: Previous,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        if cfg.network.is_none() {
            return Err(StoreError::Options(
                "the network config has EnableIPv4 false; flannel's etcd layout needs an IPv4 subnet in every lease key"
                    .into(),
            ));
        }
        let req = Request {
            cfg,
            attrs,
            value: attrs.to_json(),
            prev,
            ttl,
            want6: attrs.public_ipv6.is_some() && cfg.ipv6_network.is_some(),
        };
        let mut grant = Grant {
            reg: self.reg,
            ttl,
            id: None,
        };
        let mut result = self.attempts(&req, &mut grant).await;
        if let Ok(lease) = result {
            result = self.unique_ipv6(cfg, lease, &req.value).await;
        }
        if let (Err(_), Some(id)) = (&result, grant.id) {
            self.revoke_quietly(id).await;
        }
        result
    }

    async fn attempts(
        &self,
        req: &Request<'_>,
        grant: &mut Grant<'_, R>,
    ) -> Result<Lease, StoreError> {
        for attempt in 1..=MAX_ATTEMPTS {
            let snap = Snapshot {
                entries: entries(self.reg, 0).await?.0,
            };
            let taken = snap.taken();
            let mut mine: Vec<&Lease> = snap
                .leases()
                .filter(|l| {
                    l.attrs.public_ip == req.attrs.public_ip && req.cfg.subnet_in_range(l.subnet)
                })
                .collect();
            // A reservation wins over an ordinary lease; then the newest.
            mine.sort_by_key(|l| (l.is_reservation(), l.mod_revision));
            let done = match mine.last() {
                Some(&old) => self.reuse(req, old, &mine, &taken, grant).await?,
                None => self.create(req, &taken, grant).await?,
            };
            if let Some(lease) = done {
                return Ok(lease);
            }
            debug!(attempt, "another host changed the leases first; retrying");
        }
        Err(StoreError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The IPv6 part of a reused lease: a reservation's is the operator's; an ordinary
    /// lease keeps its own while it fits, else gets one as a new host would.
    fn reused_subnet6(
        &self,
        req: &Request<'_>,
        old: &Lease,
        taken: &HashSet<IpNet>,
    ) -> Result<Option<Ipv6Net>, StoreError> {
        if old.is_reservation() {
            return Ok(old.subnet6);
        }
        if !req.want6 {
            return Ok(None);
        }
        match old.subnet6.filter(|s| req.cfg.subnet6_in_range(*s)) {
            Some(s) => Ok(Some(s)),
            None => choose(req.cfg, req.prev.subnet6, taken, self.pick).map(Some),
        }
    }

    /// Rewrites `old`, the newest lease holding this host's PublicIP, with this host's
    /// attributes; `None` when it changed meanwhile.
    async fn reuse(
        &self,
        req: &Request<'_>,
        old: &Lease,
        mine: &[&Lease],
        taken: &HashSet<IpNet>,
        grant: &mut Grant<'_, R>,
    ) -> Result<Option<Lease>, StoreError> {
        let subnet6 = self.reused_subnet6(req, old, taken)?;
        let lease_id = if old.is_reservation() {
            None
        } else {
            Some(grant.id().await?)
        };
        let new = Lease {
            subnet: old.subnet,
            subnet6,
            attrs: req.attrs.clone(),
            expiration: lease_id.map(|_| SystemTime::now() + req.ttl),
            etcd_lease_id: lease_id,
            mod_revision: 0,
        };
        let Some(rev) = self.write_over(old, &new, &req.value).await? else {
            debug!(subnet = %old.subnet, "own lease changed while reusing it");
            return Ok(None);
        };
        grant.used();
        // The key now hangs on the new etcd lease; the old ones would only linger.
        let stale = mine.iter().filter_map(|l| l.etcd_lease_id);
        for id in stale.filter(|id| Some(*id) != lease_id) {
            self.revoke_quietly(id).await;
        }
        info!(subnet = %old.subnet, ipv6_subnet = ?new.subnet6, reserved = old.is_reservation(), "reusing the lease held by {}", req.attrs.public_ip);
        Ok(Some(Lease {
            mod_revision: rev,
            ..new
        }))
    }

    /// Creates a lease on a subnet nobody holds; `None` when another host took it first.
    async fn create(
        &self,
        req: &Request<'_>,
        taken: &HashSet<IpNet>,
        grant: &mut Grant<'_, R>,
    ) -> Result<Option<Lease>, StoreError> {
        let choice: Ipv4Net = choose(req.cfg, req.prev.subnet, taken, self.pick)?;
        let choice6: Option<Ipv6Net> = if req.want6 {
            Some(choose(req.cfg, req.prev.subnet6, taken, self.pick)?)
        } else {
            None
        };
        let id = grant.id().await?;
        let key = self.reg.layout().subnet_key(choice, choice6);
        let Some(rev) = self.reg.create(&key, &req.value, Some(id)).await? else {
            debug!(subnet = %choice, "another host took the subnet first");
            return Ok(None);
        };
        grant.used();
        info!(subnet = %choice, ipv6_subnet = ?choice6, public_ip = %req.attrs.public_ip, "acquired a new lease");
        Ok(Some(Lease {
            subnet: choice,
            subnet6: choice6,
            attrs: req.attrs.clone(),
            expiration: Some(SystemTime::now() + req.ttl),
            etcd_lease_id: Some(id),
            mod_revision: rev,
        }))
    }

    /// Writes `new` over `old` if `old` is unchanged since it was read: in place when the key
    /// stays, else (the IPv6 part changed) moved to its new key in one transaction. The new
    /// revision, or `None` when `old` changed or the new key is taken.
    pub(super) async fn write_over(
        &self,
        old: &Lease,
        new: &Lease,
        value: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (old_key, new_key) = (self.key(old), self.key(new));
        if old_key != new_key {
            info!(old = %old_key, new = %new_key, "moving this host's lease to a new key (its IPv6 subnet changed)");
        }
        let old = (old_key.as_str(), old.mod_revision);
        self.reg
            .rewrite(old, &new_key, value, new.etcd_lease_id)
            .await
    }

    /// Makes sure no older lease has this lease's IPv6 subnet: two hosts starting at once can
    /// pick one IPv6 subnet under two keys. Each checks after writing; the newer of the two
    /// moves to another IPv6 subnet (one transaction, see [`Self::write_over`]), so the older
    /// keeps its own and peers, which program the older of two overlapping leases, never
    /// see a conflict for long.
    pub(super) async fn unique_ipv6(
        &self,
        cfg: &NetworkConfig,
        mut lease: Lease,
        value: &str,
    ) -> Result<Lease, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(s6) = lease.subnet6 else {
                return Ok(lease);
            };
            let snap = Snapshot {
                entries: entries(self.reg, 0).await?.0,
            };
            let others = snap.leases().filter(|l| l.subnet != lease.subnet);
            let mine = (lease.mod_revision, lease.key_name());
            let older = others
                .clone()
                .any(|l| l.subnet6 == Some(s6) && (l.mod_revision, l.key_name()) < mine);
            if !older || lease.is_reservation() {
                return Ok(lease);
            }
            let taken: HashSet<IpNet> = others
                .filter_map(|l| l.subnet6.map(IpNet::V6))
                .chain([IpNet::V6(s6)])
                .collect();
            let new = Lease {
                subnet6: Some(choose(cfg, None::<Ipv6Net>, &taken, self.pick)?),
                ..lease.clone()
            };
            warn!(subnet = %lease.subnet, taken = %s6, new = ?new.subnet6, "another host took the same IPv6 subnet first; moving to another");
            if let Some(rev) = self.write_over(&lease, &new, value).await? {
                lease = Lease {
                    mod_revision: rev,
                    ..new
                };
            }
        }
        Err(StoreError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }
}
