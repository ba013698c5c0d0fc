//! The network config, followed live. weftd watches `<prefix>/config` and the record of the
//! config the network runs (`<prefix>/weft/config`, see [`crate::live::record`]) and runs the
//! record: a document written through weftctl comes with its record; one written behind
//! weftctl's back is judged by the first weftd to see it (after a random moment, so that in a
//! large fleet few read the leases to judge it), which writes the record every host follows.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{retry, Agent};
use crate::live::{self, Next, RunningConfig};
use crate::metrics::Metrics;
use crate::store::{ConfigKeys, EtcdStore, StoreError};

/// The config the network runs as this host last read it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Following {
    pub record: RunningConfig,
    /// The record's mod revision.
    pub record_rev: i64,
    /// `<prefix>/config`'s mod revision as last read (the record's when there is none).
    pub current_rev: i64,
    /// Why the document at `current_rev` is not run, when it is not the record's.
    pub not_run: Option<Vec<String>>,
}

impl Following {
    /// The revision of `<prefix>/config` the record's config was.
    pub fn running_rev(&self) -> i64 {
        self.record.config_rev(self.record_rev)
    }
}

/// The record and `<prefix>/config` as read, the record parsed (an unreadable one is
/// reported and treated as absent, to be replaced).
fn read_record(store: &EtcdStore, keys: &ConfigKeys) -> Option<(RunningConfig, i64)> {
    let (bytes, rev) = keys.running.as_ref()?;
    match RunningConfig::parse(&store.running_key(), bytes) {
        Ok(r) => Some((r, *rev)),
        Err(e) => {
            tracing::warn!(error = %e, "the running-config record cannot be read; replacing it");
            None
        }
    }
}

/// Why the document at `<prefix>/config` is not run, given the record that is.
fn not_run(record: &RunningConfig, current: Option<&(String, i64)>) -> Option<Vec<String>> {
    let (text, rev) = current?;
    match crate::config::NetworkConfig::parse(text) {
        Ok(cfg) if record.holds(&cfg.raw) => None,
        Ok(_) => Some(match &record.refused {
            Some(r) if r.rev == *rev => r.why.clone(),
            _ => vec!["not judged yet".into()],
        }),
        Err(problems) => Some(
            problems
                .problems()
                .iter()
                .map(|p| format!("invalid: {p}"))
                .collect(),
        ),
    }
}

/// Reads both keys and does what [`live::next`] says until the record can be run: writes a
/// first record, an accepted change or a refusal (re-reading after each), or waits while
/// there is nothing to run. A document the record does not hold is judged after a random
/// moment of up to a second, by which time another host has usually judged it.
pub(super) async fn settle(store: &EtcdStore, metrics: &Metrics) -> Result<Following, StoreError> {
    let mut waited: Vec<String> = Vec::new();
    let mut jittered = false;
    loop {
        let keys = retry("reading the network config", metrics, || {
            store.config_keys()
        })
        .await?;
        let record = read_record(store, &keys);
        let current = keys.config.as_ref().map(|(t, r)| (t.as_str(), *r));
        let undecided = record.as_ref().is_some_and(|(r, _)| {
            not_run(r, keys.config.as_ref()).is_some_and(|w| w == ["not judged yet"])
        });
        if undecided && !jittered {
            jittered = true;
            tokio::time::sleep(Duration::from_secs_f64(rand::random::<f64>())).await;
            continue;
        }
        let leases = match undecided {
            true => {
                retry("listing leases", metrics, || {
                    store.list_leases_untimed(None)
                })
                .await?
                .leases
            }
            false => Vec::new(),
        };
        match live::next(record.as_ref().map(|(r, rev)| (r, *rev)), current, &leases) {
            Next::Run => {
                let (record, record_rev) = record.expect("a record to run");
                return Ok(Following {
                    not_run: not_run(&record, keys.config.as_ref()),
                    current_rev: keys
                        .config
                        .as_ref()
                        .map_or(record.config_rev(record_rev), |(_, r)| *r),
                    record,
                    record_rev,
                });
            }
            Next::Write { record: new, guard } => {
                // An unreadable record is replaced where it is.
                let guard = guard.or(keys.running.as_ref().map(|(_, r)| *r));
                let json = new.to_json();
                let wrote = retry("writing the running config", metrics, || {
                    store.put_running(&json, guard)
                })
                .await?;
                if wrote {
                    say_decided(&new);
                }
            }
            Next::Wait(why) => {
                if why != waited {
                    for line in &why {
                        tracing::warn!(key = %store.config_key(), "cannot use the network config: {line}; waiting for a valid one");
                    }
                    waited = why;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Logs what this host decided for the fleet.
fn say_decided(r: &RunningConfig) {
    match &r.refused {
        Some(refusal) => {
            for why in &refusal.why {
                tracing::warn!(
                    revision = refusal.rev,
                    "config change refused for the whole network: {why}"
                );
            }
        }
        None => tracing::info!(revision = ?r.rev, "config accepted for the whole network"),
    }
}

/// Watches `<prefix>/config` and the record from `revision` on, and says when either
/// changed (a burst is one word). On a failure it waits a second, says so anyway (what was
/// missed is then read), and watches again from where it was.
pub(super) fn watch(
    store: EtcdStore,
    revision: i64,
) -> (mpsc::Receiver<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut rev = revision;
        loop {
            if let Ok((mut a, mut b)) = store.watch_config_keys(rev).await {
                loop {
                    let msg = tokio::select! {
                        m = a.message() => m,
                        m = b.message() => m,
                    };
                    let Ok(Some(resp)) = msg else { break };
                    if resp.canceled() {
                        // Compacted past `rev`: the read that follows catches up; watch on
                        // from now.
                        rev = resp.header().map_or(rev, |h| h.revision());
                        break;
                    }
                    let newest = resp
                        .events()
                        .iter()
                        .filter_map(|e| e.kv())
                        .map(|kv| kv.mod_revision())
                        .max();
                    if let Some(n) = newest {
                        rev = rev.max(n);
                        let _ = tx.try_send(());
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tx.try_send(());
        }
    });
    (rx, task)
}

impl Agent {
    /// The config keys changed: read them, let weft decide, and run the result.
    pub(super) async fn on_config_event(&mut self) -> anyhow::Result<()> {
        let f = settle(&self.store, &self.metrics).await?;
        self.follow(f).await
    }

    /// Runs the config `f` holds when it differs from the one running: the new config first
    /// (device settings, routes, firewall, subnet.env), then the backends it calls for.
    pub(super) async fn follow(&mut self, f: Following) -> anyhow::Result<()> {
        let changed = f.record != self.following.record;
        let from_rev = |f: &Following| f.record.migration.as_ref().map(|m| m.from_rev);
        let new_move = from_rev(&f) != from_rev(&self.following);
        if f.not_run != self.following.not_run {
            for why in f.not_run.iter().flatten() {
                tracing::warn!(
                    revision = f.current_rev,
                    "not running the newest network config: {why}"
                );
            }
        }
        self.following = f;
        if !changed {
            return Ok(());
        }
        let cfg = match self.following.record.network() {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::warn!(error = %e, "the running config cannot be used; keeping the one in use");
                return Ok(());
            }
        };
        tracing::info!(
            revision = self.following.running_rev(),
            "running the network config"
        );
        let old = std::mem::replace(&mut self.host.cfg, cfg);
        let lease_rules = |c: &crate::config::NetworkConfig| {
            (c.network, c.subnet_len, c.ipv6_network, c.ipv6_subnet_len)
        };
        if lease_rules(&old) != lease_rules(&self.host.cfg) {
            // The watch judges leases by the network: list them again under the new one.
            self.rewatch = true;
        }
        // A new decision: a host that could not move tries again.
        self.moving.failed = None;
        if new_move {
            // What the last migration left says nothing of this one's peers: the backend
            // this host moves from stays until none needs it (else it went at once, and its
            // routes with it, until the peers' leases brought it back).
            self.moving.keep_old = true;
        }
        let env =
            (old.network, old.ipv6_network) != (self.host.cfg.network, self.host.cfg.ipv6_network);
        self.refresh_backends(env).await?;
        let v6_now = self.host.ext.v6.is_some() && self.host.cfg.ipv6_network.is_some();
        if v6_now != self.own.subnet6.is_some() && !self.own.is_reservation() {
            tracing::info!(
                ipv6 = v6_now,
                "IPv6 in the network config changed; acquiring the lease again"
            );
            self.reacquire().await?;
        }
        Ok(())
    }
}
