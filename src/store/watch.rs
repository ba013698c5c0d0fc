//! Turns etcd's watch of `<prefix>/subnets/` into typed lease events. The watcher keeps a
//! cache of the leases it has reported, so removals carry their attributes, a compacted
//! revision becomes a re-list that reports exactly the difference, and a dropped connection
//! resumes after the last revision it delivered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tracing::{info, warn};

use tonic::Code;

use super::decode::{outside_network, Entry, LeaseList, SkippedLease};
use super::registry::{status_code, EtcdRegistry, Registry, Stored};
use super::{read, StoreError};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseEvent};

/// A delete this close to (or after) the cached expiration counts as an expiry. Cached
/// expirations come from whole-second TTLs, so they are at most a second early, and etcd
/// deletes an expired key within about half a second: an expiry always lands after them.
const EXPIRY_SLACK: Duration = Duration::from_millis(500);
/// How long before a cached expiration its TTL is looked up again (a renewal moves it).
const CHECK_LEAD: Duration = Duration::from_secs(1);
/// How often a key still there after its expiration has its TTL looked up again.
const REFRESH_DELAY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A running watch of all leases. Reconnects by itself; see [`LeaseWatcher::next`].
pub struct LeaseWatcher {
    reg: EtcdRegistry,
    cfg: Option<NetworkConfig>,
    /// Every change up to this revision has been delivered.
    revision: i64,
    /// Full key → the lease as last reported (shared with the events that reported it).
    cache: HashMap<String, Arc<Lease>>,
    seeded: bool,
    stream: Option<WatchStream>,
    warned: HashSet<(String, i64)>,
    /// Keys that hold no usable lease right now (full key → reason), for whoever counts them.
    skipped: tokio::sync::watch::Sender<BTreeMap<String, String>>,
    /// When each etcd lease's TTL was last looked up.
    checked: HashMap<i64, SystemTime>,
    backoff: Duration,
    last_problem: Option<String>,
    /// Changes when an unreachable etcd member is taken out of the client's set: the stream
    /// may sit on it, silent until the connection times out, so it is opened again.
    member_removals: Option<tokio::sync::watch::Receiver<u64>>,
    /// Changes when an unreachable member answers again: a retry need not wait out the
    /// backoff.
    member_returns: Option<tokio::sync::watch::Receiver<u64>>,
    /// Whether leases carry their expirations (looked up per etcd lease: one request per
    /// lease added, and again near each expiry). weftd's watch does without: its datapath
    /// never reads a peer's expiry, and with every host asking, each join would cost etcd a
    /// request per host. Deletes are then all `Removed`.
    timed: bool,
}

impl LeaseWatcher {
    pub(super) fn new(reg: EtcdRegistry, cfg: Option<NetworkConfig>, after_revision: i64) -> Self {
        LeaseWatcher {
            cfg,
            revision: after_revision.max(0),
            cache: HashMap::new(),
            seeded: false,
            stream: None,
            warned: HashSet::new(),
            skipped: tokio::sync::watch::Sender::new(BTreeMap::new()),
            checked: HashMap::new(),
            backoff: Duration::from_millis(100),
            last_problem: None,
            member_removals: reg.member_removals(),
            member_returns: reg.member_returns(),
            timed: true,
            reg,
        }
    }

    pub(super) fn from_list(
        reg: EtcdRegistry,
        cfg: Option<NetworkConfig>,
        list: LeaseList,
    ) -> Self {
        let mut w = LeaseWatcher::new(reg, cfg, list.revision);
        w.timed = list.timed;
        w.cache = (list.leases.into_iter())
            .filter(|l| outside_network(l, w.cfg.as_ref()).is_none())
            .map(|l| (w.reg.layout().lease_key(&l), Arc::new(l)))
            .collect();
        w.take_skipped(&list.skipped);
        w.mark_all_checked();
        w.seeded = true;
        w
    }

    /// The keys that hold no usable lease (malformed, outside the network), full key →
    /// reason, as a value that changes whenever that set does. Such keys produce no events,
    /// so this is the only way a caller learns of them.
    pub fn skipped_keys(&self) -> tokio::sync::watch::Receiver<BTreeMap<String, String>> {
        self.skipped.subscribe()
    }

    /// The last revision whose changes have been delivered.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The leases as the watcher knows them now, sorted by subnet (shared, not copied).
    pub fn leases(&self) -> Vec<Arc<Lease>> {
        let mut v: Vec<Arc<Lease>> = self.cache.values().cloned().collect();
        v.sort_by_key(|l| (l.subnet.network(), l.subnet.prefix_len()));
        v
    }

    /// Waits for the next changes and returns them (never an empty batch).
    ///
    /// Connection problems are not returned: the watcher logs them once, retries with
    /// backoff and resumes after [`revision`](Self::revision), so nothing is lost or repeated.
    /// A compacted revision triggers a re-list that reports only the difference. `Err` is
    /// returned only when etcd refuses the watch itself (permission denied, authentication
    /// failed, invalid request): retrying cannot help and the caller must know.
    /// Started with `after_revision` 0, the first batch is every current lease as `Added`.
    pub async fn next(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        loop {
            if !self.seeded {
                match self.seed().await {
                    Ok(events) => {
                        self.recovered();
                        if !events.is_empty() {
                            return Ok(events);
                        }
                    }
                    Err(e) => {
                        self.trouble(e).await?;
                        continue;
                    }
                }
            }
            if self.stream.is_none() {
                match self.open().await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) => {
                        self.trouble(e).await?;
                        continue;
                    }
                }
            }
            let Some(resp) = self.receive().await? else {
                continue;
            };
            let events = self.take(resp).await?;
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// The next response of the open stream; `None` when there was none to take (the
    /// expirations were due for a look, or the stream had to go and will be opened again).
    async fn receive(&mut self) -> Result<Option<WatchResponse>, StoreError> {
        let deadline = self.refresh_deadline();
        let stream = self.stream.as_mut().expect("opened before receiving");
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::time::sleep(deadline) => {
                self.refresh_expirations().await;
                return Ok(None);
            }
            Some(()) = member_removed(&mut self.member_removals) => {
                self.stream = None;
                info!(
                    from = self.revision + 1,
                    "an etcd member was taken out; watching the leases through another"
                );
                return Ok(None);
            }
        };
        let problem = match msg {
            Ok(Some(resp)) => return Ok(Some(resp)),
            Ok(None) => StoreError::Unreachable {
                endpoints: self.reg.endpoints().to_string(),
                why: "the watch stream was closed".into(),
            },
            Err(source) => {
                let op = format!("watch {}", self.reg.layout().subnets_prefix());
                self.reg.etcd_error(op, source)
            }
        };
        self.stream = None;
        self.trouble(problem).await?;
        Ok(None)
    }

    /// What one response means: changes, a compaction to re-list after, a cancelled watch,
    /// or progress.
    async fn take(&mut self, resp: WatchResponse) -> Result<Vec<LeaseEvent>, StoreError> {
        if resp.compact_revision() > 0 {
            self.stream = None;
            info!(
                from = self.revision + 1,
                compacted = resp.compact_revision(),
                "lease history was compacted; re-listing the leases"
            );
            return match self.resync().await {
                Ok(events) => {
                    self.recovered();
                    Ok(events)
                }
                Err(e) => self.trouble(e).await.map(|()| Vec::new()),
            };
        }
        if resp.canceled() {
            self.stream = None;
            return self
                .cancelled(resp.cancel_reason())
                .await
                .map(|()| Vec::new());
        }
        if resp.events().is_empty() {
            if resp.created() {
                // etcd accepted the watch: after an outage, say so now rather than at
                // the next lease change, which may be hours away.
                self.recovered();
            } else if let Some(h) = resp.header() {
                // A progress notification: everything up to its revision has been sent.
                self.revision = self.revision.max(h.revision());
            }
            return Ok(Vec::new());
        }
        let events = self.apply(&resp).await;
        self.recovered();
        Ok(events)
    }

    /// etcd gives a cancelled watch's reason only as text; a read of the same keys answers
    /// with a status code, which says whether this client may read them.
    async fn cancelled(&mut self, why: &str) -> Result<(), StoreError> {
        if self.reg.may_not_read_subnets().await {
            return Err(StoreError::WatchRefused {
                endpoints: self.reg.endpoints().to_string(),
                why: why.to_string(),
            });
        }
        self.trouble(StoreError::Unreachable {
            endpoints: self.reg.endpoints().to_string(),
            why: format!("the watch was cancelled: {why}"),
        })
        .await
    }

    async fn open(&self) -> Result<WatchStream, StoreError> {
        let prefix = self.reg.layout().subnets_prefix();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_prev_key()
            .with_progress_notify();
        let mut c = self.reg.client();
        self.reg
            .timed(
                format!("watch {prefix}"),
                c.watch(prefix.clone(), Some(opts)),
            )
            .await
    }

    /// Fills the cache: at the starting revision (no events: the caller knows those leases),
    /// or, when starting from 0 or when that revision is compacted, from a fresh list
    /// reported as `Added`.
    async fn seed(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        if self.revision > 0 {
            match read::list(&self.reg, self.cfg.as_ref(), self.revision, true).await {
                Ok(list) => {
                    self.take_list(list);
                    self.seeded = true;
                    return Ok(Vec::new());
                }
                Err(e) if status_code(&e) == Some(Code::OutOfRange) => {
                    warn!(
                        revision = self.revision,
                        "the starting revision is compacted; reporting every current lease"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let list = read::list(&self.reg, self.cfg.as_ref(), 0, self.timed).await?;
        self.revision = list.revision;
        let leases = self.take_list(list);
        self.seeded = true;
        Ok(leases.into_iter().map(LeaseEvent::Added).collect())
    }

    /// Makes `list` the cache; returns its leases in the list's order.
    fn take_list(&mut self, list: LeaseList) -> Vec<Arc<Lease>> {
        self.take_skipped(&list.skipped);
        let leases: Vec<Arc<Lease>> = list.leases.into_iter().map(Arc::new).collect();
        self.cache = (leases.iter())
            .map(|l| (self.reg.layout().lease_key(l), l.clone()))
            .collect();
        self.mark_all_checked();
        leases
    }

    /// After a compaction: the current leases against the cache, as events.
    async fn resync(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        let list = read::list(&self.reg, self.cfg.as_ref(), 0, self.timed).await?;
        self.take_skipped(&list.skipped);
        let now = SystemTime::now();
        let mut fresh: HashMap<String, Arc<Lease>> = HashMap::with_capacity(list.leases.len());
        let mut events = Vec::new();
        for mut l in list.leases {
            let key = self.reg.layout().lease_key(&l);
            let old = self.cache.get(&key);
            let changed = old.is_none_or(|old| differs(old, &l));
            // Keep the cached expiration of a lease whose listing had none.
            if l.expiration.is_none() && l.etcd_lease_id.is_some() {
                l.expiration = old.and_then(|o| o.expiration);
            }
            let l = Arc::new(l);
            if changed {
                events.push(LeaseEvent::Added(l.clone()));
            }
            fresh.insert(key, l);
        }
        let mut gone: Vec<(&String, &Arc<Lease>)> = (self.cache.iter())
            .filter(|(k, _)| !fresh.contains_key(*k))
            .collect();
        gone.sort_by(|a, b| a.0.cmp(b.0));
        let removed: Vec<LeaseEvent> = (gone.into_iter())
            .map(|(_, l)| classify_delete(l.clone(), now))
            .collect();
        events.splice(0..0, removed);
        self.cache = fresh;
        self.mark_all_checked();
        self.revision = list.revision;
        Ok(events)
    }

    async fn apply(&mut self, resp: &etcd_client::WatchResponse) -> Vec<LeaseEvent> {
        let now = SystemTime::now();
        let ids: Vec<i64> = resp
            .events()
            .iter()
            .filter(|e| e.event_type() == EventType::Put)
            .filter_map(|e| e.kv().map(|kv| kv.lease()))
            .filter(|id| *id != 0)
            .collect();
        // On failure the leases get "now" and the refresh timer asks again shortly.
        let ttls = if ids.is_empty() || !self.timed {
            HashMap::new()
        } else {
            self.reg.ttls(&ids).await.unwrap_or_default()
        };
        let mut out = Vec::new();
        let mut max_rev = self.revision;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            if kv.mod_revision() <= self.revision {
                continue;
            }
            max_rev = max_rev.max(kv.mod_revision());
            let event = match ev.event_type() {
                EventType::Put => self.put(Stored::from(kv), &ttls, now),
                EventType::Delete => self.delete(&String::from_utf8_lossy(kv.key()), now),
            };
            out.extend(event);
        }
        self.revision = max_rev;
        out
    }

    /// A key was written: a lease added or changed, or a key that no longer holds one.
    fn put(&mut self, kv: Stored, ttls: &HashMap<i64, i64>, now: SystemTime) -> Option<LeaseEvent> {
        let rev = kv.mod_revision;
        let e = Entry::decode(self.reg.layout(), kv)?;
        let key = e.stored.key;
        let lease = e
            .lease
            .and_then(|l| match outside_network(&l, self.cfg.as_ref()) {
                Some(reason) => Err(reason),
                None => Ok(l),
            });
        let mut l = match lease {
            Ok(l) => l,
            Err(reason) => {
                self.warn_skipped(&SkippedLease {
                    key: key.clone(),
                    reason: reason.clone(),
                    mod_revision: rev,
                });
                let k = key.clone();
                self.skipped
                    .send_if_modified(|m| m.insert(k, reason.clone()) != Some(reason));
                // The key no longer describes a usable lease; forget the old one.
                return self.cache.remove(&key).map(LeaseEvent::Removed);
            }
        };
        if let Some(id) = l.etcd_lease_id.filter(|_| self.timed) {
            let secs = ttls.get(&id).copied().unwrap_or(0).max(0) as u64;
            l.expiration = Some(now + Duration::from_secs(secs));
            if ttls.contains_key(&id) {
                self.checked.insert(id, now);
            }
        }
        self.unskip(&key);
        let changed = self.cache.get(&key).is_none_or(|old| differs(old, &l));
        let l = Arc::new(l);
        self.cache.insert(key, l.clone());
        changed.then_some(LeaseEvent::Added(l))
    }

    /// A key was deleted: a lease expired or was removed.
    fn delete(&mut self, key: &str, now: SystemTime) -> Option<LeaseEvent> {
        self.unskip(key);
        let old = self.cache.remove(key)?;
        if let Some(id) = old.etcd_lease_id {
            self.checked.remove(&id);
        }
        Some(classify_delete(old, now))
    }

    /// When to look up a cached lease's TTL again: shortly before its expiration, so that a
    /// renewal is known before a delete has to be judged; and after it, while the key lingers.
    fn next_check(&self, l: &Lease) -> Option<SystemTime> {
        let id = l.etcd_lease_id?;
        let exp = l.expiration?;
        let checked = self
            .checked
            .get(&id)
            .copied()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let before = exp.checked_sub(CHECK_LEAD).unwrap_or(exp);
        Some(if checked < before {
            before
        } else {
            (exp + REFRESH_DELAY).max(checked + REFRESH_DELAY)
        })
    }

    fn refresh_deadline(&self) -> Duration {
        let now = SystemTime::now();
        self.cache
            .values()
            .filter_map(|l| self.next_check(l))
            .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(100))
    }

    async fn refresh_expirations(&mut self) {
        let now = SystemTime::now();
        let due: Vec<i64> = self
            .cache
            .values()
            .filter(|l| self.next_check(l).is_some_and(|t| t <= now))
            .filter_map(|l| l.etcd_lease_id)
            .collect();
        let ttls = self.reg.ttls(&due).await.unwrap_or_default();
        let now = SystemTime::now();
        for l in self.cache.values_mut() {
            let Some(id) = l.etcd_lease_id.filter(|id| due.contains(id)) else {
                continue;
            };
            // A lease that is gone keeps its expiration: its key is about to be deleted.
            if let Some(secs) = ttls.get(&id).copied().filter(|s| *s > 0) {
                Arc::make_mut(l).expiration = Some(now + Duration::from_secs(secs as u64));
            }
        }
        for id in due {
            self.checked.insert(id, now);
        }
    }

    /// Notes that every cached lease's expiration was looked up just now.
    fn mark_all_checked(&mut self) {
        let now = SystemTime::now();
        self.checked = self
            .cache
            .values()
            .filter_map(|l| l.etcd_lease_id)
            .map(|id| (id, now))
            .collect();
    }

    /// Warns about every skipped key of a listing and makes them the whole skipped set.
    fn take_skipped(&mut self, skipped: &[SkippedLease]) {
        for s in skipped {
            self.warn_skipped(s);
        }
        let fresh: BTreeMap<String, String> = skipped
            .iter()
            .map(|s| (s.key.clone(), s.reason.clone()))
            .collect();
        self.skipped.send_if_modified(|m| {
            let changed = *m != fresh;
            *m = fresh;
            changed
        });
    }

    fn unskip(&self, key: &str) {
        self.skipped.send_if_modified(|m| m.remove(key).is_some());
    }

    fn warn_skipped(&mut self, s: &SkippedLease) {
        if self.warned.insert((s.key.clone(), s.mod_revision)) {
            warn!(key = %s.key, revision = s.mod_revision, "skipping lease: {}", s.reason);
        }
    }

    /// Logs a problem once (until things work again), waits, and lets the loop retry;
    /// returns the error instead when retrying cannot help.
    async fn trouble(&mut self, e: StoreError) -> Result<(), StoreError> {
        if is_refusal(&e) {
            return Err(e);
        }
        let msg = e.to_string();
        if self.last_problem.as_deref() != Some(msg.as_str()) {
            warn!("lease watch interrupted, retrying: {msg}");
            self.last_problem = Some(msg);
        }
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
            Some(()) = member_removed(&mut self.member_returns) => {
                // A member is back after an outage: it may need a moment to find a leader,
                // so retry soon and often rather than after the long outage's backoff.
                self.backoff = Duration::from_millis(100);
            }
        }
        Ok(())
    }

    fn recovered(&mut self) {
        if self.last_problem.take().is_some() {
            info!(revision = self.revision, "lease watch resumed");
        }
        self.backoff = Duration::from_millis(100);
    }
}

fn is_refusal(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::WatchRefused { .. }
            | StoreError::AuthFailed { .. }
            | StoreError::PermissionDenied { .. }
    ) || matches!(
        status_code(e),
        Some(Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated)
    )
}

/// Whether a lease changed in a way its watchers care about.
fn differs(old: &Lease, new: &Lease) -> bool {
    old.attrs != new.attrs || old.etcd_lease_id != new.etcd_lease_id || old.subnet6 != new.subnet6
}

/// etcd does not say why a key went away: a lease whose time was (nearly) up expired,
/// anything else was removed.
fn classify_delete(old: Arc<Lease>, now: SystemTime) -> LeaseEvent {
    match (old.etcd_lease_id, old.expiration) {
        (Some(_), Some(exp)) if now + EXPIRY_SLACK >= exp => LeaseEvent::Expired(old),
        _ => LeaseEvent::Removed(old),
    }
}

/// Resolves when `rx` (an etcd member taken out of the client's set, or back in) changes;
/// never without one.
async fn member_removed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match rx {
        Some(rx) => rx.changed().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_error(code: Code) -> StoreError {
        StoreError::Etcd {
            endpoints: "http://198.18.0.1:2379".into(),
            op: "watch /coreos.com/network/subnets/".into(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(code, "refused")),
        }
    }

    #[test]
    fn refusals_are_told_by_status_code() {
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(is_refusal(&etcd_error(code)), "{code:?}");
        }
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::OutOfRange] {
            assert!(!is_refusal(&etcd_error(code)), "{code:?}");
        }
        assert_eq!(
            status_code(&etcd_error(Code::OutOfRange)),
            Some(Code::OutOfRange)
        );
    }
}
