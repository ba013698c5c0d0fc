//! Peer probes: ICMP echo to every peer's overlay address (its tunnel address for VXLAN and
//! WireGuard, an address along the route for host-gw), spread evenly over an interval, with a
//! per-peer reachability state for `/peers`, metrics and the host's status record.
//!
//! Echo requests and replies go through surge-ping, one socket per address family (raw, as
//! weftd holds CAP_NET_RAW, with a kernel filter that passes only echo replies and ICMP
//! errors; an unprivileged ICMP datagram socket where raw is refused). flannel hosts answer
//! too: the kernel replies on the tunnel address, nothing of weft's runs there. A reply counts
//! for its probe only when the peer's address, the identifier (random per prober) and the
//! sequence (one counter for all probes, so unique among those in flight while fewer than
//! 65,536 are) all match: replies are never confused between peers or with another program's.
//!
//! One tokio task drives everything: it sends each probe in its slot (see [`health::Grid`];
//! slots under 10 ms apart share a wake-up) and keeps the probes in flight as futures in one
//! set, each ending at its timeout, so nothing is spawned per probe and 1,000 peers at 1 s
//! with a 1 s timeout keep at most about 1,000 small futures alive.
//!
//! Cost at 1,000 peers (BENCHMARKS.md, "Peer probes"): n / interval echo requests and as many
//! replies per second, 200/s at the default 5 s and 1,000/s at 1 s, each request a 36-byte
//! IPv4 packet; 1.2–1.6 % of one core at 5 s and 1.8–2.4 % at 1 s in two runs on the
//! benchmark machine, the kernel's share of sending and receiving included.

mod args;
pub mod health;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Serialize, Serializer};
use surge_ping::{Client, IcmpPacket, PingIdentifier, PingSequence, SurgeError, ICMP};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lease::Side;

pub use args::{ProbeArgs, ProbeConfigError};
use health::{Grid, Health, Rotation};
pub use health::{Outcome, PeerState};

/// The prober's settings (see [`ProbeArgs`] for the flags and [`ProbeConfig::validated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between two probes of the same peer.
    pub interval: Duration,
    /// How long an answer is waited for; shorter than `interval`.
    pub timeout: Duration,
    /// Consecutive losses that make a peer unreachable.
    pub down_after: u32,
    /// Finished probes the loss figure covers.
    pub window: u32,
}

/// A peer to probe: its name (the lease key, e.g. "198.19.2.0-24"), the address probed and
/// the peer's public address (shown in `/peers`, where an operator looks for the host).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub id: String,
    pub addr: IpAddr,
    pub public_ip: Option<IpAddr>,
}

/// Where one peer is probed, and the public address it is known by (its lease's `PublicIP`,
/// or `PublicIPv6` for the IPv6 side): the value of [`crate::plan::Desired::probes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeTo {
    pub addr: IpAddr,
    pub public_ip: Option<IpAddr>,
}

/// The address that probes a peer along the path its traffic takes, from one family's side of
/// its lease. With a tunnel device (VXLAN, WireGuard) it is the peer's tunnel address, its
/// subnet's network address (flannel and weft give the device `<subnet address>/32`, /128 in
/// IPv6; flannel hosts answer there too). With host-gw it is the peer's public address, the
/// next hop of the route to its subnet (the subnet's own addresses need not exist on the
/// peer: its bridge comes with the first container).
pub fn probe_addr(side: &Side<'_>, tunnel: bool) -> Option<IpAddr> {
    if tunnel {
        Some(side.subnet.network())
    } else {
        side.public_ip
    }
}

/// One peer as `/peers` shows it (serialises to JSON as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatus {
    pub id: String,
    pub addr: IpAddr,
    /// The peer's public address from its lease (null for a dual-stack peer's IPv6 side when
    /// it has no `PublicIPv6`).
    pub public_ip: Option<IpAddr>,
    pub state: PeerState,
    /// Round trip of the latest answer (in JSON: `last_rtt_ms`, a float, or null).
    #[serde(rename = "last_rtt_ms", serialize_with = "as_millis")]
    pub last_rtt: Option<Duration>,
    /// Share of the last `window` finished probes that were lost, 0.0 to 1.0.
    pub loss: f64,
    /// When `state` last changed, or when the peer was added (in JSON: RFC 3339).
    #[serde(serialize_with = "as_rfc3339")]
    pub since: SystemTime,
    /// Probes sent and lost since the peer was added.
    pub sent: u64,
    pub lost: u64,
}

fn as_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

fn as_rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Opening a probe socket failed.
#[derive(Debug, thiserror::Error)]
#[error("opening an {family} ICMP socket for peer probes: {source}")]
pub struct ProbeError {
    pub family: &'static str,
    #[source]
    pub source: io::Error,
}

/// The ids of the peers that are unreachable now.
pub type Unreachable = BTreeSet<String>;

/// What the prober tells its owner as it goes (for metrics): every finished probe, and the
/// counts of reachable and unreachable peers whenever a peer's state changes.
#[derive(Debug, Clone, Copy)]
pub enum ProbeEvent {
    Finished {
        outcome: Outcome,
        /// The probe could not be sent or its socket failed (not a plain timeout).
        failed: bool,
    },
    Counts {
        reachable: u64,
        unreachable: u64,
    },
}

/// Called on the prober's task: must be quick and must not block.
pub type Observer = Box<dyn Fn(ProbeEvent) + Send + Sync>;

/// A running prober. Dropping it stops the probes and closes the sockets.
pub struct Prober {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    cfg: ProbeConfig,
    observe: Observer,
    peers: Mutex<Peers>,
    /// Wakes the task when the peer set changed, so the slots are spread anew.
    changed: Notify,
    unreachable: watch::Sender<Unreachable>,
}

#[derive(Default)]
struct Peers {
    by_id: HashMap<String, Peer>,
    rotation: Rotation<String>,
    /// Tells a peer apart from an earlier one with the same id, so a late result for a peer
    /// that was removed or re-addressed is dropped.
    next_gen: u64,
    /// Peers just added, each probed once soon (see [`first_probe_jitter`]) besides their
    /// turns in the rotation.
    early: Vec<String>,
}

struct Peer {
    addr: IpAddr,
    public_ip: Option<IpAddr>,
    gen: u64,
    health: Health,
}

impl Prober {
    /// Opens the sockets in the calling thread's network namespace and starts probing (no
    /// peers yet: see [`Prober::set_peers`]). Must be called within a tokio runtime. A host
    /// without IPv6 (the family not supported) gets no IPv6 socket and logs its IPv6 peers
    /// as not probed.
    pub fn start(cfg: ProbeConfig) -> Result<Prober, ProbeError> {
        Prober::start_observed(cfg, Box::new(|_| {}))
    }

    /// [`Prober::start`] with `observe` told of every finished probe and state change.
    pub fn start_observed(cfg: ProbeConfig, observe: Observer) -> Result<Prober, ProbeError> {
        let v4 = open(ICMP::V4).map_err(|source| ProbeError {
            family: "IPv4",
            source,
        })?;
        let v6 = match open(ICMP::V6) {
            Ok(c) => Some(c),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
            Err(source) => {
                return Err(ProbeError {
                    family: "IPv6",
                    source,
                })
            }
        };
        let (unreachable, _) = watch::channel(Unreachable::new());
        let shared = Arc::new(Shared {
            cfg,
            observe,
            peers: Mutex::new(Peers::default()),
            changed: Notify::new(),
            unreachable,
        });
        let ident = PingIdentifier(rand::random());
        let task = tokio::spawn(run(shared.clone(), v4, v6, ident));
        Ok(Prober { shared, task })
    }

    /// Replaces the set of peers. A peer whose id and address are unchanged keeps its state
    /// and counters; a new peer (or one with a new address) starts Unknown and is probed in
    /// the next slots. Duplicate ids: the last one wins.
    pub fn set_peers(&self, targets: Vec<Target>) {
        let wanted: HashMap<String, IpAddr> =
            targets.iter().map(|t| (t.id.clone(), t.addr)).collect();
        let remove: Vec<String> = {
            let p = self.shared.lock();
            (p.by_id.keys())
                .filter(|id| !wanted.contains_key(*id))
                .cloned()
                .collect()
        };
        self.change(targets, &remove);
    }

    /// Changes some peers: `remove` go, each of `set` is added, or moved to its new address
    /// (then it starts anew). Peers named in neither keep their state. Only what changed is
    /// touched, so a lease event costs the prober nothing that grows with the fleet.
    pub fn change(&self, set: Vec<Target>, remove: &[String]) {
        let now = SystemTime::now();
        let mut p = self.shared.lock();
        let mut gone: BTreeSet<String> = remove
            .iter()
            .filter(|id| p.by_id.remove(*id).is_some())
            .cloned()
            .collect();
        let mut added = Vec::new();
        for t in set {
            match p.by_id.get_mut(&t.id) {
                // A new public address with the same probe address (a VXLAN peer renumbered)
                // keeps the peer's state: the path probed is the same.
                Some(peer) if peer.addr == t.addr => {
                    peer.public_ip = t.public_ip;
                    continue;
                }
                Some(_) => {
                    gone.insert(t.id.clone());
                }
                None => {}
            }
            let gen = p.next_gen;
            p.next_gen += 1;
            let fresh = Peer {
                addr: t.addr,
                public_ip: t.public_ip,
                gen,
                health: Health::new(now),
            };
            if p.by_id.insert(t.id.clone(), fresh).is_none() || gone.contains(&t.id) {
                added.push(t.id);
            }
        }
        if gone.is_empty() && added.is_empty() {
            return;
        }
        if !gone.is_empty() {
            p.rotation.retain(|id| !gone.contains(id));
            p.early.retain(|id| !gone.contains(id));
        }
        added.dedup();
        tracing::debug!(
            peers = p.by_id.len(),
            added = added.len(),
            removed = gone.len(),
            "probe targets changed"
        );
        p.early.extend(added.iter().cloned());
        p.rotation.add_next(added);
        self.shared.publish_unreachable(&p);
        drop(p);
        self.shared.changed.notify_one();
    }

    /// Every peer's status, ordered by id.
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        let p = self.shared.lock();
        let mut v: Vec<PeerStatus> = p
            .by_id
            .iter()
            .map(|(id, peer)| PeerStatus {
                id: id.clone(),
                addr: peer.addr,
                public_ip: peer.public_ip,
                state: peer.health.state(),
                last_rtt: peer.health.last_rtt(),
                loss: peer.health.loss(),
                since: peer.health.since(),
                sent: peer.health.sent_count(),
                lost: peer.health.lost_count(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// A receiver of the set of unreachable peer ids. It is marked changed only when that set
    /// changes (a peer goes down or comes back, an unreachable peer is removed), never on a
    /// timer, so a status record written on it is written on change only.
    pub fn unreachable(&self) -> watch::Receiver<Unreachable> {
        self.shared.unreachable.subscribe()
    }

    /// The settings the prober runs with.
    pub fn config(&self) -> ProbeConfig {
        self.shared.cfg
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Peers> {
        // A panic while holding the lock leaves plain counters behind, still usable.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_unreachable(&self, p: &Peers) {
        let now: Unreachable = p
            .by_id
            .iter()
            .filter(|(_, peer)| peer.health.state() == PeerState::Unreachable)
            .map(|(id, _)| id.clone())
            .collect();
        self.unreachable.send_if_modified(|cur| {
            if *cur == now {
                false
            } else {
                *cur = now;
                true
            }
        });
    }
}

fn open(kind: ICMP) -> io::Result<Client> {
    let cfg = surge_ping::Config::builder()
        .kind(kind)
        .sock_type_hint(socket2::Type::RAW)
        .build();
    let client = Client::new(&cfg)?;
    let socket = client.get_socket();
    // A datagram ICMP socket only ever sees its own replies; a raw one sees every ICMP packet
    // the host receives, including the echo requests of every peer probing this host.
    if socket.get_type() == socket2::Type::RAW {
        pass_only_replies(socket.get_native_sock(), kind)?;
    }
    Ok(client)
}

/// ICMP_FILTER and ICMP6_FILTER (linux/icmp.h, linux/icmpv6.h): option 1 at SOL_RAW and
/// IPPROTO_ICMPV6, a bit map of types in which a set bit drops the type.
const ICMP_FILTER: libc::c_int = 1;
const ICMP6_FILTER: libc::c_int = 1;

/// Lets through to a raw socket only what can answer a probe: echo replies and the errors
/// that quote a request (destination unreachable, time exceeded, parameter problem; for
/// ICMPv6 also packet too big), so the other ICMP traffic a host gets wakes nobody.
fn pass_only_replies(fd: std::os::fd::RawFd, kind: ICMP) -> io::Result<()> {
    let (level, name, map) = match kind {
        ICMP::V4 => {
            let pass = [0u8, 3, 11, 12];
            let mut map = [u32::MAX; 1];
            for t in pass {
                map[0] &= !(1 << t);
            }
            (libc::SOL_RAW, ICMP_FILTER, map.to_vec())
        }
        ICMP::V6 => {
            let pass = [1u8, 2, 3, 4, 129];
            let mut map = [u32::MAX; 8];
            for t in pass {
                map[usize::from(t >> 5)] &= !(1 << (t & 31));
            }
            (libc::IPPROTO_ICMPV6, ICMP6_FILTER, map.to_vec())
        }
    };
    // SAFETY: fd is the client's open socket; the option value is `map`, valid for its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            map.as_ptr().cast(),
            (map.len() * std::mem::size_of::<u32>()) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a finished probe reports back to the loop.
struct Finished {
    id: String,
    gen: u64,
    outcome: Outcome,
    failed: bool,
}

type InFlight = Pin<Box<dyn std::future::Future<Output = Finished> + Send>>;

/// The shortest time between two wake-ups that send probes; see the loop in [`run`].
const WAKE_GAP: Duration = Duration::from_millis(10);

/// A random wait, up to half a second (at most half the interval), before the first slot of a
/// changed peer set and before the early probe of each peer just added. Two hosts that learn
/// of each other at once would otherwise probe each other in the same millisecond; over
/// WireGuard both would start a handshake, each would answer the other's, and neither's own
/// would complete, which stalls the pair for WireGuard's 5 s retry. The early probe itself
/// matters too: a host that just joined sends to each new peer within half a second, so a
/// handshake a peer started before the joining host's device knew it (and that was dropped)
/// is answered by one of the joining host's own, not by WireGuard's retry 5 s later.
fn first_probe_jitter(interval: Duration) -> Duration {
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
}

async fn run(shared: Arc<Shared>, v4: Client, v6: Option<Client>, ident: PingIdentifier) {
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
        (self.grid).reanchor(now.into_std() + first_probe_jitter(interval), n);
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
    /// meanwhile), and a change of state is told.
    fn on_finished(&mut self, f: Finished) {
        let shared = &self.shared;
        let cfg = shared.cfg;
        (shared.observe)(ProbeEvent::Finished {
            outcome: f.outcome,
            failed: f.failed,
        });
        let mut p = shared.lock();
        let Some(peer) = p.by_id.get_mut(&f.id).filter(|peer| peer.gen == f.gen) else {
            return;
        };
        if !(peer.health).record(f.outcome, cfg.down_after, cfg.window, SystemTime::now()) {
            return;
        }
        let state = peer.health.state();
        match f.outcome {
            Outcome::Answer(rtt) => {
                tracing::info!(peer = %f.id, addr = %peer.addr, ?state, rtt_ms = rtt.as_secs_f64() * 1000.0, "peer probe answered")
            }
            Outcome::Lost => {
                tracing::warn!(peer = %f.id, addr = %peer.addr, ?state, losses = cfg.down_after, "peer probes lost")
            }
        }
        shared.publish_unreachable(&p);
        let count = |s: PeerState| {
            p.by_id
                .values()
                .filter(|peer| peer.health.state() == s)
                .count() as u64
        };
        let (reachable, unreachable) = (count(PeerState::Reachable), count(PeerState::Unreachable));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_addr_is_the_tunnel_address_or_the_next_hop() {
        let v4 = Side {
            subnet: "198.19.2.0/24".parse().unwrap(),
            public_ip: Some("198.18.0.2".parse().unwrap()),
            backend_data: None,
        };
        assert_eq!(probe_addr(&v4, true), Some("198.19.2.0".parse().unwrap()));
        assert_eq!(probe_addr(&v4, false), Some("198.18.0.2".parse().unwrap()));
        let v6 = Side {
            subnet: "2001:db8:2::/64".parse().unwrap(),
            public_ip: None,
            backend_data: None,
        };
        assert_eq!(probe_addr(&v6, true), Some("2001:db8:2::".parse().unwrap()));
        assert_eq!(probe_addr(&v6, false), None);
    }

    #[test]
    fn probe_status_serialises_for_the_peers_endpoint() {
        let s = PeerStatus {
            id: "198.19.2.0-24".into(),
            addr: "198.19.2.0".parse().unwrap(),
            public_ip: Some("198.18.0.2".parse().unwrap()),
            state: PeerState::Reachable,
            last_rtt: Some(Duration::from_micros(1500)),
            loss: 0.25,
            since: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            sent: 8,
            lost: 2,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "198.19.2.0-24", "addr": "198.19.2.0", "public_ip": "198.18.0.2",
                "state": "reachable",
                "last_rtt_ms": 1.5, "loss": 0.25, "since": "2027-01-15T08:00:00.000Z",
                "sent": 8, "lost": 2
            })
        );
        let none = PeerStatus {
            last_rtt: None,
            state: PeerState::Unknown,
            ..s
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap()["last_rtt_ms"],
            serde_json::Value::Null
        );
        assert_eq!(serde_json::to_value(&none).unwrap()["state"], "unknown");
    }
}
