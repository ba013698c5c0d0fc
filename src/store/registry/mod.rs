//! The registry: etcd I/O and nothing else. [`Registry`] names the few primitives the
//! allocator decides with (read keys, etcd leases, guarded writes), so the decisions can be
//! tested against an in-memory registry; [`EtcdRegistry`] speaks them to etcd v3.

mod call;
mod connect;
mod etcd;
mod layout;
#[cfg(test)]
pub(super) mod memory;

use std::collections::HashMap;
use std::time::Duration;

pub(super) use call::{is_transient, status_code};
pub(super) use etcd::EtcdRegistry;
pub(super) use layout::Layout;

use super::StoreError;

/// A subnet key without its IPv6 part (`…/198.19.64.0-24&2001:db8::-64` → `…/198.19.64.0-24`):
/// what keys of one IPv4 subnet all start with.
fn subnet_part(key: &str) -> &str {
    key.split('&').next().unwrap_or(key)
}

/// One key as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    /// The etcd lease the key hangs on; `None` for a key that never expires.
    pub lease: Option<i64>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

/// The keys under a prefix at one revision.
#[derive(Debug, Clone, Default)]
pub(super) struct Listing {
    pub kvs: Vec<Stored>,
    pub revision: i64,
}

/// An etcd lease's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseTtl {
    /// Seconds left; -1 when the etcd lease is gone.
    pub remaining: i64,
    /// The TTL it was granted with.
    pub granted: i64,
    /// How many keys hang on it.
    pub keys: usize,
}

/// One renewal's answers, each on its own: the decision depends on which of them failed.
#[derive(Debug)]
pub(super) struct Refresh {
    /// `Ok(false)` when the etcd lease had expired or was revoked.
    pub alive: Result<bool, StoreError>,
    /// The renewed key as it is now.
    pub current: Result<Option<Stored>, StoreError>,
    pub ttl: Result<LeaseTtl, StoreError>,
}

/// What a guarded delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    Done,
    /// The key is there but changed (or a companion condition failed).
    Changed,
    Gone,
}

/// Keys that go with a guarded delete: it happens only while `absent` does not exist, and
/// `also` is deleted in the same transaction (a gone host's status record and mark).
#[derive(Debug, Clone, Copy)]
pub(super) struct Along<'a> {
    pub absent: &'a str,
    pub also: &'a str,
}

/// The primitives the allocator needs, with etcd's meaning: every write is one transaction
/// that either applies whole at a new revision (returned) or not at all (`None`).
pub(super) trait Registry {
    /// Where the network's keys live.
    fn layout(&self) -> &Layout;

    /// The keys under `prefix`, at `revision` (0: now).
    async fn list(&self, prefix: &str, revision: i64) -> Result<Listing, StoreError>;

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError>;

    /// A new etcd lease with `ttl` (at least a second); its id.
    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError>;

    /// Revokes an etcd lease, deleting every key on it.
    async fn revoke(&self, id: i64) -> Result<(), StoreError>;

    async fn time_to_live(&self, id: i64) -> Result<LeaseTtl, StoreError>;

    /// Remaining seconds of each etcd lease (-1 when gone).
    async fn ttls(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError>;

    /// Keeps etcd lease `id` alive once and reads back `key` and the lease's TTL, all at once.
    async fn refresh(&self, id: i64, key: &str) -> Refresh;

    /// Creates `key` if no key of the same IPv4 subnet exists (whatever its IPv6 part).
    async fn create(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;

    /// Writes `value` at `new_key` if `old`'s key is still at its revision. When the keys
    /// differ, `new_key` must be absent and the old key is deleted in the same transaction,
    /// the delete first, so no moment has both or neither.
    async fn rewrite(
        &self,
        old: (&str, i64),
        new_key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;

    /// Rewrites `key` in place while it exists on etcd lease `lease` (`None`: on none).
    async fn put_if_held(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;

    /// Deletes `key` if it is still at `mod_revision` (and `along` holds).
    async fn delete_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        along: Option<Along<'_>>,
    ) -> Result<Deleted, StoreError>;
}
