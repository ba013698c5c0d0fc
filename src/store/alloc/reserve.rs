//! An operator's changes to other hosts' leases: reservations (keys without an etcd lease,
//! which never expire) and revocations. Each write is guarded by what the operator saw, so a
//! host that changed its lease meanwhile keeps it, and each refusal says what to do instead.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::info;

use super::{not_in_network, Allocator, Snapshot};
use crate::lease::{Lease, LeaseAttrs, LeaseError};
use crate::store::registry::{Along, Deleted, Registry};
use crate::store::status::Reclaimed;
use crate::store::{read, StoreError};

/// Refuses a reservation that would give `public_ip` a second reservation, or `v6`'s subnet
/// to two keys.
fn refuse_conflicts(
    snap: &Snapshot,
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    v6: Option<(Ipv6Net, Ipv6Addr)>,
) -> Result<(), StoreError> {
    let mut leases = snap.leases();
    if let Some(other) = leases
        .clone()
        .find(|l| l.is_reservation() && l.attrs.public_ip == public_ip && l.subnet != subnet)
    {
        return Err(StoreError::AlreadyReserved {
            public_ip: public_ip.to_string(),
            subnet: other.subnet.to_string(),
        });
    }
    let Some((s6, _)) = v6 else { return Ok(()) };
    match leases.find(|l| l.subnet6 == Some(s6) && l.subnet != subnet) {
        Some(other) => Err(StoreError::SubnetTaken {
            subnet: s6.to_string(),
            public_ip: other.attrs.public_ip.to_string(),
        }),
        None => Ok(()),
    }
}

/// The key already on `subnet`: none, or the host's own lease (which becomes the
/// reservation); another host's lease, or a key that is no lease, is refused.
fn own_existing(
    snap: &Snapshot,
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
) -> Result<Option<&Lease>, StoreError> {
    let Some(e) = snap.entries.iter().find(|e| e.subnet == Some(subnet)) else {
        return Ok(None);
    };
    match &e.lease {
        Ok(l) if l.attrs.public_ip == public_ip => Ok(Some(l)),
        Ok(l) => Err(StoreError::SubnetTaken {
            subnet: subnet.to_string(),
            public_ip: l.attrs.public_ip.to_string(),
        }),
        Err(why) => Err(StoreError::Lease(LeaseError::Value {
            key: e.stored.key.clone(),
            why: why.clone(),
        })),
    }
}

/// The reservation: the host's own lease's attributes when it has one there, with the IPv6
/// part asked for (else the lease's).
fn reservation(
    old: Option<&Lease>,
    subnet: Ipv4Net,
    public_ip: Ipv4Addr,
    v6: Option<(Ipv6Net, Ipv6Addr)>,
) -> Lease {
    let mut attrs = LeaseAttrs {
        public_ip,
        public_ipv6: v6.map(|(_, ip)| ip),
        backend_type: String::new(),
        backend_data: None,
        backend_v6_data: None,
        weft_backends: None,
    };
    if let Some(l) = old {
        let keep = attrs.public_ipv6;
        attrs = l.attrs.clone();
        attrs.public_ipv6 = keep.or(attrs.public_ipv6);
    }
    Lease {
        subnet,
        subnet6: v6.map(|(s, _)| s).or(old.and_then(|l| l.subnet6)),
        attrs,
        expiration: None,
        etcd_lease_id: None,
        mod_revision: 0,
    }
}

impl<R: Registry> Allocator<'_, R> {
    /// Reserves `subnet` for `public_ip`. A lease already held by the same PublicIP becomes
    /// the reservation. `v6` adds an IPv6 subnet and public IPv6 address to it (a dual-stack
    /// key).
    pub(in crate::store) async fn add_reservation(
        &self,
        subnet: Ipv4Net,
        public_ip: Ipv4Addr,
        v6: Option<(Ipv6Net, Ipv6Addr)>,
    ) -> Result<(), StoreError> {
        if let Some(cfg) = read::config(self.reg).await? {
            not_in_network(&cfg, IpNet::V4(subnet))?;
            if let Some((s6, _)) = v6 {
                not_in_network(&cfg, IpNet::V6(s6))?;
            }
        }
        let snap = Snapshot {
            entries: read::entries(self.reg, 0).await?.0,
        };
        refuse_conflicts(&snap, subnet, public_ip, v6)?;
        let old = own_existing(&snap, subnet, public_ip)?;
        let new = reservation(old, subnet, public_ip, v6);
        let value = new.attrs.to_json();
        let done = match old {
            Some(old) => self.write_over(old, &new, &value).await?,
            None => self.reg.create(&self.key(&new), &value, None).await?,
        };
        if done.is_none() {
            return Err(StoreError::SubnetTaken {
                subnet: subnet.to_string(),
                public_ip: "another host (it changed while reserving)".into(),
            });
        }
        info!(%subnet, %public_ip, ipv6_subnet = ?new.subnet6, "reservation added");
        Ok(())
    }

    /// Deletes a reservation. `Ok(false)` when the subnet has no key; a lease that is not a
    /// reservation is refused and left alone.
    pub(in crate::store) async fn remove_reservation(
        &self,
        subnet: Ipv4Net,
    ) -> Result<bool, StoreError> {
        let Some(e) = read::find_entry(self.reg, subnet).await? else {
            return Ok(false);
        };
        if e.stored.lease.is_some() {
            return Err(StoreError::NotAReservation {
                subnet: subnet.to_string(),
                public_ip: e.public_ip(),
            });
        }
        let deleted = self
            .reg
            .delete_if_unchanged(&e.stored.key, e.stored.mod_revision, None)
            .await?;
        if deleted != Deleted::Done {
            return Err(StoreError::NotAReservation {
                subnet: subnet.to_string(),
                public_ip: "a host (it changed while removing)".into(),
            });
        }
        info!(%subnet, "reservation removed");
        Ok(true)
    }

    /// Revokes a subnet's lease: deletes exactly its key, and only if it has not changed
    /// since it was read, so a host that re-acquired the subnet meanwhile keeps it. Other
    /// keys on the same etcd lease stay; the etcd lease itself is revoked only once nothing
    /// hangs on it. `Ok(false)` when there is no lease; reservations are refused.
    pub(in crate::store) async fn revoke(&self, subnet: Ipv4Net) -> Result<bool, StoreError> {
        let Some(e) = read::find_entry(self.reg, subnet).await? else {
            return Ok(false);
        };
        let public_ip = e.public_ip();
        let Some(id) = e.stored.lease else {
            return Err(StoreError::IsReservation {
                subnet: subnet.to_string(),
                public_ip,
            });
        };
        let seen = (e.stored.key.as_str(), e.stored.mod_revision);
        self.delete_seen(subnet, seen, id, &public_ip).await
    }

    async fn delete_seen(
        &self,
        subnet: Ipv4Net,
        (key, mod_revision): (&str, i64),
        id: i64,
        public_ip: &str,
    ) -> Result<bool, StoreError> {
        match self
            .reg
            .delete_if_unchanged(key, mod_revision, None)
            .await?
        {
            Deleted::Gone => Ok(false),
            Deleted::Changed => Err(StoreError::LeaseChanged {
                subnet: subnet.to_string(),
                key: key.to_string(),
            }),
            Deleted::Done => {
                info!(%subnet, %public_ip, "lease revoked");
                self.revoke_if_unused(id).await;
                Ok(true)
            }
        }
    }

    /// Removes the lease of a gone host exactly as it was seen, with its gone mark, in one
    /// transaction that also checks its status record is still absent; reservations are
    /// refused. The etcd lease is revoked once no key hangs on it.
    pub(in crate::store) async fn reclaim(&self, lease: &Lease) -> Result<Reclaimed, StoreError> {
        let public_ip = lease.attrs.public_ip.to_string();
        let Some(id) = lease.etcd_lease_id else {
            return Err(StoreError::IsReservation {
                subnet: lease.subnet.to_string(),
                public_ip,
            });
        };
        let (layout, name) = (self.reg.layout(), lease.key_name());
        let (status, gone) = (layout.status_key(&name), layout.gone_key(&name));
        let along = Along {
            absent: &status,
            also: &gone,
        };
        let key = self.key(lease);
        let deleted = self
            .reg
            .delete_if_unchanged(&key, lease.mod_revision, Some(along))
            .await?;
        if deleted != Deleted::Done {
            return Ok(Reclaimed::Changed);
        }
        info!(subnet = %lease.subnet, %public_ip, "lease of a gone host reclaimed");
        self.revoke_if_unused(id).await;
        Ok(Reclaimed::Removed)
    }
}
