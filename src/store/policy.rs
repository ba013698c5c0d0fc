//! Network policy's keys, under weft's own prefix where flannel never reads:
//! `<prefix>/weft/policy/policies/<namespace>/<name>` (a policy document, written by
//! `weftctl`), `.../namespaces/<name>` (a namespace's labels) and `.../workloads/<address>`
//! (one container, written by the weftd of its host on that weftd's own etcd lease, so it
//! goes with the host). Every weftd watches the prefix; that watch is the only fan-out.

use std::time::Duration;

use etcd_client::{DeleteOptions, PutOptions, WatchOptions, WatchStream};

use super::registry::Registry;
use super::{EtcdStore, StoreError};

/// Which kind of key under the policy prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKey {
    Policy,
    Namespace,
    Workload,
}

impl PolicyKey {
    fn dir(self) -> &'static str {
        match self {
            PolicyKey::Policy => "policies/",
            PolicyKey::Namespace => "namespaces/",
            PolicyKey::Workload => "workloads/",
        }
    }
}

/// The keys under the policy prefix at one revision: (kind, name below the kind's dir,
/// value). Keys of no known kind are left out.
#[derive(Debug, Clone, Default)]
pub struct PolicyKeys {
    pub keys: Vec<(PolicyKey, String, Vec<u8>)>,
    pub revision: i64,
}

impl EtcdStore {
    pub fn policy_prefix(&self) -> String {
        self.registry().layout().policy_prefix()
    }

    pub fn policy_key(&self, kind: PolicyKey, name: &str) -> String {
        format!("{}{}{name}", self.policy_prefix(), kind.dir())
    }

    /// What a full key under the policy prefix is: its kind and name.
    pub fn parse_policy_key(&self, key: &str) -> Option<(PolicyKey, String)> {
        let rest = key.strip_prefix(&self.policy_prefix())?;
        [PolicyKey::Policy, PolicyKey::Namespace, PolicyKey::Workload]
            .into_iter()
            .find_map(|k| Some((k, rest.strip_prefix(k.dir())?.to_string())))
    }

    /// Every key under the policy prefix (or only `kind`'s), in one read.
    pub async fn list_policy(&self, kind: Option<PolicyKey>) -> Result<PolicyKeys, StoreError> {
        let prefix = match kind {
            Some(k) => format!("{}{}", self.policy_prefix(), k.dir()),
            None => self.policy_prefix(),
        };
        let listing = self.registry().list(&prefix, 0).await?;
        let mut out = PolicyKeys {
            revision: listing.revision,
            ..PolicyKeys::default()
        };
        for kv in listing.kvs {
            if let Some((kind, name)) = self.parse_policy_key(&kv.key) {
                out.keys.push((kind, name, kv.value));
            }
        }
        Ok(out)
    }

    /// Writes a key under the policy prefix, on `lease` when given.
    pub async fn put_policy_key(
        &self,
        kind: PolicyKey,
        name: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let key = self.policy_key(kind, name);
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        let mut c = self.registry().client();
        self.registry()
            .timed(format!("put {key}"), c.put(key.as_str(), value, opts))
            .await?;
        Ok(())
    }

    /// Deletes a key under the policy prefix; whether it existed.
    pub async fn delete_policy_key(&self, kind: PolicyKey, name: &str) -> Result<bool, StoreError> {
        let key = self.policy_key(kind, name);
        let mut c = self.registry().client();
        let resp = self
            .registry()
            .timed(
                format!("delete {key}"),
                c.delete(key.as_str(), None::<DeleteOptions>),
            )
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Watches the policy prefix after `revision`.
    pub async fn watch_policy(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let prefix = self.policy_prefix();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_prev_key();
        let mut c = self.registry().client();
        self.registry()
            .timed(
                format!("watch {prefix}"),
                c.watch(prefix.as_str(), Some(opts)),
            )
            .await
    }

    /// A fresh etcd lease for this host's workload records.
    pub async fn grant_workload_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        self.registry().grant(ttl).await
    }
}
