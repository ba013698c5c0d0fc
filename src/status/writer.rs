//! The task behind [`StatusFeed`](super::StatusFeed): writes this host's record when its
//! facts change (at most once every [`MIN_GAP`], however much they churn), keeps the record's
//! etcd lease alive with keep-alive messages (not writes), and hears of records that vanish
//! through a delete-only watch: its own is written again, another's is marked gone if this
//! host is among the few after it in the ring (see [`super::ring`]). Nobody receives another
//! host's record updates: etcd filters the puts out before they are sent.

use std::time::{Duration, SystemTime};

use etcd_client::{EventType, LeaseKeepAliveStream, LeaseKeeper, WatchResponse, WatchStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::record::{
    DriftRepairs, GoneMark, LastError, PolicyStatus, Stamp, StatusRecord, Unreachable,
};
use super::{Facts, Ring, RECORD_VERSION};
use crate::store::{EtcdStore, StoreError};
use crate::subnet::parse_lease_key_name;

/// Records are written at most this often, so a host whose peers flap costs etcd one
/// bounded write per gap whatever the fleet's size. The first record goes out at once, and
/// so does a change of name or of the config revision the host runs, also when churn is
/// already waiting out the gap (a new revision is an operator's step, and `weftctl status`
/// reports the fleet split until every record names it).
pub const MIN_GAP: Duration = Duration::from_secs(5);

/// The wait between two markers of one gone host (see [`super::ring`]): the next one looks
/// only if the one before has not marked it by then.
const MARK_STAGGER: Duration = Duration::from_secs(1);

/// The longest last error a record carries; a longer one is cut (it may come from etcd or a
/// netlink reply, and the record must stay small).
const MAX_ERROR_LEN: usize = 300;

/// The longest reason a record gives for not running the newest config.
const MAX_WHY_LEN: usize = 200;

struct Writer {
    store: EtcdStore,
    ttl: Duration,
    /// The record's etcd lease, while etcd has it.
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    alive_since: Stamp,
    /// The record as last written, under its name; None: it must be written.
    written: Option<(String, StatusRecord)>,
    last_write: Instant,
    ready: Option<(bool, Stamp)>,
    repairs: DriftRepairs,
    watch: Option<WatchStream>,
    /// The last revision the status watch saw, to resume from after an outage.
    watch_rev: i64,
    /// A watch that failed is opened again no sooner than this, so a watch etcd keeps
    /// ending cannot spin the task.
    watch_retry_at: Instant,
    /// etcd refused the last attempt (warned once).
    refused: bool,
    ring: Ring,
    /// Hosts whose records vanished, to be marked gone by this host at the time given if
    /// nobody before it in the ring has (its rank after the gone host: 1 marks at once).
    marks: Vec<(Instant, usize, String)>,
}

pub(super) async fn run(
    mut stores: watch::Receiver<EtcdStore>,
    ttl: Duration,
    mut facts: watch::Receiver<Facts>,
    ring: Ring,
) {
    let mut w = Writer {
        store: stores.borrow_and_update().clone(),
        ttl,
        lease: None,
        keeper: None,
        alive_since: Stamp::now(),
        written: None,
        // The first record goes out at once.
        last_write: Instant::now()
            .checked_sub(MIN_GAP)
            .unwrap_or_else(Instant::now),
        ready: None,
        repairs: DriftRepairs::default(),
        watch: None,
        watch_rev: 0,
        watch_retry_at: Instant::now(),
        refused: false,
        ring,
        marks: Vec::new(),
    };
    // A third of the TTL: two keep-alives may be lost before the record expires.
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let f = facts.borrow_and_update().clone();
        match w.sync(&f).await {
            // etcd refuses this user weft's keys: say so, once; an operator must grant them.
            Err(e) if e.is_refusal() && !w.refused => {
                warn!(error = %e, "status record not written; will retry");
                w.refused = true;
            }
            Err(e) => debug!(error = %e, "status record not written; trying again"),
            Ok(()) => w.refused = false,
        }
        let mark_at = w.marks.iter().map(|(t, _, _)| *t).min();
        tokio::select! {
            changed = facts.changed() => {
                if changed.is_err() {
                    return;
                }
                if !at_once(&f, &facts.borrow()) {
                    wait_gap(&mut facts, &f, w.last_write + MIN_GAP).await;
                }
            }
            _ = sleep_until(mark_at) => w.mark_due().await,
            _ = tick.tick() => w.keep_alive().await,
            Ok(()) = stores.changed() => {
                // The keep-alive stream and the watch ran on the old connection.
                w.store = stores.borrow_and_update().clone();
                w.keeper = None;
                w.watch = None;
            }
            msg = next_message(&mut w.watch) => w.on_watch(msg, &f.lease_key),
        }
    }
}

/// Whether a change of facts is written without waiting out [`MIN_GAP`]: the record's name
/// changed, or the config revision the host runs did.
fn at_once(before: &Facts, now: &Facts) -> bool {
    let rev = |f: &Facts| f.config.as_ref().map(|c| c.rev);
    now.lease_key != before.lease_key || rev(now) != rev(before)
}

/// Waits until `until`, the end of the write gap, or less: a change that goes out at once
/// (against `written`, the facts of the last write) ends the wait, so a new config revision
/// is not held up by churn that came before it.
async fn wait_gap(facts: &mut watch::Receiver<Facts>, written: &Facts, until: Instant) {
    let gap = tokio::time::sleep_until(until);
    tokio::pin!(gap);
    loop {
        tokio::select! {
            _ = &mut gap => return,
            changed = facts.changed() => {
                if changed.is_err() || at_once(written, &facts.borrow()) {
                    return;
                }
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    watch: &mut Option<WatchStream>,
) -> Result<Option<WatchResponse>, etcd_client::Error> {
    match watch {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

impl Writer {
    /// Makes etcd hold the record `facts` call for: an etcd lease first, then the record if it
    /// differs from the one written, then the watch of the others.
    async fn sync(&mut self, facts: &Facts) -> Result<(), StoreError> {
        if facts.lease_key.is_empty() {
            return Ok(());
        }
        let lease = match self.lease {
            Some(id) => id,
            None => {
                let id = self.store.grant_liveness(self.ttl).await?;
                self.lease = Some(id);
                self.keeper = None;
                self.written = None;
                self.alive_since = Stamp::now();
                id
            }
        };
        let record = self.record(facts);
        let name = &facts.lease_key;
        if self.written.as_ref() != Some(&(name.clone(), record.clone())) {
            let old = self.written.as_ref().map(|(n, _)| n.as_str());
            let json = record.to_json();
            if let Err(e) = self.store.put_status(name, &json, lease, old).await {
                if !e.is_transient() {
                    // Most likely the etcd lease expired while etcd was away: grant a new one.
                    self.lease = None;
                }
                return Err(e);
            }
            self.last_write = Instant::now();
            debug!(key = %self.store.status_key(name), ready = record.ready, "status record written");
            self.written = Some((name.clone(), record));
        }
        if self.watch.is_none() && Instant::now() >= self.watch_retry_at {
            self.watch_retry_at = Instant::now() + MIN_GAP;
            self.watch = Some(self.store.watch_status(self.watch_rev).await?);
        }
        Ok(())
    }

    /// The record for `facts`, with the times at which its parts last changed.
    fn record(&mut self, facts: &Facts) -> StatusRecord {
        if self.ready.map(|(r, _)| r) != Some(facts.ready) {
            self.ready = Some((facts.ready, Stamp::now()));
        }
        if facts.drift_repairs != self.repairs.count {
            let grew = facts.drift_repairs > self.repairs.count;
            self.repairs = DriftRepairs {
                count: facts.drift_repairs,
                last: if grew { Some(Stamp::now()) } else { None },
            };
        }
        StatusRecord {
            v: RECORD_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: facts.backend.clone(),
            ready: facts.ready,
            since: self.ready.map_or_else(Stamp::now, |(_, s)| s),
            public_ip: facts.public_ip,
            alive_since: self.alive_since,
            unreachable: (facts.unreachable.iter())
                .take(crate::probe::NAMED)
                .map(|(peer, since)| Unreachable {
                    peer: peer.clone(),
                    since: Stamp::from(*since),
                })
                .collect(),
            unreachable_count: Some(facts.unreachable_count),
            drift_repairs: self.repairs.clone(),
            last_error: (facts.last_error.as_ref()).map(|(text, at)| LastError {
                text: cut(text, MAX_ERROR_LEN),
                at: Stamp::from(*at),
            }),
            policy: facts.policy.as_ref().map(|p| {
                let applied = p.applied.map(Stamp::from);
                PolicyStatus::new(p.policies, p.local_workloads, applied, &p.drops)
            }),
            config: facts.config.clone().map(|mut c| {
                if let Some(n) = c.newer.as_mut() {
                    n.why = cut(&n.why, MAX_WHY_LEN);
                }
                c
            }),
        }
    }

    /// One keep-alive message. An answer with no TTL left means etcd dropped the lease (it
    /// was away longer than the TTL): the next sync grants a new one and writes the record.
    async fn keep_alive(&mut self) {
        let Some(id) = self.lease else { return };
        if self.keeper.is_none() {
            match self.store.keep_alive_stream(id).await {
                Ok(k) => self.keeper = Some(k),
                Err(e) => return debug!(error = %e, "cannot open the status keep-alive"),
            }
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return;
        };
        let answer = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(self.ttl / 3, answer).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => {
                info!("the status record's etcd lease expired; writing the record anew");
                self.lease = None;
                self.keeper = None;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                debug!("status keep-alive unanswered; opening it again");
                self.keeper = None;
            }
        }
    }

    /// A record vanished: another host's means it is gone (marked, once, by whoever sees it
    /// first); this host's own means it must be written again.
    fn on_watch(&mut self, msg: Result<Option<WatchResponse>, etcd_client::Error>, own: &str) {
        let resp = match msg {
            Ok(Some(r)) if !r.canceled() => r,
            Ok(Some(r)) => {
                // Compacted past our revision, or refused: start afresh from now.
                debug!(reason = r.cancel_reason(), "status watch cancelled");
                self.watch = None;
                self.watch_rev = 0;
                return;
            }
            Ok(None) | Err(_) => {
                self.watch = None;
                return;
            }
        };
        if let Some(h) = resp.header() {
            self.watch_rev = self.watch_rev.max(h.revision());
        }
        let prefix = self.store.status_prefix();
        for ev in resp.events() {
            let Some(kv) = ev.kv().filter(|_| ev.event_type() == EventType::Delete) else {
                continue;
            };
            let key = String::from_utf8_lossy(kv.key());
            let Some(name) = key.strip_prefix(&prefix) else {
                continue;
            };
            if name == own {
                self.written = None;
                continue;
            }
            self.plan_mark(name, own);
        }
    }

    /// A host's record vanished: this host marks it gone if it ranks among the few after it
    /// in the ring, the first at once and each next one a stagger later.
    fn plan_mark(&mut self, name: &str, own: &str) {
        let (Ok((gone, _)), Ok((mine, _))) =
            (parse_lease_key_name(name), parse_lease_key_name(own))
        else {
            return;
        };
        let Some(rank) = self.ring.rank_after(gone, mine) else {
            return;
        };
        let at = Instant::now() + MARK_STAGGER * (rank as u32 - 1);
        self.marks.push((at, rank, name.to_string()));
    }

    /// Marks the hosts whose turn has come; one after the first looks before it writes.
    async fn mark_due(&mut self) {
        let now = Instant::now();
        let (due, later) = std::mem::take(&mut self.marks)
            .into_iter()
            .partition(|(t, _, _)| *t <= now);
        self.marks = later;
        for (_, rank, name) in due {
            if rank > 1 && matches!(self.store.is_marked_gone(&name).await, Ok(true)) {
                continue;
            }
            self.mark_gone(&name).await;
        }
    }

    async fn mark_gone(&self, name: &str) {
        let mark = GoneMark {
            v: RECORD_VERSION,
            since: Stamp::from(SystemTime::now()),
        };
        match self.store.mark_gone(name, &mark.to_json()).await {
            Ok(true) => info!(
                host = name,
                "a host's status record expired; marked it gone"
            ),
            Ok(false) => {}
            Err(e) => warn!(host = name, error = %e, "cannot mark a host gone"),
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary, marked as cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::record::ConfigState;

    fn running(rev: i64) -> Facts {
        Facts {
            lease_key: "198.19.1.0-24".into(),
            config: Some(ConfigState { rev, newer: None }),
            ..Facts::default()
        }
    }

    #[test]
    fn a_new_config_revision_is_written_at_once_and_churn_waits() {
        let before = running(7);
        let mut churn = running(7);
        churn.unreachable_count = 40;
        assert!(!at_once(&before, &churn), "peers flapping wait out the gap");
        assert!(
            at_once(&before, &running(9)),
            "a new revision goes out at once"
        );
        let mut renamed = running(7);
        renamed.lease_key = "198.19.2.0-24".into();
        assert!(at_once(&before, &renamed), "a new name goes out at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_revision_cuts_short_a_gap_that_churn_is_waiting_out() {
        let written = running(7);
        let (tx, mut rx) = watch::channel(written.clone());
        let start = Instant::now();
        let mut churn = running(7);
        churn.unreachable_count = 40;
        tx.send(churn.clone()).unwrap();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            churn.unreachable_count = 41;
            tx.send(churn).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(running(9)).unwrap();
            tx
        });
        wait_gap(&mut rx, &written, start + MIN_GAP).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "more churn waits, a revision does not"
        );
        assert_eq!(rx.borrow().config.as_ref().map(|c| c.rev), Some(9));
        drop(sender.await.unwrap());

        // Churn alone waits the whole gap.
        let (_tx, mut rx) = watch::channel(written.clone());
        let start = Instant::now();
        wait_gap(&mut rx, &written, start + MIN_GAP).await;
        assert_eq!(start.elapsed(), MIN_GAP);
    }
}
