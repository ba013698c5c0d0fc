//! The registry on etcd v3: each primitive is one request under a deadline (a guarded write
//! is one transaction). Only renewal's reads are sent again to another member when one fails:
//! they are idempotent, and a host must not lose its lease to one member's outage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};

use super::Layout;
use super::{Along, Deleted, LeaseTtl, Listing, Refresh, Registry, Stored};
use crate::store::endpoints::EndpointHealth;
use crate::store::StoreError;

/// TTL lookups in flight at once when listing.
const TTL_CONCURRENCY: usize = 128;

#[derive(Clone)]
pub(in crate::store) struct EtcdRegistry {
    pub(super) client: Client,
    pub(super) layout: Layout,
    /// The endpoints as given, for messages.
    pub(super) endpoints: String,
    /// Who etcd sees us as, for messages: `user "weft"`, or the client certificate's CN.
    pub(super) user: String,
    /// How long one etcd request may take before it counts as failed.
    pub(super) op_timeout: Duration,
    /// With several endpoints: keeps requests on the members that answer.
    pub(super) health: Option<Arc<EndpointHealth>>,
}

impl From<&KeyValue> for Stored {
    fn from(kv: &KeyValue) -> Stored {
        Stored {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// The new revision of a transaction that applied.
fn applied(resp: &TxnResponse) -> Option<i64> {
    resp.succeeded()
        .then(|| resp.header().map(|h| h.revision()).unwrap_or(0))
}

fn with_lease(lease: Option<i64>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

impl EtcdRegistry {
    pub(in crate::store) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(in crate::store) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// True when etcd refuses this client a read of the leases (permission or
    /// authentication), as opposed to answering or being unreachable.
    pub(in crate::store) async fn may_not_read_subnets(&self) -> bool {
        let prefix = self.layout.subnets_prefix();
        let mut c = self.client();
        let count = Some(GetOptions::new().with_prefix().with_count_only());
        let read = self.timed(format!("count {prefix}"), c.get(prefix.clone(), count));
        matches!(
            read.await,
            Err(StoreError::PermissionDenied { .. } | StoreError::AuthFailed { .. })
        )
    }

    /// Writes `value` at `key`, unconditionally and on no etcd lease.
    pub(in crate::store) async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut c = self.client();
        self.timed(format!("put {key}"), c.put(key, value, None))
            .await?;
        Ok(())
    }

    async fn txn(&self, op: String, txn: Txn) -> Result<TxnResponse, StoreError> {
        let mut c = self.client();
        self.timed(op, c.txn(txn)).await
    }

    /// The three reads of a renewal, each sent again to another member if one fails.
    async fn refresh_parts(&self, id: i64, key: &str) -> Refresh {
        let (alive, current, ttl) = tokio::join!(
            self.timed_resent(format!("keep-alive etcd lease {id:x}"), || {
                let mut c = self.client();
                async move { c.lease_keep_alive(id).await }
            }),
            self.timed_resent(format!("get {key}"), || {
                let (mut c, key) = (self.client(), key.to_string());
                async move { c.get(key, None).await }
            }),
            self.timed_resent(format!("time-to-live of etcd lease {id:x}"), || {
                let mut c = self.client();
                async move { c.lease_time_to_live(id, None).await }
            }),
        );
        Refresh {
            alive: match alive {
                Ok(_) => Ok(true),
                Err(StoreError::Etcd {
                    source: etcd_client::Error::LeaseKeepAliveError(_),
                    ..
                }) => Ok(false),
                Err(e) => Err(e),
            },
            current: current.map(|r| r.kvs().first().map(Stored::from)),
            ttl: ttl.map(|r| LeaseTtl {
                remaining: r.ttl(),
                granted: r.granted_ttl(),
                keys: 0,
            }),
        }
    }
}

impl Registry for EtcdRegistry {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    async fn list(&self, prefix: &str, revision: i64) -> Result<Listing, StoreError> {
        let mut opts = GetOptions::new().with_prefix();
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let mut c = self.client();
        let resp = self
            .timed(format!("list {prefix}"), c.get(prefix, Some(opts)))
            .await?;
        Ok(Listing {
            kvs: resp.kvs().iter().map(Stored::from).collect(),
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let mut c = self.client();
        let resp = self.timed(format!("get {key}"), c.get(key, None)).await?;
        Ok(resp.kvs().first().map(Stored::from))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let mut c = self.client();
        let resp = self
            .timed("grant etcd lease", c.lease_grant(secs, None))
            .await?;
        Ok(resp.id())
    }

    async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        let mut c = self.client();
        self.timed(format!("revoke etcd lease {id:x}"), c.lease_revoke(id))
            .await?;
        Ok(())
    }

    async fn time_to_live(&self, id: i64) -> Result<LeaseTtl, StoreError> {
        let mut c = self.client();
        let with_keys = Some(LeaseTimeToLiveOptions::new().with_keys());
        let r = self
            .timed(
                format!("keys of etcd lease {id:x}"),
                c.lease_time_to_live(id, with_keys),
            )
            .await?;
        Ok(LeaseTtl {
            remaining: r.ttl(),
            granted: r.granted_ttl(),
            keys: r.keys().len(),
        })
    }

    /// Looked up concurrently, in a sliding window: a new lookup starts as soon as one
    /// finishes, so a slow answer never holds up the rest of a batch.
    async fn ttls(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        let mut out = HashMap::new();
        let unique: HashSet<i64> = ids.iter().copied().collect();
        let mut pending = unique.into_iter();
        let mut set = tokio::task::JoinSet::new();
        loop {
            while set.len() < TTL_CONCURRENCY {
                let Some(id) = pending.next() else { break };
                let mut lc = self.client.lease_client();
                let t = self.op_timeout;
                set.spawn(
                    async move { (id, tokio::time::timeout(t, lc.time_to_live(id, None)).await) },
                );
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let Ok((id, res)) = joined else { continue };
            let op = || format!("time-to-live of etcd lease {id:x}");
            match res {
                Ok(Ok(r)) => {
                    out.insert(id, r.ttl());
                }
                Ok(Err(source)) => return Err(self.etcd_error(op(), source)),
                Err(_) => {
                    return Err(StoreError::Timeout {
                        endpoints: self.endpoints.clone(),
                        op: op(),
                        secs: self.op_timeout.as_secs(),
                    })
                }
            }
        }
        Ok(out)
    }

    async fn refresh(&self, id: i64, key: &str) -> Refresh {
        self.refresh_parts(id, key).await
    }

    async fn create(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        // No key of the same IPv4 subnet at all: a dual-stack key differs by its IPv6 part,
        // and two hosts must never both create one for the same subnet.
        let subnet = super::subnet_part(key);
        let txn = Txn::new()
            .when(vec![
                Compare::version(subnet, CompareOp::Equal, 0).with_prefix()
            ])
            .and_then(vec![TxnOp::put(key, value, with_lease(lease))]);
        Ok(applied(&self.txn(format!("put {key}"), txn).await?))
    }

    async fn rewrite(
        &self,
        (old_key, old_revision): (&str, i64),
        new_key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut when = vec![Compare::mod_revision(
            old_key,
            CompareOp::Equal,
            old_revision,
        )];
        let mut ops = Vec::new();
        if old_key != new_key {
            when.push(Compare::version(new_key, CompareOp::Equal, 0));
            // The delete goes first so a watcher sees the old key leave before the new one
            // arrives.
            ops.push(TxnOp::delete(old_key, None));
        }
        ops.push(TxnOp::put(new_key, value, with_lease(lease)));
        let txn = Txn::new().when(when).and_then(ops);
        Ok(applied(&self.txn(format!("put {new_key}"), txn).await?))
    }

    async fn put_if_held(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let when = vec![
            Compare::version(key, CompareOp::Greater, 0),
            Compare::lease(key, CompareOp::Equal, lease.unwrap_or(0)),
        ];
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key, value, with_lease(lease))]);
        Ok(applied(&self.txn(format!("put {key}"), txn).await?))
    }

    async fn delete_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        along: Option<Along<'_>>,
    ) -> Result<Deleted, StoreError> {
        let mut when = vec![Compare::mod_revision(key, CompareOp::Equal, mod_revision)];
        let mut ops = vec![TxnOp::delete(key, None)];
        if let Some(a) = along {
            when.push(Compare::version(a.absent, CompareOp::Equal, 0));
            ops.push(TxnOp::delete(a.also, None));
        }
        // On failure, whether the key is still there tells "changed" from "gone".
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.txn(format!("delete {key}"), txn).await?;
        if resp.succeeded() {
            return Ok(Deleted::Done);
        }
        let present = resp
            .op_responses()
            .iter()
            .any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
        Ok(if present {
            Deleted::Changed
        } else {
            Deleted::Gone
        })
    }
}
