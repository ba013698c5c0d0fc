//! Network policy in weftd: follows the policies, namespaces and other hosts' workloads in
//! etcd (one watch of weft's policy prefix, incremental), hands them to the policy thread
//! that keeps the nftables tables, and publishes this host's workloads (the plugin's
//! records) in etcd on an etcd lease of its own, so they vanish with this host.
//!
//! Never open: the policy thread writes nothing before the policies were read from etcd;
//! while etcd is away, the tables stay as they are and the plugin keeps admitting new
//! containers from the program file, so enforcement never loosens with an outage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{EventType, LeaseKeepAliveStream, LeaseKeeper, WatchResponse};
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};

use crate::firewall::enforce::{self, EnforceError, Enforcer, EnforcerHandle, Inputs, Outcome};
use crate::firewall::policy::model;
use crate::firewall::policy::selector::Labels;
use crate::firewall::policy::{Policy, Workload};
use crate::metrics::Metrics;
use crate::status::PolicyFacts;
use crate::store::{EtcdStore, PolicyKey, StoreError};

/// This host's lease as network policy sees it; it follows the lease when weftd acquires
/// another subnet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnLease {
    /// This host's subnets: workload records inside them are this host's to write.
    pub subnets: Vec<IpNet>,
    /// This host's lease key name, written into its records for people to read.
    pub host: String,
}

/// What the policy component needs of weftd's settings.
pub struct PolicySettings {
    pub subnet_file: PathBuf,
    pub lease: watch::Receiver<OwnLease>,
    pub ttl: Duration,
    pub resync: Duration,
    /// Where this host's policy facts go (its status record).
    pub facts: watch::Sender<Option<PolicyFacts>>,
}

/// The policy keys as known: by name below their kind's directory.
#[derive(Default)]
struct Known {
    policies: BTreeMap<String, Policy>,
    namespaces: BTreeMap<String, Labels>,
    workloads: BTreeMap<String, Workload>,
}

/// Starts the policy thread and the task that feeds it; returns once the first pass ran (or
/// after `wait`), so subnet.env, written after, never precedes the program file.
pub async fn start(
    store: EtcdStore,
    settings: PolicySettings,
    metrics: Arc<Metrics>,
    wait: Duration,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let m = metrics.clone();
    let facts = settings.facts.clone();
    let report = move |r: Result<&Outcome, &EnforceError>| {
        note(&m, r);
        if let Ok(o) = r {
            let _ = tx.send(o.local.clone());
            facts.send_if_modified(|f| {
                let before = f.clone();
                let applied = (o.structure > 0).then(SystemTime::now);
                let old = f.as_ref().and_then(|f| f.applied);
                *f = Some(PolicyFacts {
                    policies: o.policies as u64,
                    local_workloads: o.local.len() as u64,
                    applied: applied.or(old),
                    drops: o.drops.clone(),
                });
                *f != before
            });
        }
    };
    let enforcer = Enforcer::new(&settings.subnet_file);
    let handle = enforce::spawn(enforcer, settings.resync, report)?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run(store, settings, handle, rx, metrics, first_tx));
    if tokio::time::timeout(wait, first_rx).await.is_err() {
        tracing::warn!("network policy: no first pass yet; continuing");
    }
    Ok(())
}

fn note(m: &Metrics, r: Result<&Outcome, &EnforceError>) {
    match r {
        Ok(o) => {
            m.policy.local_workloads.set(o.local.len() as u64);
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
            m.policy
                .last_apply
                .set(now.map_or(0.0, |d| d.as_secs_f64()));
            m.policy.dropped.clear();
            for (id, n) in &o.drops {
                m.policy
                    .dropped
                    .get_or_create(&vec![("policy".into(), id.clone())])
                    .set(*n);
            }
            if let Some(why) = &o.bridge_netfilter {
                tracing::warn!(why, "network policy: bridge netfilter");
            }
            for (file, why) in &o.unreadable {
                tracing::warn!(
                    file,
                    why,
                    "network policy: workload record unreadable; ignored"
                );
            }
            for what in &o.mended {
                tracing::info!(
                    what,
                    "network policy: the tables differed from what they should hold; mended"
                );
            }
            if o.changed() {
                let took_us = o.took.as_micros() as u64;
                tracing::info!(
                    structure = o.structure,
                    elements = o.elements,
                    full = o.full,
                    took_us,
                    "network policy tables updated"
                );
            }
        }
        Err(e) => {
            m.policy.apply_errors.inc();
            tracing::warn!(error = %e, "cannot bring the network policy tables up to date; will retry");
        }
    }
}

/// The feeding task: list, watch, and publish, until weftd ends; every etcd failure is
/// followed by a new list and watch.
async fn run(
    store: EtcdStore,
    mut s: PolicySettings,
    handle: EnforcerHandle,
    mut locals: mpsc::UnboundedReceiver<Vec<Workload>>,
    metrics: Arc<Metrics>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut publisher = Publisher::default();
    loop {
        match follow(
            &store,
            &mut s,
            &handle,
            &mut locals,
            &mut publisher,
            &metrics,
            &mut first,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                metrics.etcd_errors.inc();
                tracing::warn!(error = %e, "network policy: etcd watch interrupted; listing again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One list and the watch after it.
async fn follow(
    store: &EtcdStore,
    s: &mut PolicySettings,
    handle: &EnforcerHandle,
    locals: &mut mpsc::UnboundedReceiver<Vec<Workload>>,
    publisher: &mut Publisher,
    metrics: &Metrics,
    first: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), StoreError> {
    let list = store.list_policy(None).await?;
    let mut known = Known::default();
    for (kind, name, value) in &list.keys {
        known.put(*kind, name, value);
    }
    publisher.adopt(&known, s);
    handle.update(known.inputs(s, metrics));
    let mut watch = store.watch_policy(list.revision).await?;
    let mut keep_alive = tokio::time::interval(s.ttl / 3);
    loop {
        tokio::select! {
            msg = watch.message() => {
                let resp = msg.map_err(|e| StoreError::Etcd {
                    endpoints: store.endpoints().to_string(),
                    op: "watch the network policy keys".into(),
                    source: e,
                })?;
                let Some(resp) = resp else { return Err(gone(store)) };
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Err(gone(store));
                }
                known.apply(store, &resp);
                handle.update(known.inputs(s, metrics));
            }
            local = locals.recv() => {
                let Some(local) = local else { return Ok(()) };
                publisher.publish(store, s, local).await?;
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
            _ = keep_alive.tick() => publisher.keep_alive(store, s.ttl).await,
            Ok(()) = s.lease.changed() => {
                // Another subnet: other records become this host's or stop being so, and
                // this host's records name their new host.
                handle.update(known.inputs(s, metrics));
                publisher.rehost(store, s).await?;
            }
        }
    }
}

/// Whether a record holds an address of this host's subnets.
fn is_own(s: &PolicySettings, w: &Workload) -> bool {
    w.holds_address_in(&s.lease.borrow().subnets)
}

fn gone(store: &EtcdStore) -> StoreError {
    StoreError::Unreachable {
        endpoints: store.endpoints().to_string(),
        why: "the network policy watch ended".into(),
    }
}

impl Known {
    /// Takes one key as written; what does not read is logged and left out (another
    /// host's or an operator's data never stops weftd).
    fn put(&mut self, kind: PolicyKey, name: &str, value: &[u8]) {
        let read = match kind {
            PolicyKey::Policy => serde_json::from_slice(value)
                .map_err(|e| e.to_string())
                .and_then(|doc| model::parse(&doc, None).map_err(|e| e.to_string()))
                .map(|p| {
                    self.policies.insert(name.to_string(), p);
                }),
            PolicyKey::Namespace => model::namespace_labels(value).map(|l| {
                self.namespaces.insert(name.to_string(), l);
            }),
            PolicyKey::Workload => Workload::decode(value).map(|w| {
                self.workloads.insert(name.to_string(), w);
            }),
        };
        if let Err(why) = read {
            self.remove(kind, name);
            tracing::warn!(?kind, name, why, "network policy: key ignored");
        }
    }

    fn remove(&mut self, kind: PolicyKey, name: &str) {
        match kind {
            PolicyKey::Policy => self.policies.remove(name).map(|_| ()),
            PolicyKey::Namespace => self.namespaces.remove(name).map(|_| ()),
            PolicyKey::Workload => self.workloads.remove(name).map(|_| ()),
        };
    }

    fn apply(&mut self, store: &EtcdStore, resp: &WatchResponse) {
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let Some((kind, name)) = store.parse_policy_key(&key) else {
                continue;
            };
            match ev.event_type() {
                EventType::Put => self.put(kind, &name, kv.value()),
                EventType::Delete => self.remove(kind, &name),
            }
        }
    }

    /// The enforcer's inputs: every policy, the namespaces, and the workloads of other hosts.
    fn inputs(&self, s: &PolicySettings, metrics: &Metrics) -> Arc<Inputs> {
        let remote: Vec<Workload> = (self.workloads.values())
            .filter(|w| !is_own(s, w))
            .cloned()
            .collect();
        metrics.policy.policies.set(self.policies.len() as u64);
        metrics.policy.remote_workloads.set(remote.len() as u64);
        let mut policies: Vec<Policy> = self.policies.values().cloned().collect();
        policies.sort_by_key(Policy::id);
        Arc::new(Inputs {
            policies,
            namespaces: self.namespaces.clone(),
            remote,
            subnets: s.lease.borrow().subnets.clone(),
        })
    }
}

/// This host's workload records in etcd: what was written, on which etcd lease, kept alive
/// through one keep-alive stream.
#[derive(Default)]
struct Publisher {
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// This host's workloads as last published.
    local: Vec<Workload>,
    /// Key name (the first address) → the value written; `None`: found in etcd, this
    /// host's, not (yet) written by this weftd.
    written: BTreeMap<String, Option<String>>,
}

impl Publisher {
    /// Takes the records of this host's subnets found in etcd as this host's own: those
    /// not among its workloads at the next publish are stale (a DEL while weftd was away)
    /// and go.
    fn adopt(&mut self, known: &Known, s: &PolicySettings) {
        for (name, w) in &known.workloads {
            if is_own(s, w) {
                self.written.entry(name.clone()).or_insert(None);
            }
        }
    }

    async fn publish(
        &mut self,
        store: &EtcdStore,
        s: &PolicySettings,
        local: Vec<Workload>,
    ) -> Result<(), StoreError> {
        let host = s.lease.borrow().host.clone();
        let mut want = BTreeMap::new();
        for w in &local {
            let Some(a) = w.key_address() else { continue };
            let mut w = w.clone();
            w.host = host.clone();
            want.insert(a.to_string(), w.encode());
        }
        self.local = local;
        if want
            .iter()
            .any(|(k, v)| self.written.get(k) != Some(&Some(v.clone())))
            && self.lease.is_none()
        {
            self.lease = Some(store.grant_workload_lease(s.ttl).await?);
        }
        for (k, v) in &want {
            if self.written.get(k) != Some(&Some(v.clone())) {
                store
                    .put_policy_key(PolicyKey::Workload, k, v, self.lease)
                    .await?;
                self.written.insert(k.clone(), Some(v.clone()));
            }
        }
        let stale: Vec<String> = (self.written.keys())
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for k in stale {
            store.delete_policy_key(PolicyKey::Workload, &k).await?;
            self.written.remove(&k);
        }
        Ok(())
    }

    /// The records again under this host's new lease key name.
    async fn rehost(&mut self, store: &EtcdStore, s: &PolicySettings) -> Result<(), StoreError> {
        let local = std::mem::take(&mut self.local);
        self.publish(store, s, local).await
    }

    /// One keep-alive of the records' etcd lease, on the stream opened for it; a stream
    /// that fails is opened again at the next tick, and a lease etcd no longer has means
    /// every record must be written again on a new one.
    async fn keep_alive(&mut self, store: &EtcdStore, ttl: Duration) {
        let Some(id) = self.lease else { return };
        if self.keeper.is_none() {
            match store.keep_alive_stream(id).await {
                Ok(k) => self.keeper = Some(k),
                Err(e) => {
                    return tracing::debug!(error = %e, "cannot open the workload records' keep-alive")
                }
            }
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return;
        };
        let answer = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(ttl / 3, answer).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => {
                tracing::warn!(
                    lease = format!("{id:x}"),
                    "network policy: the workload records' etcd lease is gone; writing them again"
                );
                self.lease = None;
                self.keeper = None;
                self.written.values_mut().for_each(|v| *v = None);
            }
            _ => self.keeper = None,
        }
    }
}
