//! An in-memory registry for the allocator's tests, with the etcd semantics its decisions rest
//! on: one global revision, per-key mod revision and version, etcd leases whose expiry deletes
//! their keys, all-or-nothing guarded writes; and hooks that make races happen on purpose.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Barrier;

use super::{Along, Deleted, Layout, LeaseTtl, Listing, Refresh, Registry, Stored};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::store) struct Kv {
    pub value: Vec<u8>,
    pub lease: Option<i64>,
    pub mod_revision: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Copy)]
struct EtcdLease {
    granted: i64,
    remaining: i64,
}

/// A condition of a guarded write.
enum Cond<'a> {
    Absent(&'a str),
    /// No key starts with it.
    NoneUnder(&'a str),
    Present(&'a str),
    ModRevision(&'a str, i64),
    Lease(&'a str, Option<i64>),
}

enum Op<'a> {
    Put(&'a str, &'a str, Option<i64>),
    Delete(&'a str),
}

/// The keys and etcd leases, and every past revision's keys (for reads at a revision).
#[derive(Default)]
pub(in crate::store) struct State {
    pub revision: i64,
    pub keys: BTreeMap<String, Kv>,
    history: BTreeMap<i64, BTreeMap<String, Kv>>,
    leases: BTreeMap<i64, EtcdLease>,
    next_lease: i64,
    /// Guarded writes whose conditions failed (lost races).
    pub refused: usize,
}

fn refused(op: &str, status: tonic::Status) -> StoreError {
    StoreError::Etcd {
        endpoints: "memory".into(),
        op: op.into(),
        source: etcd_client::Error::GRpcStatus(status),
    }
}

impl State {
    fn holds(&self, c: &Cond) -> bool {
        // etcd compares an absent key as version 0, mod revision 0 and no lease.
        let kv = |k: &str| self.keys.get(k);
        match *c {
            Cond::Absent(k) => kv(k).is_none(),
            Cond::NoneUnder(p) => !self.keys.keys().any(|k| k.starts_with(p)),
            Cond::Present(k) => kv(k).is_some(),
            Cond::ModRevision(k, rev) => kv(k).map_or(0, |kv| kv.mod_revision) == rev,
            Cond::Lease(k, id) => kv(k).and_then(|kv| kv.lease) == id,
        }
    }

    /// Applies `ops` at one new revision; a put on an unknown etcd lease fails whole.
    fn commit(&mut self, ops: &[Op]) -> Result<i64, StoreError> {
        for op in ops {
            if let Op::Put(k, _, Some(id)) = op {
                if !self.leases.contains_key(id) {
                    let why = tonic::Status::not_found("etcdserver: requested lease not found");
                    return Err(refused(&format!("put {k}"), why));
                }
            }
        }
        self.revision += 1;
        for op in ops {
            match *op {
                Op::Put(k, v, lease) => {
                    let version = self.keys.get(k).map_or(0, |kv| kv.version) + 1;
                    let kv = Kv {
                        value: v.as_bytes().to_vec(),
                        lease,
                        mod_revision: self.revision,
                        version,
                    };
                    self.keys.insert(k.to_string(), kv);
                }
                Op::Delete(k) => {
                    self.keys.remove(k);
                }
            }
        }
        self.history.insert(self.revision, self.keys.clone());
        Ok(self.revision)
    }

    /// Writes a key as another writer would (a host, an operator, flannel).
    pub(in crate::store) fn put(&mut self, key: &str, value: &str, lease: Option<i64>) -> i64 {
        self.commit(&[Op::Put(key, value, lease)])
            .expect("a put on a live etcd lease")
    }

    pub(in crate::store) fn delete(&mut self, key: &str) -> i64 {
        self.commit(&[Op::Delete(key)]).expect("a delete")
    }

    pub(in crate::store) fn grant(&mut self, secs: i64) -> i64 {
        self.next_lease += 1;
        let id = 0x7000 + self.next_lease;
        let lease = EtcdLease {
            granted: secs,
            remaining: secs,
        };
        self.leases.insert(id, lease);
        id
    }

    /// Ends an etcd lease and deletes its keys, as revocation and expiry do.
    pub(in crate::store) fn end_lease(&mut self, id: i64) -> bool {
        if self.leases.remove(&id).is_none() {
            return false;
        }
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, kv)| kv.lease == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        if !keys.is_empty() {
            let ops: Vec<Op> = keys.iter().map(|k| Op::Delete(k)).collect();
            self.commit(&ops).expect("deletes always apply");
        }
        true
    }

    /// Time passes: etcd leases not kept alive meanwhile expire.
    pub(in crate::store) fn advance(&mut self, by: Duration) {
        let secs = by.as_secs() as i64;
        for l in self.leases.values_mut() {
            l.remaining -= secs;
        }
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.remaining <= 0)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_lease(id);
        }
    }

    pub(in crate::store) fn live_leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    fn ttl(&self, id: i64) -> LeaseTtl {
        match self.leases.get(&id) {
            Some(l) => LeaseTtl {
                remaining: l.remaining,
                granted: l.granted,
                keys: self.keys.values().filter(|kv| kv.lease == Some(id)).count(),
            },
            None => LeaseTtl {
                remaining: -1,
                granted: 0,
                keys: 0,
            },
        }
    }

    fn stored(&self, key: &str) -> Option<Stored> {
        self.keys.get(key).map(|kv| stored(key, kv))
    }

    fn list(&self, prefix: &str, revision: i64) -> Result<Listing, StoreError> {
        let op = format!("list {prefix}");
        let keys = match revision {
            0 => &self.keys,
            r if r > self.revision => {
                return Err(refused(&op, tonic::Status::out_of_range("future revision")))
            }
            r => match self.history.range(..=r).next_back() {
                Some((_, keys)) => keys,
                None => return Err(refused(&op, tonic::Status::out_of_range("compacted"))),
            },
        };
        Ok(Listing {
            kvs: keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, kv)| stored(k, kv))
                .collect(),
            revision: self.revision,
        })
    }
}

fn stored(key: &str, kv: &Kv) -> Stored {
    Stored {
        key: key.to_string(),
        value: kv.value.clone(),
        lease: kv.lease,
        mod_revision: kv.mod_revision,
    }
}

type Hook = Box<dyn FnMut(&mut State, &str) + Send>;
/// A barrier for listings, and how many more listings it holds.
type Gate = Option<(Arc<Barrier>, usize)>;

/// The registry; clones share one state, like two hosts' clients of one etcd.
#[derive(Clone)]
pub(in crate::store) struct MemRegistry {
    layout: Layout,
    state: Arc<Mutex<State>>,
    /// Listings held until this many have arrived.
    gate: Arc<Mutex<Gate>>,
    /// Runs just before each guarded write, with the key it writes.
    before_write: Arc<Mutex<Option<Hook>>>,
    unreachable: Arc<Mutex<bool>>,
}

impl MemRegistry {
    pub(in crate::store) fn new() -> MemRegistry {
        MemRegistry {
            layout: Layout::new("/coreos.com/network"),
            state: Arc::default(),
            gate: Arc::default(),
            before_write: Arc::default(),
            unreachable: Arc::default(),
        }
    }

    pub(in crate::store) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the state lock")
    }

    /// The next `n` listings wait for each other before they return, so `n` allocators
    /// act on the same leases.
    pub(in crate::store) fn hold_lists(&self, n: usize) {
        *self.gate.lock().expect("the gate lock") = Some((Arc::new(Barrier::new(n)), n));
    }

    /// Runs `f` just before every guarded write from now on, with the key it writes.
    pub(in crate::store) fn before_write(&self, f: impl FnMut(&mut State, &str) + Send + 'static) {
        *self.before_write.lock().expect("the hook lock") = Some(Box::new(f));
    }

    /// Runs `f` just before the next guarded write only.
    pub(in crate::store) fn before_next_write(
        &self,
        f: impl FnOnce(&mut State, &str) + Send + 'static,
    ) {
        let mut f = Some(f);
        self.before_write(move |s, k| {
            if let Some(f) = f.take() {
                f(s, k);
            }
        });
    }

    /// Every call fails as if etcd could not be reached.
    pub(in crate::store) fn set_unreachable(&self, down: bool) {
        *self.unreachable.lock().expect("the flag lock") = down;
    }

    fn reach(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        if *self.unreachable.lock().expect("the flag lock") {
            return Err(StoreError::Unreachable {
                endpoints: "memory".into(),
                why: "switched off by the test".into(),
            });
        }
        Ok(self.state())
    }

    async fn pass_gate(&self) {
        let barrier = {
            let mut gate = self.gate.lock().expect("the gate lock");
            let held = gate.as_mut().map(|(b, left)| {
                *left -= 1;
                (b.clone(), *left == 0)
            });
            if held.as_ref().is_some_and(|(_, last)| *last) {
                *gate = None;
            }
            held.map(|(b, _)| b)
        };
        if let Some(b) = barrier {
            b.wait().await;
        }
    }

    /// A guarded write of `key`: `ops` apply at a new revision if every condition holds.
    fn txn(&self, key: &str, conds: &[Cond], ops: &[Op]) -> Result<Option<i64>, StoreError> {
        let mut state = self.reach()?;
        if let Some(hook) = self.before_write.lock().expect("the hook lock").as_mut() {
            hook(&mut state, key);
        }
        if !conds.iter().all(|c| state.holds(c)) {
            state.refused += 1;
            return Ok(None);
        }
        state.commit(ops).map(Some)
    }
}

impl Registry for MemRegistry {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    async fn list(&self, prefix: &str, revision: i64) -> Result<Listing, StoreError> {
        // Read, then wait: whoever the barrier lets go first must not change what the
        // others have read.
        let listing = self.reach()?.list(prefix, revision);
        self.pass_gate().await;
        listing
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self.reach()?.stored(key))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        Ok(self.reach()?.grant(ttl.as_secs().max(1) as i64))
    }

    async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        match self.reach()?.end_lease(id) {
            true => Ok(()),
            false => Err(refused(
                &format!("revoke etcd lease {id:x}"),
                tonic::Status::not_found("etcdserver: requested lease not found"),
            )),
        }
    }

    async fn time_to_live(&self, id: i64) -> Result<LeaseTtl, StoreError> {
        Ok(self.reach()?.ttl(id))
    }

    async fn ttls(&self, ids: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        let state = self.reach()?;
        Ok(ids
            .iter()
            .map(|id| (*id, state.ttl(*id).remaining))
            .collect())
    }

    async fn refresh(&self, id: i64, key: &str) -> Refresh {
        let mut state = match self.reach() {
            Ok(s) => s,
            Err(e) => {
                let again = || self.reach().err().expect("still unreachable");
                return Refresh {
                    alive: Err(e),
                    current: Err(again()),
                    ttl: Err(again()),
                };
            }
        };
        let alive = match state.leases.get_mut(&id) {
            Some(l) => {
                l.remaining = l.granted;
                true
            }
            None => false,
        };
        Refresh {
            alive: Ok(alive),
            current: Ok(state.stored(key)),
            ttl: Ok(state.ttl(id)),
        }
    }

    async fn create(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let subnet = Cond::NoneUnder(super::subnet_part(key));
        self.txn(key, &[subnet], &[Op::Put(key, value, lease)])
    }

    async fn rewrite(
        &self,
        (old_key, old_revision): (&str, i64),
        new_key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut conds = vec![Cond::ModRevision(old_key, old_revision)];
        let mut ops = Vec::new();
        if old_key != new_key {
            conds.push(Cond::Absent(new_key));
            ops.push(Op::Delete(old_key));
        }
        ops.push(Op::Put(new_key, value, lease));
        self.txn(new_key, &conds, &ops)
    }

    async fn put_if_held(
        &self,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let conds = [Cond::Present(key), Cond::Lease(key, lease)];
        self.txn(key, &conds, &[Op::Put(key, value, lease)])
    }

    async fn delete_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        along: Option<Along<'_>>,
    ) -> Result<Deleted, StoreError> {
        let mut conds = vec![Cond::ModRevision(key, mod_revision)];
        let mut ops = vec![Op::Delete(key)];
        if let Some(a) = along {
            conds.push(Cond::Absent(a.absent));
            ops.push(Op::Delete(a.also));
        }
        if self.txn(key, &conds, &ops)?.is_some() {
            return Ok(Deleted::Done);
        }
        Ok(match self.state().keys.contains_key(key) {
            true => Deleted::Changed,
            false => Deleted::Gone,
        })
    }
}
