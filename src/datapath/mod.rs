//! The datapath thread: once start-up has made the backend's device, the only writer of
//! kernel state in weftd (routes, neighbours, FDB, devices, nftables). It takes the latest
//! snapshot of leases from the agent and reconciles. A lease event takes the fast path (the
//! new desired state against the last applied one: a handful of netlink requests, no dumps).
//! A kernel change on weft's objects, a failed request or the resync timer takes the full
//! path (dump, diff, apply), which is what repairs drift. A tunnel device's own peers
//! (WireGuard's) send no change notifications: they are read back on a short poll.
//!
//! The worker here runs the passes; its parts each do one job: [`schedule`] (when),
//! [`watch`] (the kernel monitor), [`devices`] (devices, addresses, bridges), [`kernel`]
//! (reading and applying routes, neighbours, FDB), [`tunnel`] (a device's own peers),
//! [`uplink`] (following the external interface), [`probes`] (the prober's targets),
//! [`tally`] (one log line per kind of what an apply did).

mod devices;
pub mod kernel;
mod passes;
mod probes;
mod schedule;
mod tally;
mod tunnel;
mod uplink;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

use crate::backend::{DeviceSpec, Host};
use crate::config::{BackendConfig, NetworkConfig};
use crate::firewall::{Firewall, FirewallSpec};
use crate::iface::{ExtIface, IfaceSelect};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::netlink::{Mac, Monitor, Netlink};
use crate::plan::{self, Desired, Speakers};
use crate::probe::Prober;
use crate::subnet::{Family, PerFamily};
use probes::ProbeSync;
use schedule::{Cmd, Schedule, Tick};
use tunnel::Tunnels;
use uplink::Uplink;
use watch::Watched;

/// Everything the desired state is computed from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cfg: NetworkConfig,
    pub ext: ExtIface,
    /// The backends this host runs, the preferred first: one, or two while the fleet moves
    /// from one to another (see [`crate::live::moving`]).
    pub backends: Vec<BackendConfig>,
    /// Each backend's device in each family, in the order of `backends` (`None` for a
    /// backend without one).
    pub devices: PerFamily<Vec<Option<DeviceSpec>>>,
    /// Devices of backends this host no longer runs: removed where they still exist.
    pub retire: Vec<String>,
    /// The leases whose advertisement of the preferred backend has settled (`None`: all).
    pub settled: Option<Arc<BTreeSet<Ipv4Net>>>,
    pub own: Lease,
    /// Every valid lease known, this host's included.
    /// Shared with the agent: a snapshot costs a reference count per lease, not a copy.
    pub leases: Vec<Arc<Lease>>,
    /// Keys in etcd that are no usable lease at all; counted with the refused leases.
    pub unreadable: usize,
    /// What weft wants in nftables and iptables.
    pub firewall: FirewallSpec,
}

impl Snapshot {
    /// The families this host runs an overlay in: IPv4, and IPv6 when its lease has an IPv6
    /// subnet and the external interface an IPv6 address.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        plan::families(&self.cfg, &self.ext, &self.own)
    }

    fn own_subnet(&self, family: Family) -> Option<IpNet> {
        self.own.side(family).map(|s| s.subnet)
    }

    /// The devices of `family`, with the index of their backend in `backends`.
    pub fn devices_of(&self, family: Family) -> impl Iterator<Item = (usize, &DeviceSpec)> {
        (self.devices[family].iter().enumerate()).filter_map(|(i, d)| Some((i, d.as_ref()?)))
    }
}

/// What the datapath tells the agent after each full reconciliation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The devices' real MACs by device name (devices that have one); the agent
    /// re-advertises one that differs from the lease's.
    pub device_mac: BTreeMap<String, Mac>,
    /// The external interface as the kernel has it now, when it differs from the snapshot's
    /// (renumbered, re-created, another MTU, the default route moved): the agent makes a new
    /// snapshot from it, and the pass waits for that.
    pub ext: Option<ExtIface>,
}

/// Why a reconciliation did not leave the kernel as desired; each is logged where it happens,
/// and the full path runs again soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The backend's device could not be created or adopted.
    Device,
    /// The device's address could not be set.
    Address,
    /// The kernel's routes, neighbours or FDB could not be read.
    Dump,
    /// At least one netlink request was refused.
    Apply,
    /// weft's nftables tables or iptables accepts could not be read or written.
    Firewall,
    /// The fast path has no applied state to start from.
    NothingApplied,
    /// The external interface is gone, or no longer the one the snapshot names.
    Iface,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot open a netlink socket: {0}")]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// How the datapath runs: how often it compares everything, how often it reads a tunnel's
/// peers back, how the external interface is chosen (again at every full pass).
#[derive(Debug, Clone)]
pub struct Settings {
    pub resync: Duration,
    pub tunnel_poll: Duration,
    pub select: IfaceSelect,
}

/// Handle to the datapath thread.
#[derive(Clone)]
pub struct Datapath {
    tx: mpsc::Sender<Cmd>,
}

impl Datapath {
    /// Starts the datapath thread and the kernel monitor thread. `prober`, when there is one,
    /// is pointed at exactly the peers the datapath programs.
    pub fn start(
        settings: Settings,
        metrics: Arc<Metrics>,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
        prober: Option<Arc<Prober>>,
    ) -> Result<Datapath, DatapathError> {
        let (tx, rx) = mpsc::channel();
        let monitor = Monitor::new()?;
        let select = &settings.select;
        let watched = Arc::new(Watched {
            // Chosen by routes: any route outside the overlay may move it.
            follows_routes: select.ifaces.is_empty() && select.regexes.is_empty(),
            ..Watched::default()
        });
        let worker = Worker::new(settings, metrics, reports, prober, watched.clone())?;
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || worker.run(rx))
            .map_err(DatapathError::Thread)?;
        let kick = tx.clone();
        std::thread::Builder::new()
            .name("kernel-monitor".into())
            .spawn(move || watch::watch_kernel(monitor, watched, kick))
            .map_err(DatapathError::Thread)?;
        Ok(Datapath { tx })
    }

    /// Hands the datapath a new snapshot; it is applied on the fast path.
    pub fn update(&self, snapshot: Arc<Snapshot>) {
        let _ = self.tx.send(Cmd::State(snapshot));
    }

    /// Asks for a full reconciliation.
    pub fn kick(&self, why: &'static str) {
        let _ = self.tx.send(Cmd::Kick(why));
    }
}

struct Worker {
    nl: Netlink,
    metrics: Arc<Metrics>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    watched: Arc<Watched>,
    schedule: Schedule,
    state: Option<Arc<Snapshot>>,
    /// Per family, the desired state last applied without error; None forces the full path.
    applied: PerFamily<Option<Desired>>,
    /// The snapshot and host facts `applied` was computed from: a lease event then only
    /// needs the leases that changed since.
    applied_from: PerFamily<Option<(Arc<Snapshot>, Speakers)>>,
    /// Skipped leases already warned about, with the reason.
    warned: HashSet<(String, String)>,
    uplink: Uplink,
    tunnels: Tunnels,
    firewall: Firewall,
    probes: ProbeSync,
}

impl Worker {
    fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
        prober: Option<Arc<Prober>>,
        watched: Arc<Watched>,
    ) -> Result<Worker, DatapathError> {
        Ok(Worker {
            nl: Netlink::new()?,
            metrics,
            reports,
            watched,
            schedule: Schedule::new(settings.resync, settings.tunnel_poll),
            state: None,
            applied: PerFamily::default(),
            applied_from: PerFamily::default(),
            warned: HashSet::new(),
            uplink: Uplink::new(settings.select),
            tunnels: Tunnels::default(),
            firewall: Firewall::new(),
            probes: ProbeSync::new(prober),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let polling = self.state.clone().is_some_and(|s| self.tunnels.any(&s));
            let wait = self.schedule.wait(polling);
            let mut early = |s| {
                self.state = Some(s);
                if self.has_applied() {
                    let _ = self.fast();
                }
            };
            let Some(wanted) = schedule::next(&rx, wait, &mut early) else {
                return;
            };
            let new_state = wanted.state.is_some();
            if let Some(s) = wanted.state {
                self.state = Some(s);
            }
            if self.state.is_some() {
                self.turn(wanted.full, new_state, wanted.timer);
            }
        }
    }

    /// One turn: the full pass when asked for or due, else the tunnel read-back when due,
    /// else the fast path for a new snapshot (the full pass when that fails).
    fn turn(&mut self, mut full: bool, new_state: bool, timer: bool) {
        if timer {
            match self.schedule.tick() {
                Tick::Full => full = true,
                // A device that cannot be read is mended by the full path.
                Tick::Poll => full |= self.poll_tunnels().is_err(),
                Tick::Nothing => {}
            }
        }
        if !full && new_state && self.has_applied() {
            if self.fast().is_ok() {
                return;
            }
            full = true;
        }
        if full || !self.has_applied() {
            let ok = self.full().is_ok();
            self.schedule.full_done(ok);
        }
    }

    /// Whether every family of the current snapshot has an applied state the fast path can
    /// start from.
    fn has_applied(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.families().all(|f| self.applied[f].is_some()))
    }

    /// This host's backends in `family`, each with its device as the kernel has it now.
    fn speakers(&self, s: &Snapshot, family: Family) -> Option<Speakers> {
        let list = (s.backends.iter().enumerate())
            .map(|(i, backend)| {
                let spec = s.devices[family].get(i).and_then(Option::as_ref);
                let device = spec.and_then(|d| self.watched.device(&d.name));
                let host = Host::new(&s.ext, family, device)?;
                Some(plan::Speaker {
                    backend: backend.clone(),
                    host,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        (!list.is_empty()).then(|| Speakers {
            list,
            settled: s.settled.clone(),
        })
    }

    fn desired(&mut self, s: &Snapshot, run: &Speakers) -> Desired {
        let d = plan::desired(&s.cfg, run, &s.own, &s.leases);
        for skip in &d.skipped {
            if self.warned.insert((skip.key.clone(), skip.reason.clone())) {
                tracing::warn!(key = %skip.key, family = %run.family(), reason = %skip.reason, "lease not programmed");
            }
        }
        d
    }

    /// The lease counts for the metrics: skipped is the most any family skipped (a lease
    /// without an IPv6 subnet is not an IPv6 peer, and is no broken lease either).
    fn count_leases(&self, s: &Snapshot, skipped: usize) {
        self.metrics.leases_known.set(s.leases.len() as u64);
        self.metrics.subnet_pool_size.set(s.cfg.subnet_count());
        self.metrics
            .leases_skipped
            .set((skipped + s.unreadable) as u64);
    }

    /// Points the prober at what every family programs now.
    fn probe_programmed(&mut self) {
        let Some(s) = self.state.clone() else {
            return;
        };
        let applied = s.families().filter_map(|f| self.applied[f].as_ref());
        self.probes.programmed(applied);
    }

    fn ensure_firewall(&mut self, s: &Snapshot) -> Result<(), Failure> {
        let applied = self.firewall.ensure(&s.firewall);
        for change in &applied.changes {
            tracing::info!(masquerade = s.firewall.masquerade, "firewall: {change}");
        }
        for e in &applied.errors {
            tracing::warn!(error = %e, "cannot bring the firewall rules up to date; will retry");
        }
        match applied.errors.is_empty() {
            true => Ok(()),
            false => Err(Failure::Firewall),
        }
    }
}

/// The leases that differ between two lists sorted by subnet: (gone or changed as they were,
/// new or changed as they are). A lease whose etcd revision is unchanged is unchanged.
/// `None` when a list is not sorted (then the caller looks at everything).
fn lease_delta(old: &[Arc<Lease>], new: &[Arc<Lease>]) -> Option<(Vec<Lease>, Vec<Lease>)> {
    let sorted = |v: &[Arc<Lease>]| v.windows(2).all(|w| w[0].subnet < w[1].subnet);
    if !sorted(old) || !sorted(new) {
        return None;
    }
    let same = |a: &Arc<Lease>, b: &Arc<Lease>| {
        Arc::ptr_eq(a, b)
            || (a.mod_revision == b.mod_revision && (a.mod_revision > 0 || a.attrs == b.attrs))
    };
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.subnet == b.subnet => {
                if !same(a, b) {
                    gone.push(a.as_ref().clone());
                    added.push(b.as_ref().clone());
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.subnet < b.subnet => {
                gone.push(a.as_ref().clone());
                i += 1;
            }
            (_, Some(b)) => {
                added.push(b.as_ref().clone());
                j += 1;
            }
            (Some(a), None) => {
                gone.push(a.as_ref().clone());
                i += 1;
            }
            (None, None) => return Some((gone, added)),
        }
    }
}

/// Returns freed heap pages to the kernel (glibc keeps them otherwise), so weftd's resident
/// size follows what it holds, not the peak of its largest reconciliation.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(subnet: &str, rev: i64) -> Lease {
        Lease::for_tests(subnet, rev)
    }

    #[test]
    fn lease_delta_names_only_what_changed() {
        let old = [
            lease("198.19.1.0/24", 1),
            lease("198.19.2.0/24", 2),
            lease("198.19.3.0/24", 3),
        ];
        let new = [
            lease("198.19.2.0/24", 2),
            lease("198.19.3.0/24", 7),
            lease("198.19.4.0/24", 8),
        ];
        let (old, new) = (old.map(Arc::new), new.map(Arc::new));
        let (gone, added) = lease_delta(&old, &new).unwrap();
        let names = |v: &[Lease]| {
            v.iter()
                .map(|l| (l.subnet.to_string(), l.mod_revision))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&gone),
            [
                ("198.19.1.0/24".to_string(), 1),
                ("198.19.3.0/24".to_string(), 3)
            ]
        );
        assert_eq!(
            names(&added),
            [
                ("198.19.3.0/24".to_string(), 7),
                ("198.19.4.0/24".to_string(), 8)
            ]
        );
        assert_eq!(lease_delta(&new, &new).unwrap(), (vec![], vec![]));
        let unsorted = [lease("198.19.2.0/24", 2), lease("198.19.1.0/24", 1)].map(Arc::new);
        assert!(lease_delta(&unsorted, &new).is_none());
    }
}
