//! Keeping this host's lease: renewal keeps its one etcd lease alive (no new etcd lease per
//! renewal) and tells the agent when the lease is gone (re-acquire) or became a reservation
//! (keep it, without expiry).

use std::time::{Duration, SystemTime};

use tracing::{debug, info};

use super::Allocator;
use crate::lease::{Lease, LeaseAttrs};
use crate::store::registry::{Registry, Stored};
use crate::store::StoreError;

fn gone(lease: &Lease, why: &str) -> StoreError {
    StoreError::LeaseGone {
        subnet: lease.subnet.to_string(),
        why: why.to_string(),
    }
}

impl<R: Registry> Allocator<'_, R> {
    /// Renews a lease. `LeaseGone` when the key or the etcd lease has vanished: the caller
    /// re-acquires. A lease an operator turned into a reservation comes back as that
    /// reservation. The etcd lease is refreshed to the TTL it was granted with (`ttl` is
    /// logged if it differs; a new TTL takes effect at the next acquisition).
    pub(in crate::store) async fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let key = self.key(lease);
        let Some(id) = lease.etcd_lease_id else {
            return self.renew_reservation(lease, &key).await;
        };
        let answers = self.reg.refresh(id, &key).await;
        let current = answers.current?;
        if !answers.alive? {
            return Err(gone(lease, "its etcd lease expired or was revoked"));
        }
        let Some(kv) = current else {
            self.revoke_quietly(id).await;
            return Err(gone(lease, "the key was deleted"));
        };
        if kv.lease != Some(id) {
            self.revoke_quietly(id).await;
            return self.taken_over(lease, &kv);
        }
        let granted = answers.ttl?.granted.max(0) as u64;
        if granted != ttl.as_secs() {
            debug!(
                granted,
                wanted = ttl.as_secs(),
                "etcd lease keeps its granted TTL until the next acquisition"
            );
        }
        Ok(Lease {
            expiration: Some(SystemTime::now() + Duration::from_secs(granted)),
            mod_revision: kv.mod_revision,
            ..lease.clone()
        })
    }

    /// A reservation needs no keep-alive; it is still this host's while its key is there
    /// without an etcd lease.
    async fn renew_reservation(&self, lease: &Lease, key: &str) -> Result<Lease, StoreError> {
        let kv = self
            .reg
            .get(key)
            .await?
            .ok_or_else(|| gone(lease, "the reservation was removed"))?;
        if kv.lease.is_some() {
            return Err(gone(
                lease,
                "the reservation was replaced by an expiring lease",
            ));
        }
        Ok(Lease {
            mod_revision: kv.mod_revision,
            ..lease.clone()
        })
    }

    /// The key hangs on another etcd lease now: an operator reserved it for this host (it is
    /// a reservation now), or another host holds it.
    fn taken_over(&self, lease: &Lease, kv: &Stored) -> Result<Lease, StoreError> {
        let now_reserved = kv.lease.is_none()
            && LeaseAttrs::from_json(&kv.key, &kv.value)
                .is_ok_and(|a| a.public_ip == lease.attrs.public_ip);
        if !now_reserved {
            return Err(gone(lease, "the key now belongs to another etcd lease"));
        }
        info!(subnet = %lease.subnet, "the lease was turned into a reservation");
        Ok(Lease {
            expiration: None,
            etcd_lease_id: None,
            mod_revision: kv.mod_revision,
            ..lease.clone()
        })
    }

    /// Rewrites a lease's value, keeping its etcd lease (e.g. after the VTEP MAC changed).
    pub(in crate::store) async fn update_attrs(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, StoreError> {
        let key = self.key(lease);
        let written = self
            .reg
            .put_if_held(&key, &attrs.to_json(), lease.etcd_lease_id)
            .await?;
        match written {
            Some(rev) => Ok(Lease {
                attrs: attrs.clone(),
                mod_revision: rev,
                ..lease.clone()
            }),
            None => Err(gone(lease, "the key was deleted or taken over")),
        }
    }
}
