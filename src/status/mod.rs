//! This host's status in etcd and the cluster's status as weftctl shows it. The agent feeds
//! [`Facts`] to a [`StatusFeed`]; its task writes the host's [`StatusRecord`] when they change
//! and keeps the record's short etcd lease alive, so the record vanishes with the host.

pub mod behind;
mod record;
mod ring;
pub mod view;
mod writer;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

pub use record::{
    ConfigState, DriftRepairs, GoneMark, LastError, Newer, PolicyDrops, PolicyStatus, RecordError,
    Stamp, StatusRecord, Unreachable, RECORD_VERSION, TOP_DROPS,
};
pub use ring::{Ring, MARKERS};
pub use writer::MIN_GAP;

use crate::store::EtcdStore;

/// What the agent knows about this host; the record is written from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// This host's lease key name (`198.19.5.0-24`); the record's key. Empty: nothing to write.
    pub lease_key: String,
    pub public_ip: Option<IpAddr>,
    pub backend: String,
    pub ready: bool,
    /// Hosts this host cannot reach, counted; filled by the peer prober, 0 without it.
    pub unreachable_count: u64,
    /// The longest unreachable of them, at most [`crate::probe::NAMED`]: their lease key
    /// names, with the time each was found unreachable, the oldest first.
    pub unreachable: Vec<(String, SystemTime)>,
    /// Kernel objects the datapath put back so far (a counter; the record adds the time it
    /// last grew).
    pub drift_repairs: u64,
    /// The last failure worth an operator's eye, and when.
    pub last_error: Option<(String, SystemTime)>,
    /// Network policy on this host, once its first pass ran.
    pub policy: Option<PolicyFacts>,
    /// The config revision the host runs, and a newer one it does not.
    pub config: Option<ConfigState>,
}

/// Network policy on this host, as its policy thread last found it. Only what this host's
/// own life changes: other hosts' containers coming and going never make it differ, so no
/// host's record is written because of another's containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyFacts {
    pub policies: u64,
    pub local_workloads: u64,
    /// When the policies last changed in this host's tables.
    pub applied: Option<SystemTime>,
    /// Packets refused at this host's workloads, by policy id (as of the last full pass).
    pub drops: BTreeMap<String, u64>,
}

/// The agent's handle on the status task. Updating it never blocks and never waits for etcd.
pub struct StatusFeed {
    tx: tokio::sync::watch::Sender<Facts>,
    store: tokio::sync::watch::Sender<EtcdStore>,
    ring: Ring,
}

impl StatusFeed {
    /// Starts the task that writes this host's record, on an etcd lease of `ttl`.
    pub fn start(store: EtcdStore, ttl: Duration, facts: Facts) -> StatusFeed {
        let (tx, rx) = tokio::sync::watch::channel(facts);
        let (store_tx, store_rx) = tokio::sync::watch::channel(store);
        let ring = Ring::default();
        tokio::spawn(writer::run(store_rx, ttl, rx, ring.clone()));
        StatusFeed {
            tx,
            store: store_tx,
            ring,
        }
    }

    /// The leases' subnets as the task must know them, kept by whoever follows the leases:
    /// when a host's record vanishes, only the few hosts after it in this ring mark it gone.
    pub fn ring(&self) -> Ring {
        self.ring.clone()
    }

    /// Moves the task to a new etcd connection (the agent made one after the host's address
    /// changed); the record's etcd lease is kept.
    pub fn reconnected(&self, store: EtcdStore) {
        self.store.send_replace(store);
    }

    /// Changes the facts; the task hears of it only when something differs.
    pub fn update(&self, f: impl FnOnce(&mut Facts)) {
        self.tx.send_if_modified(|facts| {
            let before = facts.clone();
            f(facts);
            *facts != before
        });
    }

    /// Records a failure as the last error.
    pub fn error(&self, e: &dyn std::fmt::Display) {
        let text = e.to_string();
        self.update(|f| {
            if f.last_error.as_ref().map(|(t, _)| t) != Some(&text) {
                f.last_error = Some((text, SystemTime::now()));
            }
        });
    }
}
