//! Which backends a host runs while the fleet moves from one to another, and when a pair may
//! use the new one. A host told to move runs the new backend beside the old; its lease keeps
//! the old one in flannel's fields (flannel hosts keep talking it) and names the new one in
//! `WeftBackends`. Each pair uses the new backend once both ends advertise it and both
//! advertisements have been known here for [`SETTLE`]: the other end adds this host as a peer
//! of its new device as soon as it reads the lease, so by then it takes what this host sends.
//! The old backend goes once no peer needs it for [`DROP_AFTER`] more.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::config::BackendConfig;
use crate::lease::{Lease, LeaseAttrs};

/// How long both ends' advertisements of the new backend must have been known before a pair
/// uses it: far above the milliseconds etcd takes to deliver a lease to every host.
pub const SETTLE: Duration = Duration::from_secs(1);

/// How much later than the other end a pair's end with the higher subnet moves: the lower
/// one sends first and so alone starts the new backend's handshake (WireGuard's), which the
/// higher one answers before it sends over it. Two ends that start handshakes at one instant
/// were seen to lose 1–5 s of traffic (wireguard-go retrying after its 5 s rekey timeout).
pub const LEAD: Duration = Duration::from_secs(1);

/// How long the old backend stays after the last pair moved off it: a peer that read the
/// same leases a moment later may still send over it meanwhile.
pub const DROP_AFTER: Duration = Duration::from_secs(3);

/// Where a host stands in a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMove {
    /// No migration under way: the config's backend.
    Steady,
    /// Not told to move yet: the old backend.
    Waiting,
    /// Told to move, but the new backend cannot run here (why): the old backend.
    Failed(String),
    /// Both: the new one with every peer that speaks it, the old one with the rest.
    Moving,
    /// The new backend only.
    Moved,
}

impl HostMove {
    /// The word `weftctl` and the status record use.
    pub fn name(&self) -> &'static str {
        match self {
            HostMove::Steady => "steady",
            HostMove::Waiting => "waiting",
            HostMove::Failed(_) => "failed",
            HostMove::Moving => "moving",
            HostMove::Moved => "moved",
        }
    }
}

/// What a host runs: its backends, the preferred (the config's) first.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub backends: Vec<BackendConfig>,
    /// The one in the lease's flannel fields (`BackendType`, `BackendData`).
    pub primary: usize,
    pub state: HostMove,
}

/// What decides a host's backends.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The config's backend.
    pub target: &'a BackendConfig,
    /// The backend of the migration under way, when it is another type.
    pub from: Option<&'a BackendConfig>,
    /// Whether the migration tells this host to move.
    pub selected: bool,
    /// Why the target cannot run here, once it failed.
    pub failed: Option<&'a str>,
    /// A moving host still runs the old backend (some peer needs it).
    pub keep_old: bool,
    /// This host's lease as etcd has it, if it has one.
    pub own: Option<&'a LeaseAttrs>,
}

/// The backends a host runs in `s`.
pub fn running(s: &Situation) -> Running {
    let Some(from) = s.from.filter(|f| f.type_name() != s.target.type_name()) else {
        return Running {
            backends: vec![s.target.clone()],
            primary: 0,
            state: HostMove::Steady,
        };
    };
    let speaks = |b: &BackendConfig| s.own.is_some_and(|o| o.speaks(b.type_name()).is_some());
    let (backends, state) = match s.failed {
        Some(why) if s.selected => (vec![from.clone()], HostMove::Failed(why.to_string())),
        _ if !s.selected => {
            // What it speaks already of the two (a host that moved before keeps that).
            let mut v: Vec<BackendConfig> = [s.target, from]
                .into_iter()
                .filter(|b| speaks(b))
                .cloned()
                .collect();
            if v.is_empty() {
                v.push(from.clone());
            }
            let state = match v.iter().any(|b| b.type_name() == s.target.type_name()) {
                true if v.len() == 1 => HostMove::Moved,
                true => HostMove::Moving,
                false => HostMove::Waiting,
            };
            (v, state)
        }
        _ if s.keep_old => (vec![s.target.clone(), from.clone()], HostMove::Moving),
        _ => (vec![s.target.clone()], HostMove::Moved),
    };
    // The lease keeps the type flannel hosts know it by while that one runs; a host that
    // has none yet advertises the old one, which every peer still speaks.
    let own_type = s.own.map(|o| o.backend_type.as_str());
    let primary = (backends.iter())
        .position(|b| Some(b.type_name()) == own_type)
        .unwrap_or(backends.len() - 1);
    Running {
        backends,
        primary,
        state,
    }
}

/// When each lease's advertisement of the preferred backend was first seen: what makes a
/// pair [settled](Settle::settled), and when the old backend may go.
#[derive(Debug, Default)]
pub struct Settle {
    backend: String,
    /// A lease's subnet → its advertisement (the backend's data, as text) and when it was
    /// first seen.
    seen: HashMap<Ipv4Net, (String, Instant)>,
}

/// Whether some peer still needs the old backend, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A peer speaks it and not the new one (a host that has not moved, a flannel host).
    Always,
    Until(Instant),
    No,
}

impl Settle {
    /// The advertisements of `backend` in `leases` as of `now`. An advertisement seen for the
    /// first time counts from `now`, unless `at_start`: weftd was not running when it was
    /// written, so its readers have had their moment; it counts as just settled.
    pub fn note(
        &mut self,
        backend: &str,
        leases: &[std::sync::Arc<Lease>],
        now: Instant,
        at_start: bool,
    ) {
        if self.backend != backend {
            self.backend = backend.to_string();
            self.seen.clear();
        }
        let first = if at_start {
            now.checked_sub(SETTLE).unwrap_or(now)
        } else {
            now
        };
        let mut keep = HashMap::with_capacity(leases.len());
        for l in leases {
            let Some(s) = l.attrs.speaks(backend) else {
                continue;
            };
            let id = format!("{:?}{:?}", s.data, s.v6_data);
            let at = match self.seen.get(&l.subnet) {
                Some((old, at)) if *old == id => *at,
                _ => first,
            };
            keep.insert(l.subnet, (id, at));
        }
        self.seen = keep;
    }

    /// When the advertisement of `subnet`, first seen `at`, counts as settled for the host
    /// of `own`: after [`SETTLE`], and [`LEAD`] more when the other end's subnet is lower.
    fn due(subnet: Ipv4Net, at: Instant, own: Ipv4Net) -> Instant {
        let lead = if subnet < own { LEAD } else { Duration::ZERO };
        at + SETTLE + lead
    }

    /// The subnets whose advertisement has settled at `now` for the host of `own`.
    pub fn settled(&self, now: Instant, own: Ipv4Net) -> BTreeSet<Ipv4Net> {
        (self.seen.iter())
            .filter(|(s, (_, at))| now >= Settle::due(**s, *at, own))
            .map(|(s, _)| *s)
            .collect()
    }

    /// The next moment an advertisement settles for the host of `own`, if one has yet to.
    pub fn next_settling(&self, now: Instant, own: Ipv4Net) -> Option<Instant> {
        (self.seen.iter())
            .map(|(s, (_, at))| Settle::due(*s, *at, own))
            .filter(|t| *t > now)
            .min()
    }

    /// How many advertisements (this host's own among them, and counted when it is not
    /// there yet) have yet to settle at `now`: pairs still to move.
    pub fn pending(&self, own: Ipv4Net, now: Instant) -> usize {
        let waiting = (self.seen.values())
            .filter(|(_, at)| now.duration_since(*at) < SETTLE)
            .count();
        waiting + usize::from(!self.seen.contains_key(&own))
    }

    /// Whether a host (lease `own`) still needs `old` to reach its peers in `leases`.
    pub fn old_needed(&self, old: &str, own: Ipv4Net, leases: &[std::sync::Arc<Lease>]) -> Need {
        let mut until: Option<Instant> = None;
        for l in leases {
            let spoken = l.attrs.spoken();
            let speaks = |t: &str| spoken.iter().any(|s| s.backend_type == t);
            if l.subnet != own && speaks(old) && !speaks(&self.backend) {
                return Need::Always;
            }
            if l.subnet == own || speaks(&self.backend) {
                match self.seen.get(&l.subnet) {
                    Some((_, at)) => until = until.max(Some(*at + SETTLE + LEAD + DROP_AFTER)),
                    None => return Need::Always,
                }
            }
        }
        until.map_or(Need::No, Need::Until)
    }
}

/// Whether some peer in `leases` speaks `old` and not `new`: a host that runs only `new`
/// must run `old` again to reach it (a host that has not moved joined, or a flannel host).
pub fn needs_old(old: &str, new: &str, own: Ipv4Net, leases: &[std::sync::Arc<Lease>]) -> bool {
    leases.iter().any(|l| {
        let spoken = l.attrs.spoken();
        let speaks = |t: &str| spoken.iter().any(|s| s.backend_type == t);
        l.subnet != own && speaks(old) && !speaks(new)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::lease;
    use std::sync::Arc;

    fn b(json: &str) -> BackendConfig {
        BackendConfig::parse(Some(&serde_json::from_str(json).unwrap())).unwrap()
    }

    fn moving(own: &LeaseAttrs) -> Situation<'_> {
        Situation {
            target: Box::leak(Box::new(b(r#"{"Type":"wireguard"}"#))),
            from: Some(Box::leak(Box::new(b(r#"{"Type":"vxlan"}"#)))),
            selected: true,
            failed: None,
            keep_old: true,
            own: Some(own),
        }
    }

    fn types(r: &Running) -> Vec<&str> {
        r.backends.iter().map(|b| b.type_name()).collect()
    }

    #[test]
    fn a_host_runs_what_the_migration_and_its_lease_say() {
        let vx = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1).attrs;
        let r = running(&moving(&vx));
        assert_eq!(
            (types(&r), r.primary, &r.state),
            (vec!["wireguard", "vxlan"], 1, &HostMove::Moving)
        );
        let r = running(&Situation {
            selected: false,
            ..moving(&vx)
        });
        assert_eq!(
            (types(&r), r.state.clone()),
            (vec!["vxlan"], HostMove::Waiting)
        );
        let r = running(&Situation {
            failed: Some("no wireguard-go"),
            ..moving(&vx)
        });
        assert_eq!(r.state, HostMove::Failed("no wireguard-go".into()));
        assert_eq!(types(&r), ["vxlan"]);
        let r = running(&Situation {
            keep_old: false,
            ..moving(&vx)
        });
        assert_eq!(
            (types(&r), r.primary, r.state.clone()),
            (vec!["wireguard"], 0, HostMove::Moved)
        );
        // Turned around: a host that moved keeps its lease's type first in flannel's fields.
        let mut wg = vx.clone();
        wg.backend_type = "wireguard".into();
        let s = moving(&wg);
        let back = Situation {
            target: s.from.unwrap(),
            from: Some(s.target),
            ..s
        };
        let r = running(&back);
        assert_eq!((types(&r), r.primary), (vec!["vxlan", "wireguard"], 1));
        // A host not told to move back stays on what its lease speaks.
        let r = running(&Situation {
            selected: false,
            ..back
        });
        assert_eq!(
            (types(&r), r.state.clone()),
            (vec!["wireguard"], HostMove::Waiting)
        );
    }

    #[test]
    fn pairs_settle_and_the_old_backend_goes_when_no_peer_needs_it() {
        let wg = |subnet: &str, extra: bool| {
            let mut l = lease(subnet, "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
            let data = serde_json::json!({"PublicKey": subnet, "Port": 51820});
            if extra {
                l.attrs.weft_backends =
                    Some(serde_json::json!({"wireguard": {"BackendData": data}}));
            }
            Arc::new(l)
        };
        let own: Ipv4Net = "198.19.1.0/24".parse().unwrap();
        let t0 = Instant::now();
        let mut s = Settle::default();
        let leases = vec![
            wg("198.19.1.0/24", true),
            wg("198.19.2.0/24", true),
            wg("198.19.3.0/24", false),
        ];
        s.note("wireguard", &leases, t0, false);
        assert!(s.settled(t0, own).is_empty());
        assert_eq!(s.next_settling(t0, own), Some(t0 + SETTLE));
        assert_eq!(s.settled(t0 + SETTLE, own).len(), 2);
        // Seen from host 2, host 1 (the lower subnet) moves first: host 2 follows a LEAD later.
        let two: Ipv4Net = "198.19.2.0/24".parse().unwrap();
        assert_eq!(s.settled(t0 + SETTLE, two), [two].into());
        assert_eq!(s.next_settling(t0 + SETTLE, two), Some(t0 + SETTLE + LEAD));
        assert_eq!(s.settled(t0 + SETTLE + LEAD, two).len(), 2);
        // Host 3 speaks only vxlan: vxlan stays.
        assert_eq!(s.old_needed("vxlan", own, &leases), Need::Always);
        let moved = vec![leases[0].clone(), leases[1].clone()];
        s.note("wireguard", &moved, t0 + SETTLE, false);
        assert_eq!(
            s.old_needed("vxlan", own, &moved),
            Need::Until(t0 + SETTLE + LEAD + DROP_AFTER)
        );
        // A new advertisement (another key) starts its clock again; at start-up it counts
        // as just settled.
        let mut again = Settle::default();
        again.note("wireguard", &moved, t0 + SETTLE, true);
        assert_eq!(again.settled(t0 + SETTLE, own).len(), 2);
    }
}
