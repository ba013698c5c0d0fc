//! The prober's task: sends each probe in its slot, keeps the probes in flight as futures in
//! one set, takes their outcomes into each peer's health, and logs the changes of state a
//! second's worth at a time (one line per kind, a few peers named), so a partition that takes
//! thousands of peers away writes a few lines, not thousands.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use surge_ping::{Client, IcmpPacket, PingIdentifier, PingSequence, SurgeError};
use tokio::time::Instant;

use super::health::Grid;
use super::{Outcome, PeerState, Peers, ProbeEvent, Shared};

/// What a finished probe reports back to the loop.
struct Finished {
    id: String,
    gen: u64,
    outcome: Outcome,
    failed: bool,
}

type InFlight = Pin<Box<dyn std::future::Future<Output = Finished> + Send>>;

/// The shortest time between two wake-ups that send probes; see the loop in [`run`]. At
/// the default 50 probes a second, two or three leave together every 50 ms: 20 wake-ups a
/// second whatever the number of peers.
const WAKE_GAP: Duration = Duration::from_millis(50);

/// A random wait, up to half a second (at most half the interval), before the first slot of a
/// changed peer set and before the early probe of each peer just added. Two hosts that learn
/// of each other at once would otherwise probe each other in the same millisecond; over
/// WireGuard both would start a handshake, each would answer the other's, and neither's own
/// would complete, which stalls the pair for WireGuard's 5 s retry. The early probe itself
/// matters too: a host that just joined sends to each new peer within half a second, so a
/// handshake a peer started before the joining host's device knew it (and that was dropped)
/// is answered by one of the joining host's own, not by WireGuard's retry 5 s later.
pub(super) fn first_probe_jitter(interval: Duration) -> Duration {
    let most = (interval / 2).min(Duration::from_millis(500));
    most.mul_f64(rand::random::<f64>())
}

/// Payload of every echo request: small, so 1,000 peers cost little bandwidth.
const PAYLOAD: [u8; 8] = *b"weftprob";

/// The prober's task: the grid of slots, the probes in flight, the early probes of peers just
/// added, and the sockets.
struct Driver {
    shared: Arc<Shared>,
    grid: Grid,
    in_flight: FuturesUnordered<InFlight>,
    seq: u16,
    v4: Client,
    v6: Option<Client>,
    ident: PingIdentifier,
    warned_no_v6: bool,
    last_wake: Instant,
    /// Early probes of peers just added: when each is due.
    early: Vec<(Instant, String)>,
    /// Changes of state not logged yet, and when they will be.
    changes: Changes,
}

/// How often changes of state are logged at most: those of one second share a line.
const LOG_GAP: Duration = Duration::from_secs(1);

/// Peers logged by name in one line; the others are counted.
const LOG_NAMED: usize = 5;

/// Changes of state waiting for their log line: the peers (as logs name them) that became
/// unreachable, and those that answer again.
#[derive(Default)]
struct Changes {
    down: Vec<String>,
    up: Vec<String>,
    due: Option<Instant>,
}

impl Changes {
    fn push(&mut self, state: PeerState, label: String) {
        match state {
            PeerState::Unreachable => self.down.push(label),
            PeerState::Reachable => self.up.push(label),
            PeerState::Unknown => return,
        }
        self.due.get_or_insert_with(|| Instant::now() + LOG_GAP);
    }

    /// One line for the peers that went down, one for those that came back.
    fn flush(&mut self, down_after: u32) {
        self.due = None;
        let (down, up) = (std::mem::take(&mut self.down), std::mem::take(&mut self.up));
        if !down.is_empty() {
            let peers = crate::logging::some_of(&down, LOG_NAMED);
            let n = down.len();
            tracing::warn!(
                count = n,
                peers,
                losses = down_after,
                "{n} {} unreachable",
                plural(n)
            );
        }
        if !up.is_empty() {
            let peers = crate::logging::some_of(&up, LOG_NAMED);
            let n = up.len();
            tracing::info!(count = n, peers, "{n} {} answering", plural(n));
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "peer"
    } else {
        "peers"
    }
}

pub(super) async fn run(
    shared: Arc<Shared>,
    v4: Client,
    v6: Option<Client>,
    ident: PingIdentifier,
) {
    let interval = shared.cfg.interval;
    Driver {
        shared,
        grid: Grid::new(Instant::now().into_std(), 0, interval),
        in_flight: FuturesUnordered::new(),
        seq: 0,
        v4,
        v6,
        ident,
        warned_no_v6: false,
        last_wake: Instant::now(),
        early: Vec::new(),
        changes: Changes::default(),
    }
    .run()
    .await
}

impl Driver {
    async fn run(mut self) {
        loop {
            // Slots closer together than WAKE_GAP share one wake-up: the probes still leave
            // spread out (never more than a WAKE_GAP's worth together), for far fewer wake-ups.
            let due =
                (self.grid.next_due()).map(|d| Instant::from_std(d).max(self.last_wake + WAKE_GAP));
            let early_due = self.early.iter().map(|(t, _)| *t).min();
            let shared = self.shared.clone();
            tokio::select! {
                _ = shared.changed.notified() => self.on_changed(),
                _ = sleep_until(early_due) => self.on_early(),
                _ = sleep_until(due) => self.on_due(),
                _ = sleep_until(self.changes.due) => self.changes.flush(shared.cfg.down_after),
                Some(f) = self.in_flight.next(), if !self.in_flight.is_empty() => self.on_finished(f),
            }
        }
    }

    /// The peer set changed: its slots are spread anew, and the peers just added get an early
    /// probe each.
    fn on_changed(&mut self) {
        let interval = self.shared.cfg.interval;
        let now = Instant::now();
        let mut p = self.shared.lock();
        let n = p.rotation.len();
        let added = p
            .early
            .drain(..)
            .map(|id| (now + first_probe_jitter(interval), id));
        self.early.extend(added);
        drop(p);
        let at = now.into_std() + first_probe_jitter(interval);
        self.grid = Grid::new(at, n, self.shared.cfg.interval_for(n));
    }

    fn on_early(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.early.drain(..).partition(|(t, _)| *t <= now);
        self.early = later;
        let shared = self.shared.clone();
        let mut p = shared.lock();
        for (_, id) in due {
            self.launch(&mut p, id);
        }
    }

    fn on_due(&mut self) {
        self.last_wake = Instant::now();
        let now = self.last_wake.into_std();
        let shared = self.shared.clone();
        while self.grid.take(now) {
            let mut p = shared.lock();
            let Some(id) = p.rotation.turn() else { break };
            self.launch(&mut p, id);
        }
    }

    /// Sends one probe to the peer `id`, if it is still known and its family can be probed.
    fn launch(&mut self, p: &mut Peers, id: String) {
        let Some(peer) = p.by_id.get_mut(&id) else {
            return;
        };
        let client = match (peer.addr, &self.v6) {
            (IpAddr::V4(_), _) => self.v4.clone(),
            (IpAddr::V6(_), Some(c)) => c.clone(),
            (IpAddr::V6(_), None) => {
                if !self.warned_no_v6 {
                    tracing::warn!(peer = %id, addr = %peer.addr, "IPv6 is not supported on this host: IPv6 peers are not probed");
                    self.warned_no_v6 = true;
                }
                return;
            }
        };
        peer.health.sent();
        self.seq = self.seq.wrapping_add(1);
        let (gen, addr, timeout) = (peer.gen, peer.addr, self.shared.cfg.timeout);
        let seq = PingSequence(self.seq);
        let probe = probe(client, id, gen, addr, self.ident, seq, timeout);
        self.in_flight.push(Box::pin(probe));
    }

    /// A probe ended: its peer's health takes the outcome (unless the peer went or moved
    /// meanwhile); a change of state is counted, published and queued for the log.
    fn on_finished(&mut self, f: Finished) {
        let shared = &self.shared;
        let cfg = shared.cfg;
        (shared.observe)(ProbeEvent::Finished {
            outcome: f.outcome,
            failed: f.failed,
        });
        let mut guard = shared.lock();
        let p = &mut *guard;
        let Some(peer) = p.by_id.get_mut(&f.id).filter(|peer| peer.gen == f.gen) else {
            return;
        };
        let was = peer.seen(&f.id);
        if !(peer.health).record(f.outcome, cfg.down_after, cfg.window, SystemTime::now()) {
            return;
        }
        let now = peer.seen(&f.id);
        p.down.leave(was);
        p.down.enter(now);
        self.changes.push(now.state, peer.label(&f.id));
        shared.publish_unreachable(p);
        let (reachable, unreachable) = p.down.counts();
        (shared.observe)(ProbeEvent::Counts {
            reachable,
            unreachable,
        });
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One echo request and its answer, ending at the timeout at the latest.
async fn probe(
    client: Client,
    id: String,
    gen: u64,
    addr: IpAddr,
    ident: PingIdentifier,
    seq: PingSequence,
    timeout: Duration,
) -> Finished {
    let mut pinger = client.pinger(addr, ident).await;
    pinger.timeout(timeout);
    let (outcome, failed) = match pinger.ping(seq, &PAYLOAD).await {
        Ok((packet, rtt)) if is_echo_reply(&packet) => (Outcome::Answer(rtt), false),
        // An ICMP error about the probe (e.g. host unreachable) is as good as no answer.
        Ok(_) => (Outcome::Lost, false),
        Err(SurgeError::Timeout { .. }) => (Outcome::Lost, false),
        Err(e) => {
            tracing::debug!(peer = %id, %addr, error = %e, "peer probe failed");
            (Outcome::Lost, true)
        }
    };
    Finished {
        id,
        gen,
        outcome,
        failed,
    }
}

fn is_echo_reply(p: &IcmpPacket) -> bool {
    // ICMP type 0 and ICMPv6 type 129 are the echo replies (RFC 792, RFC 4443).
    match p {
        IcmpPacket::V4(p) => p.get_icmp_type().0 == 0,
        IcmpPacket::V6(p) => p.get_icmpv6_type().0 == 129,
    }
}
