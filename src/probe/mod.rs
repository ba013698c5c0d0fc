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
//! One tokio task drives everything ([`driver`]): it sends each probe in its slot (see
//! [`health::Grid`]; slots under 50 ms apart share a wake-up; at most `--probe-max-rate`
//! probes a second, the interval stretching beyond that many peers) and keeps the probes in flight
//! as futures in one set, each ending at its timeout, so nothing is spawned per probe and
//! 1,000 peers at 1 s with a 1 s timeout keep at most about 1,000 small futures alive. Which
//! peers are down is kept as states change ([`down`]), never recounted over every peer, and
//! changes of state are logged a second's worth at a time, one line per kind.
//!
//! Cost at 1,000 peers (BENCHMARKS.md, "Peer probes"): n / interval echo requests and as many
//! replies per second, 200/s at the default 5 s and 1,000/s at 1 s, each request a 36-byte
//! IPv4 packet; 1.2–1.6 % of one core at 5 s and 1.8–2.4 % at 1 s in two runs on the
//! benchmark machine, the kernel's share of sending and receiving included.

mod args;
mod down;
mod driver;
pub mod health;
mod socket;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use serde::{Serialize, Serializer};
use surge_ping::{PingIdentifier, ICMP};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::lease::Side;

pub use args::{ProbeArgs, ProbeConfigError};
use down::{Down, Seen};
pub use down::{UnreachableHosts, NAMED};
use health::{Health, Rotation};
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
    /// The most probes a second, to all peers together (see [`ProbeConfig::interval_for`]).
    pub max_rate: u32,
}

/// A peer to probe: its name (its subnet in the family, e.g. "198.19.2.0/24"), the address
/// probed, and the host it belongs to (its lease's IPv4 subnet, which names the lease, and
/// public address), by which it is counted and named.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub id: String,
    pub addr: IpAddr,
    pub host: Ipv4Net,
    pub public_ip: IpAddr,
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
    /// The address an operator knows the peer's host by: its lease's public address in the
    /// family (PublicIPv6 for an IPv6 side that has one, else PublicIP).
    pub public_ip: IpAddr,
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
    unreachable: watch::Sender<UnreachableHosts>,
}

#[derive(Default)]
struct Peers {
    by_id: HashMap<String, Peer>,
    rotation: Rotation<String>,
    /// Tells a peer apart from an earlier one with the same id, so a late result for a peer
    /// that was removed or re-addressed is dropped.
    next_gen: u64,
    /// Peers just added, each probed once soon (see [`driver::first_probe_jitter`]) besides
    /// their turns in the rotation.
    early: Vec<String>,
    down: Down,
}

struct Peer {
    addr: IpAddr,
    host: Ipv4Net,
    public_ip: IpAddr,
    gen: u64,
    health: Health,
}

impl Peer {
    fn seen<'a>(&self, id: &'a str) -> Seen<'a> {
        Seen {
            id,
            host: self.host,
            state: self.health.state(),
            since: self.health.since(),
        }
    }

    /// How logs name the peer: its subnet and public address.
    fn label(&self, id: &str) -> String {
        format!("{id} at {}", self.public_ip)
    }
}

impl Peers {
    /// Removes a peer; whether it was there.
    fn forget(&mut self, id: &str) -> bool {
        let Some(peer) = self.by_id.remove(id) else {
            return false;
        };
        self.down.leave(peer.seen(id));
        true
    }

    /// A known peer at the same address takes the target's host and public address and keeps
    /// its state; whether it was one.
    fn relabel(&mut self, t: &Target) -> bool {
        let Some(peer) = self.by_id.get_mut(&t.id).filter(|p| p.addr == t.addr) else {
            return false;
        };
        if (peer.host, peer.public_ip) != (t.host, t.public_ip) {
            self.down.leave(peer.seen(&t.id));
            (peer.host, peer.public_ip) = (t.host, t.public_ip);
            self.down.enter(peer.seen(&t.id));
        }
        true
    }

    fn insert(&mut self, t: Target, now: SystemTime) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let peer = Peer {
            addr: t.addr,
            host: t.host,
            public_ip: t.public_ip,
            gen,
            health: Health::new(now),
        };
        self.down.enter(peer.seen(&t.id));
        self.by_id.insert(t.id, peer);
    }
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
        let v4 = socket::open(ICMP::V4).map_err(|source| ProbeError {
            family: "IPv4",
            source,
        })?;
        let v6 = match socket::open(ICMP::V6) {
            Ok(c) => Some(c),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
            Err(source) => {
                return Err(ProbeError {
                    family: "IPv6",
                    source,
                })
            }
        };
        let (unreachable, _) = watch::channel(UnreachableHosts::default());
        let shared = Arc::new(Shared {
            cfg,
            observe,
            peers: Mutex::new(Peers::default()),
            changed: Notify::new(),
            unreachable,
        });
        let ident = PingIdentifier(rand::random());
        let task = tokio::spawn(driver::run(shared.clone(), v4, v6, ident));
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
        let mut gone: BTreeSet<String> =
            (remove.iter()).filter(|id| p.forget(id)).cloned().collect();
        let mut added = Vec::new();
        for t in set {
            if p.relabel(&t) {
                continue;
            }
            if p.forget(&t.id) {
                gone.insert(t.id.clone());
            }
            added.push(t.id.clone());
            p.insert(t, now);
        }
        if gone.is_empty() && added.is_empty() {
            self.shared.publish_unreachable(&p);
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
        // A peer just added is probed early, but no more of them at once than a second's
        // worth: a host starting among 5,000 peers does not send 5,000 probes in a burst.
        let early = self.shared.cfg.max_rate as usize;
        p.early.extend(added.iter().take(early).cloned());
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

    /// A receiver of the unreachable hosts (a count and the longest unreachable few). It is
    /// marked changed only when that changes (a host goes down or comes back, an unreachable
    /// peer is removed), never on a timer, so a status record written on it is written on
    /// change only.
    pub fn unreachable(&self) -> watch::Receiver<UnreachableHosts> {
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

    /// Tells the owner the unreachable hosts when they changed: O(NAMED), whatever the
    /// number of peers.
    fn publish_unreachable(&self, p: &Peers) {
        let now = p.down.summary();
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
            public_ip: "198.18.0.2".parse().unwrap(),
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
                "state": "reachable", "last_rtt_ms": 1.5, "loss": 0.25, "since": "2027-01-15T08:00:00.000Z",
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
