//! weft's own keys, next to flannel's and out of its way: host status records at
//! `<prefix>/weft/status/<lease key name>` on each host's short liveness lease, gone marks at
//! `<prefix>/weft/gone/<lease key name>` on the dead host's subnet lease. flannel reads only
//! `<prefix>/config` and `<prefix>/subnets/`, so neither ever reaches it.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions, WatchStream,
};

use super::alloc::Allocator;
use super::registry::Registry;
use super::{EtcdStore, StoreError};
use crate::lease::Lease;

/// The raw values under `<prefix>/weft/` at one revision, by lease key name.
#[derive(Debug, Clone, Default)]
pub struct WeftKeys {
    pub status: Vec<(String, Vec<u8>)>,
    pub gone: Vec<(String, Vec<u8>)>,
    /// Keys under the prefix that are neither (a newer weft's, or stray).
    pub other: Vec<String>,
    pub revision: i64,
}

/// What a reclaim did with one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaimed {
    Removed,
    /// The lease was renewed, rewritten or taken meanwhile, or its host came back.
    Changed,
}

impl EtcdStore {
    pub fn weft_prefix(&self) -> String {
        self.registry().layout().weft_prefix()
    }

    pub fn status_prefix(&self) -> String {
        self.registry().layout().status_prefix()
    }

    pub fn status_key(&self, name: &str) -> String {
        self.registry().layout().status_key(name)
    }

    pub fn gone_key(&self, name: &str) -> String {
        self.registry().layout().gone_key(name)
    }

    /// A fresh etcd lease for this host's status record.
    pub async fn grant_liveness(&self, ttl: Duration) -> Result<i64, StoreError> {
        self.registry().grant(ttl).await
    }

    /// A keep-alive stream for an etcd lease; each `keep_alive` is one message, not a write.
    pub async fn keep_alive_stream(
        &self,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), StoreError> {
        let mut c = self.registry().client();
        self.registry()
            .timed(
                format!("keep etcd lease {id:x} alive"),
                c.lease_keep_alive(id),
            )
            .await
    }

    /// Writes this host's record on `lease` and, in the same transaction, removes a gone mark
    /// of the same name and the record under a name it no longer has (`old`).
    pub async fn put_status(
        &self,
        name: &str,
        json: &str,
        lease: i64,
        old: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = self.status_key(name);
        let mut ops = vec![
            TxnOp::put(
                key.as_str(),
                json,
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::delete(self.gone_key(name), None),
        ];
        if let Some(old) = old.filter(|o| *o != name) {
            ops.push(TxnOp::delete(self.status_key(old), None));
        }
        let mut c = self.registry().client();
        self.registry()
            .timed(format!("put {key}"), c.txn(Txn::new().and_then(ops)))
            .await?;
        Ok(())
    }

    /// Marks the host of lease key `name` gone, unless a mark is there already, its record
    /// came back, or its subnet lease is gone. The mark lives on the subnet's etcd lease, so
    /// it goes when the subnet does. `Ok(true)` when this call wrote it.
    pub async fn mark_gone(&self, name: &str, json: &str) -> Result<bool, StoreError> {
        let reg = self.registry();
        let subnet_key = format!("{}{name}", reg.layout().subnets_prefix());
        let Some(kv) = reg.get(&subnet_key).await? else {
            return Ok(false);
        };
        let opts = kv.lease.map(|id| PutOptions::new().with_lease(id));
        let gone = self.gone_key(name);
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(subnet_key.as_str(), CompareOp::Equal, kv.mod_revision),
                Compare::version(self.status_key(name), CompareOp::Equal, 0),
                Compare::version(gone.as_str(), CompareOp::Equal, 0),
            ])
            .and_then(vec![TxnOp::put(gone.as_str(), json, opts)]);
        let mut c = reg.client();
        let resp = reg.timed(format!("put {gone}"), c.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// Whether the host of lease key `name` is marked gone.
    pub async fn is_marked_gone(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.registry().get(&self.gone_key(name)).await?.is_some())
    }

    /// The status record of the host of lease key `name`, as stored.
    pub async fn get_status(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = self.registry().get(&self.status_key(name)).await?;
        Ok(stored.map(|s| s.value))
    }

    /// Every key under `<prefix>/weft/`, in one read.
    pub async fn list_weft(&self) -> Result<WeftKeys, StoreError> {
        let listing = self.registry().list(&self.weft_prefix(), 0).await?;
        let mut keys = WeftKeys {
            revision: listing.revision,
            ..WeftKeys::default()
        };
        let (status, gone) = (self.status_prefix(), self.registry().layout().gone_prefix());
        for kv in listing.kvs {
            if let Some(name) = kv.key.strip_prefix(&status) {
                keys.status.push((name.to_string(), kv.value));
            } else if let Some(name) = kv.key.strip_prefix(&gone) {
                keys.gone.push((name.to_string(), kv.value));
            } else {
                keys.other.push(kv.key);
            }
        }
        Ok(keys)
    }

    /// Watches the status records vanishing after `revision` (0: from now). Deletes only:
    /// etcd filters the puts out before it sends anything, so no host receives another's
    /// record updates.
    pub async fn watch_status(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let prefix = self.status_prefix();
        let mut opts = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]);
        if revision > 0 {
            opts = opts.with_start_revision(revision + 1);
        }
        let mut c = self.registry().client();
        self.registry()
            .timed(
                format!("watch {prefix}"),
                c.watch(prefix.as_str(), Some(opts)),
            )
            .await
    }

    /// Removes the lease of a gone host exactly as it was seen, with its gone mark, in one
    /// transaction that also checks its status record is still absent; reservations are
    /// refused. The etcd lease is revoked once no key hangs on it.
    pub async fn reclaim(&self, lease: &Lease) -> Result<Reclaimed, StoreError> {
        Allocator::new(self.registry()).reclaim(lease).await
    }
}
