//! The datapath thread: once start-up has made the backend's device, the only writer of
//! kernel state in weftd (routes, neighbours, FDB, nftables). It owns a netlink socket,
//! takes the latest snapshot of leases from the agent, and reconciles. A lease event takes
//! the fast path (the new desired state against the last applied one: a handful of netlink
//! requests, no dumps). A kernel change on weft's objects, a failed request or the resync
//! timer takes the full path (dump, diff, apply), which is what repairs drift. A tunnel
//! device's peers (WireGuard) send no change notifications: they are read back on a short
//! poll.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::backend::uapi::Change as TunnelChange;
use crate::backend::wireguard::{Key, WgPeer};
use crate::backend::{self, Backend, Device, DeviceSpec, Host};
use crate::bridge;
use crate::config::NetworkConfig;
use crate::firewall::{Firewall, FirewallSpec};
use crate::http::Metrics;
use crate::iface::{self, ExtIface, IfaceSelect};
use crate::lease::Lease;
use crate::netlink::{format_mac, Change, Mac, Monitor, Netlink, Op};
use crate::probe::{Prober, Target};
use crate::reconcile::{self, Desired};
use crate::subnet::{Family, PerFamily};

/// Everything the desired state is computed from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cfg: NetworkConfig,
    pub ext: ExtIface,
    /// The backend's device of each family, for backends that have one.
    pub devices: PerFamily<Option<DeviceSpec>>,
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
        reconcile::families(&self.cfg, &self.ext, &self.own)
    }

    fn own_subnet(&self, family: Family) -> Option<IpNet> {
        self.own.side(family).map(|s| s.subnet)
    }

    fn backend(&self) -> &dyn Backend {
        backend::of(&self.cfg.backend)
    }
}

/// What the datapath tells the agent after each full reconciliation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The devices' real MACs (backends with a device); the agent re-advertises one that
    /// differs from the lease's.
    pub device_mac: PerFamily<Option<Mac>>,
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

enum Cmd {
    State(Arc<Snapshot>),
    Kick(&'static str),
}

/// What the commands taken in one turn ask for.
#[derive(Default)]
struct Wanted {
    /// A kick or the resync timer: dump, diff and apply.
    full: bool,
    /// A new snapshot: the fast path may do.
    new_state: bool,
    /// Nothing came before the timer ran out.
    timer: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot open a netlink socket: {0}")]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Handle to the datapath thread.
#[derive(Clone)]
pub struct Datapath {
    tx: mpsc::Sender<Cmd>,
}

impl Datapath {
    /// Starts the datapath thread and the kernel monitor thread.
    /// `select` is how the external interface is chosen: every full pass chooses it again
    /// from the kernel, so a changed one is noticed.
    /// `prober`, when there is one, is pointed at exactly the peers the datapath programs.
    pub fn start(
        metrics: Arc<Metrics>,
        resync: Duration,
        tunnel_poll: Duration,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
        select: IfaceSelect,
        prober: Option<Arc<Prober>>,
    ) -> Result<Datapath, DatapathError> {
        let (tx, rx) = mpsc::channel();
        let nl = Netlink::new()?;
        let monitor = Monitor::new()?;
        let watched = Arc::new(Watched {
            // Chosen by routes: any route outside the overlay may move it.
            follows_routes: select.ifaces.is_empty() && select.regexes.is_empty(),
            ..Watched::default()
        });
        let worker = Worker {
            select,
            ext_missing: None,
            nl,
            metrics,
            resync,
            tunnel_poll,
            keepalive_held: PerFamily::default(),
            reports,
            firewall: Firewall::new(),
            state: None,
            applied: PerFamily::default(),
            applied_from: PerFamily::default(),
            warned: HashSet::new(),
            watched: watched.clone(),
            failures: 0,
            prober,
            probed: BTreeMap::new(),
        };
        std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || worker.run(rx))
            .map_err(DatapathError::Thread)?;
        let kick = tx.clone();
        std::thread::Builder::new()
            .name("kernel-monitor".into())
            .spawn(move || watch_kernel(monitor, watched, kick))
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

/// What the monitor thread needs to tell weft's objects from everything else.
#[derive(Default)]
struct Watched {
    devices: PerFamily<AtomicU32>,
    ext: AtomicU32,
    /// No external interface could be chosen: any link or address may be the one awaited
    /// (a NIC re-created under a new index, an address not there yet).
    ext_missing: AtomicBool,
    /// The interface is chosen by a route (the default route, `--iface-can-reach`).
    follows_routes: bool,
    networks: std::sync::Mutex<Vec<IpNet>>,
    /// weft's container bridges and the MAC pinned on each: a notification of another MAC on
    /// one is drift.
    bridges: std::sync::Mutex<Vec<(u32, Mac)>>,
    /// Deletions the worker is about to make: their notifications are its own echo, not
    /// drift, and must not cost a full reconciliation (a dump of every object).
    echo: std::sync::Mutex<Echo>,
}

/// How long an expected deletion notification is waited for. A delete of something already
/// gone sends none; the expectation then lapses so it cannot hide real drift for long (the
/// resync timer still covers that window).
const ECHO_WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Echo {
    until: Option<Instant>,
    routes: HashSet<IpNet>,
    /// Neighbour and FDB deletions on the device: the notification names only the device.
    neighbours: u32,
}

impl Echo {
    fn expect(&mut self, ops: &[Op]) {
        let now = Instant::now();
        if self.until.is_some_and(|u| u < now) {
            *self = Echo::default();
        }
        for op in ops {
            match op {
                Op::DelRoute(r) => {
                    self.routes.insert(r.dst);
                }
                Op::DelNeighbour(_) | Op::DelFdb(_) => self.neighbours += 1,
                _ => continue,
            }
            self.until = Some(now + ECHO_WINDOW);
        }
    }

    /// Whether a deletion notification is one the worker announced (and uses it up).
    fn is_echo(&mut self, c: &Change) -> bool {
        if self.until.is_none_or(|u| u < Instant::now()) {
            return false;
        }
        match c {
            Change::Route { dst, deleted: true } => self.routes.remove(dst),
            Change::Neighbour { deleted: true, .. } if self.neighbours > 0 => {
                self.neighbours -= 1;
                true
            }
            _ => false,
        }
    }
}

fn watch_kernel(mut monitor: Monitor, watched: Arc<Watched>, tx: mpsc::Sender<Cmd>) {
    loop {
        let changes = match monitor.recv() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kernel monitor failed; relying on the resync timer for a moment");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let devices = Family::ALL.map(|f| watched.devices[f].load(Ordering::Relaxed));
        let is_device = |i: &u32| *i != 0 && devices.contains(i);
        let ext = watched.ext.load(Ordering::Relaxed);
        let missing = watched.ext_missing.load(Ordering::Relaxed);
        let networks = watched
            .networks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let bridges = watched
            .bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let bridge_moved = |index: &u32, mac: &Option<Mac>| {
            (bridges.iter()).any(|(i, pinned)| i == index && mac.is_some_and(|m| m != *pinned))
        };
        let mut echo = watched.echo.lock().unwrap_or_else(|e| e.into_inner());
        let relevant = changes.iter().any(|c| match c {
            Change::Overflow => true,
            Change::Link { index, mac, .. } => {
                is_device(index) || *index == ext || missing || bridge_moved(index, mac)
            }
            Change::Neighbour { index, deleted } => {
                *deleted && is_device(index) && !echo.is_echo(c)
            }
            Change::Route { dst, deleted } => {
                if networks.iter().any(|n| n.contains(dst)) {
                    *deleted && !echo.is_echo(c)
                } else {
                    watched.follows_routes && dst.addr().is_ipv4()
                }
            }
            // The external interface's addresses make its public IP and the device's local
            // address.
            Change::Address { index, deleted } => {
                (*deleted && is_device(index)) || *index == ext || missing
            }
        });
        drop(echo);
        if relevant && tx.send(Cmd::Kick("kernel change")).is_err() {
            return;
        }
    }
}

struct Worker {
    select: IfaceSelect,
    /// Why no external interface could be chosen, while that lasts (logged once).
    ext_missing: Option<String>,
    nl: Netlink,
    metrics: Arc<Metrics>,
    resync: Duration,
    /// How often a tunnel device's peers are read back.
    tunnel_poll: Duration,
    /// Tunnel peers added without their keepalive, which the next read-back sets (see
    /// [`Worker::write_tunnel`]).
    keepalive_held: PerFamily<HashSet<Key>>,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    firewall: Firewall,
    state: Option<Arc<Snapshot>>,
    /// Per family, the desired state last applied without error; None forces the full path.
    applied: PerFamily<Option<Desired>>,
    /// The snapshot and host facts `applied` was computed from: a lease event then only
    /// needs the leases that changed since.
    applied_from: PerFamily<Option<(Arc<Snapshot>, Host)>>,
    warned: HashSet<(String, String)>,
    watched: Arc<Watched>,
    failures: u32,
    prober: Option<Arc<Prober>>,
    /// The targets the prober was last given: every family's programmed peers.
    probed: BTreeMap<IpNet, IpAddr>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut full_due = Instant::now() + self.resync;
        let mut poll_due = Instant::now() + self.tunnel_poll;
        loop {
            let due = if self.has_tunnel() {
                full_due.min(poll_due)
            } else {
                full_due
            };
            let wait = due.saturating_duration_since(Instant::now());
            let Some(Wanted {
                mut full,
                new_state,
                timer,
            }) = self.next(&rx, wait)
            else {
                return;
            };
            if self.state.is_none() {
                continue;
            }
            let now = Instant::now();
            if timer && now >= full_due {
                full = true;
            } else if timer && now >= poll_due {
                poll_due = now + self.tunnel_poll;
                // A device that cannot be read is mended by the full path.
                full = self.poll_tunnel().is_err();
            }
            if !full && new_state && self.has_applied() {
                if self.fast().is_ok() {
                    continue;
                }
                full = true;
            }
            if full || !self.has_applied() {
                let ok = self.full().is_ok();
                self.failures = if ok { 0 } else { self.failures + 1 };
                // A failure comes back soon, backing off to the resync interval.
                let retry = Duration::from_millis(200 << self.failures.min(6)).min(self.resync);
                full_due = Instant::now() + if ok { self.resync } else { retry };
            }
        }
    }

    /// Waits up to `wait` for commands and takes every one that is queued; `None` when the
    /// agent is gone.
    fn next(&mut self, rx: &mpsc::Receiver<Cmd>, wait: Duration) -> Option<Wanted> {
        let mut wanted = Wanted::default();
        let first = match rx.recv_timeout(wait) {
            Ok(cmd) => cmd,
            Err(RecvTimeoutError::Timeout) => {
                wanted.timer = true;
                return Some(wanted);
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        };
        let mut cmds = vec![first];
        if matches!(cmds[0], Cmd::Kick(_)) {
            self.settle(rx, &mut cmds);
        }
        cmds.extend(rx.try_iter());
        for cmd in cmds {
            match cmd {
                Cmd::State(s) => {
                    self.state = Some(s);
                    wanted.new_state = true;
                }
                Cmd::Kick(why) => {
                    tracing::debug!(why, "full reconciliation requested");
                    wanted.full = true;
                }
            }
        }
        Some(wanted)
    }

    /// Kernel changes come in bursts (a device going down takes all its routes with it):
    /// settle briefly, collecting them, so they are handled at once. A lease change does not
    /// wait for the settling: it goes out on the fast path first.
    fn settle(&mut self, rx: &mpsc::Receiver<Cmd>, cmds: &mut Vec<Cmd>) {
        let settled = Instant::now() + Duration::from_millis(20);
        while let Some(left) = settled.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(Cmd::State(s)) => {
                    self.state = Some(s);
                    if self.has_applied() {
                        let _ = self.fast();
                    }
                }
                Ok(other) => cmds.push(other),
                Err(_) => break,
            }
        }
    }

    /// Whether every family of the current snapshot has an applied state the fast path can
    /// start from.
    fn has_applied(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.families().all(|f| self.applied[f].is_some()))
    }

    /// This host's facts in `family`, with the device as the kernel has it now.
    fn host(&self, s: &Snapshot, family: Family) -> Option<Host> {
        let device = self.watched.devices[family].load(Ordering::Relaxed);
        let device = (s.devices[family].is_some() && device != 0).then_some(device);
        Host::new(&s.ext, family, device)
    }

    fn desired(&mut self, s: &Snapshot, host: &Host) -> Desired {
        let d = reconcile::desired(&s.cfg, host, &s.own, &s.leases);
        for skip in &d.skipped {
            if self.warned.insert((skip.key.clone(), skip.reason.clone())) {
                tracing::warn!(key = %skip.key, family = %host.family(), reason = %skip.reason, "lease not programmed");
            }
        }
        d
    }

    /// The lease counts for the metrics: skipped is the most any family skipped (a lease
    /// without an IPv6 subnet is not an IPv6 peer, and is no broken lease either).
    fn count_leases(&self, s: &Snapshot, skipped: usize) {
        self.metrics.leases_known.set(s.leases.len() as u64);
        self.metrics
            .leases_skipped
            .set((skipped + s.unreadable) as u64);
    }

    /// Applies ops, logging and counting failures. Err if any failed.
    fn apply(&mut self, ops: &[Op], previous: Option<&Desired>) -> Result<(), Failure> {
        if ops.is_empty() {
            return Ok(());
        }
        self.watched
            .echo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect(ops);
        let results = self.nl.apply(ops);
        let mut names: Vec<(u32, String)> = Vec::new();
        if let Some(s) = &self.state {
            names.push((s.ext.index, s.ext.name.clone()));
            for f in Family::ALL {
                if let Some(d) = &s.devices[f] {
                    names.push((
                        self.watched.devices[f].load(Ordering::Relaxed),
                        d.name.clone(),
                    ));
                }
            }
        }
        let dev = |i: u32| {
            names
                .iter()
                .rev()
                .find(|(index, _)| *index == i)
                .map_or_else(|| format!("#{i}"), |(_, n)| n.clone())
        };
        let mut failed = false;
        let mut repairs = 0;
        for (op, result) in ops.iter().zip(results) {
            match result {
                Ok(()) => {
                    if previous.is_some_and(|p| reconcile::is_repair(op, p)) {
                        repairs += 1;
                        tracing::info!(object = %reconcile::describe(op, &dev), "drift repaired");
                    } else {
                        tracing::debug!(object = %reconcile::describe(op, &dev), "programmed");
                    }
                }
                Err(e) => {
                    failed = true;
                    self.metrics.netlink_errors.inc();
                    tracing::warn!(object = %reconcile::describe(op, &dev), error = %e, "netlink request failed; will retry");
                }
            }
        }
        self.metrics.drift_repairs.inc_by(repairs);
        if failed {
            Err(Failure::Apply)
        } else {
            Ok(())
        }
    }

    /// The fast path: the new desired state against the last applied one, without reading
    /// the kernel, family by family. When only leases changed, only those are looked at, so
    /// the cost of an event does not grow with the number of leases.
    fn fast(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let Some(s) = self.state.clone() else {
            return Ok(());
        };
        let mut result = Ok(());
        let (mut changes, mut peers) = (0, 0);
        let mut replaced = Vec::new();
        let mut probes: (Vec<IpNet>, Vec<(IpNet, IpAddr)>) = Default::default();
        let mut whole = false;
        for family in s.families() {
            let Some(host) = self.host(&s, family) else {
                continue;
            };
            let (ops, n, tunnel) = match self.incremental(&s, &host) {
                Some(u) => {
                    probes.0.extend(u.probes_removed);
                    probes.1.extend(u.probes_set);
                    (
                        u.ops,
                        self.applied[family].as_ref().map_or(0, |a| a.peers),
                        self.write_tunnel(&s, family, &u.tunnel, &|k| !u.fresh.contains(k), None),
                    )
                }
                None => {
                    whole = true;
                    let desired = self.desired(&s, &host);
                    self.count_leases(&s, desired.skipped.len());
                    let Some(previous) = self.applied[family].take() else {
                        return Err(Failure::NothingApplied);
                    };
                    let ops = reconcile::diff_applied(&desired, &previous);
                    let tunnel = self.apply_tunnel(
                        &s,
                        family,
                        &desired.tunnel,
                        previous.tunnel.values(),
                        None,
                    );
                    let n = desired.peers;
                    self.applied[family] = Some(desired);
                    (ops, n, tunnel)
                }
            };
            let applied = self.apply(&ops, None).and(tunnel);
            changes += ops.len();
            peers += n;
            // The snapshot this one replaces is freed after the clock stops: thousands of
            // leases take a while to free, and by then the kernel is already programmed.
            if applied.is_ok() {
                replaced.push(self.applied_from[family].replace((s.clone(), host)));
            } else {
                self.applied[family] = None;
                replaced.push(self.applied_from[family].take());
            }
            result = result.and(applied);
        }
        self.metrics.leases_known.set(s.leases.len() as u64);
        self.metrics.peers_programmed.set(peers as u64);
        if result.is_ok() {
            if whole {
                self.probe_programmed();
            } else {
                self.probe_change(probes.0, probes.1);
            }
        }
        if result.is_ok() && changes > 0 {
            tracing::info!(
                changes,
                peers,
                took_us = started.elapsed().as_micros() as u64,
                "peers updated"
            );
        }
        self.metrics.record_reconcile(started.elapsed());
        drop(replaced);
        result
    }

    /// The operations for the leases that changed since the applied snapshot of `host`'s
    /// family, updating its applied state; `None` when anything else changed or the change
    /// needs the whole picture (see [`reconcile::update`]).
    fn incremental(&mut self, s: &Snapshot, host: &Host) -> Option<reconcile::Update> {
        let family = host.family();
        let (prev, prev_host) = self.applied_from[family].as_ref()?;
        if prev_host != host || prev.cfg != s.cfg || prev.own.key_name() != s.own.key_name() {
            return None;
        }
        let (gone, added) = lease_delta(&prev.leases, &s.leases)?;
        let applied = self.applied[family].as_mut()?;
        reconcile::update(&s.cfg, host, &s.own, applied, &gone, &added)
    }

    /// The full path: devices, addresses, dumps, diff and apply for each family, then the
    /// firewall. A failure in one step does not keep the others from running.
    fn full(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let Some(s) = self.state.clone() else {
            return Ok(());
        };
        self.watch(&s);
        if let Some(ext) = self.external_changed(&s) {
            // The agent answers with a new snapshot and a kick; this one is out of date.
            let _ = self.reports.send(Report {
                ext: Some(ext),
                ..Report::default()
            });
            return Err(Failure::Iface);
        }
        let mut result = if self.ext_missing.is_some() {
            Err(Failure::Iface)
        } else {
            Ok(())
        };
        let mut report = Report::default();
        let mut skipped = 0;
        for family in Family::ALL {
            if !s.families().any(|f| f == family) {
                self.applied[family] = None;
                self.applied_from[family] = None;
                continue;
            }
            let (mac, pass) = self.full_family(&s, family, started);
            report.device_mac[family] = mac;
            skipped = skipped.max(pass.as_ref().map_or(0, |n| *n));
            result = result.and(pass.map(|_| ()));
        }
        self.count_leases(&s, skipped);
        let peers: usize = Family::ALL
            .iter()
            .filter_map(|f| self.applied[*f].as_ref().map(|a| a.peers))
            .sum();
        self.metrics.peers_programmed.set(peers as u64);
        if result.is_ok() {
            self.probe_programmed();
        }
        result = result.and(self.ensure_firewall(&s));
        result = result.and(self.ensure_bridges());

        self.metrics.record_reconcile(started.elapsed());
        self.metrics
            .datapath_programmed
            .store(result.is_ok(), Ordering::Relaxed);
        // A full pass parses whole kernel dumps (megabytes with thousands of peers), and lease
        // snapshots come and go between passes: hand the freed pages back to the kernel.
        release_free_memory();
        let _ = self.reports.send(report);
        result
    }

    /// One family's part of the full path: its device, the device's address, and the
    /// kernel's objects. Gives the device's MAC and, when all went in, the number of leases
    /// the family skipped.
    fn full_family(
        &mut self,
        s: &Arc<Snapshot>,
        family: Family,
        started: Instant,
    ) -> (Option<Mac>, Result<usize, Failure>) {
        let device = match self.ensure_device(s, family) {
            Ok(d) => d,
            Err(e) => return (None, Err(e)),
        };
        let mac = device.as_ref().and_then(|(_, d)| d.mac);
        let address = match (&device, s.own_subnet(family)) {
            (Some((spec, dev)), Some(subnet)) => self.ensure_address(spec, dev, subnet),
            _ => Ok(()),
        };
        let kernel = self.reconcile_kernel(s, family, started);
        (mac, address.and(kernel))
    }

    /// Chooses the external interface again, as start-up did; the new one when it differs
    /// from the snapshot's. While none can be chosen the pass goes on with the snapshot's
    /// (whatever still exists stays programmed) and every link and address change is looked
    /// at.
    fn external_changed(&mut self, s: &Snapshot) -> Option<ExtIface> {
        match iface::choose_in(&mut self.nl, &self.select) {
            Ok(ext) => {
                self.watched.ext_missing.store(false, Ordering::Relaxed);
                if self.ext_missing.take().is_some() {
                    tracing::info!(iface = %ext.name, index = ext.index, "external interface is back");
                }
                if ext == s.ext {
                    return None;
                }
                self.watched.ext.store(ext.index, Ordering::Relaxed);
                Some(ext)
            }
            Err(e) => {
                self.watched.ext_missing.store(true, Ordering::Relaxed);
                let why = e.to_string();
                if self.ext_missing.as_deref() != Some(why.as_str()) {
                    tracing::warn!(iface = %s.ext.name, error = %why, "the external interface is not usable; waiting for it");
                    self.ext_missing = Some(why);
                }
                None
            }
        }
    }

    /// Tells the monitor thread which kernel changes concern weft.
    fn watch(&self, s: &Snapshot) {
        *self
            .watched
            .networks
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            s.families().filter_map(|f| s.cfg.network_of(f)).collect();
        self.watched.ext.store(s.ext.index, Ordering::Relaxed);
    }

    /// Creates or adopts the backend's device of `family`, if it needs one.
    fn ensure_device(
        &mut self,
        s: &Snapshot,
        family: Family,
    ) -> Result<Option<(DeviceSpec, Device)>, Failure> {
        let Some(spec) = &s.devices[family] else {
            return Ok(None);
        };
        let backend = s.backend();
        let mac = backend.advertised_mac(&s.own.attrs, family);
        match backend.ensure_device(&mut self.nl, spec, mac) {
            Ok(dev) => {
                if dev.created {
                    tracing::warn!(device = %spec.name, mac = ?dev.mac.map(|m| format_mac(&m)), "device was missing; recreated it");
                    self.metrics.drift_repairs.inc();
                }
                self.watched.devices[family].store(dev.index, Ordering::Relaxed);
                Ok(Some((spec.clone(), dev)))
            }
            Err(e) => {
                self.metrics.netlink_errors.inc();
                tracing::warn!(device = %spec.name, error = %e, "cannot set up the device; will retry");
                Err(Failure::Device)
            }
        }
    }

    fn ensure_address(
        &mut self,
        spec: &DeviceSpec,
        dev: &Device,
        subnet: IpNet,
    ) -> Result<(), Failure> {
        match backend::ensure_address(&mut self.nl, dev.index, subnet) {
            Ok(true) => {
                tracing::info!(device = %spec.name, %subnet, "device address set");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.metrics.netlink_errors.inc();
                tracing::warn!(device = %spec.name, error = %e, "cannot set the device address");
                Err(Failure::Address)
            }
        }
    }

    /// Routes, neighbours and FDB of `family`: the kernel's against the desired state, and
    /// the difference applied. The applied state is kept only when everything went in.
    /// Gives the number of leases the family skipped.
    fn reconcile_kernel(
        &mut self,
        s: &Arc<Snapshot>,
        family: Family,
        started: Instant,
    ) -> Result<usize, Failure> {
        let (Some(host), Some(own_subnet)) = (self.host(s, family), s.own_subnet(family)) else {
            return Ok(0);
        };
        let desired = self.desired(s, &host);
        let skipped = desired.skipped.len();
        let actual = match reconcile::read_actual(&mut self.nl, &s.cfg, &host, own_subnet) {
            Ok(a) => a,
            Err(e) => {
                self.metrics.netlink_errors.inc();
                tracing::warn!(%family, error = %e, "cannot read the kernel's routes, neighbours or FDB");
                return Err(Failure::Dump);
            }
        };
        let ops = reconcile::diff(&desired, &actual);
        let previous = self.applied[family].take();
        let applying = Instant::now();
        let result = self.apply(&ops, previous.as_ref());
        let tunnel = match self.read_tunnel(s, family) {
            Ok(Some(have)) => self.apply_tunnel(
                s,
                family,
                &desired.tunnel,
                &have,
                previous.as_ref().map(|p| &p.tunnel),
            ),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        let result = result.and(tunnel);
        if !ops.is_empty() {
            tracing::info!(
                %family,
                changes = ops.len(),
                peers = desired.peers,
                before_apply_us = (applying - started).as_micros() as u64,
                apply_us = applying.elapsed().as_micros() as u64,
                "kernel state reconciled"
            );
        }
        if result.is_ok() {
            self.applied[family] = Some(desired);
            self.applied_from[family] = Some((s.clone(), host));
        } else {
            self.applied_from[family] = None;
        }
        result.map(|()| skipped)
    }

    /// Whether a device of the current snapshot holds tunnel peers, which must be polled.
    fn has_tunnel(&self) -> bool {
        self.state.as_ref().is_some_and(|s| {
            Family::ALL
                .iter()
                .any(|f| s.devices[*f].as_ref().is_some_and(DeviceSpec::has_peers))
        })
    }

    /// Reads the tunnel devices' peers back and mends any that differ from the state last
    /// applied (a peer removed, changed or added by hand). Err when a device cannot be read
    /// or changed: the full path then mends the device itself.
    fn poll_tunnel(&mut self) -> Result<(), Failure> {
        let Some(s) = self.state.clone() else {
            return Ok(());
        };
        for family in s.families() {
            let Some(applied) = self.applied[family].take() else {
                continue;
            };
            let result = match self.read_tunnel(&s, family) {
                Ok(Some(have)) => {
                    let want = &applied.tunnel;
                    self.apply_tunnel(&s, family, want, &have, Some(want))
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            self.applied[family] = Some(applied);
            result?;
        }
        Ok(())
    }

    /// The peers `family`'s tunnel device holds; None when the family manages no device's
    /// peers.
    fn read_tunnel(
        &mut self,
        s: &Snapshot,
        family: Family,
    ) -> Result<Option<Vec<WgPeer>>, Failure> {
        let Some(spec) = s.devices[family].as_ref().filter(|d| d.has_peers()) else {
            return Ok(None);
        };
        s.backend().tunnel_peers(&mut self.nl, spec).map_err(|e| {
            self.metrics.netlink_errors.inc();
            tracing::warn!(device = %spec.name, error = %e, "cannot read the device's peers");
            Failure::Dump
        })
    }

    /// Makes the peers of `family`'s tunnel device, `have`, into `want`. A change that puts
    /// back what `previous` (the state last applied) had, or removes a peer it did not have,
    /// is a drift repair.
    fn apply_tunnel<'a>(
        &mut self,
        s: &Snapshot,
        family: Family,
        want: &BTreeMap<Key, WgPeer>,
        have: impl IntoIterator<Item = &'a WgPeer>,
        previous: Option<&BTreeMap<Key, WgPeer>>,
    ) -> Result<(), Failure> {
        let have: Vec<&WgPeer> = have.into_iter().collect();
        let change = reconcile::diff_tunnel(want, have.iter().copied());
        let held: std::collections::BTreeSet<Key> = have.iter().map(|p| p.public_key).collect();
        let on_device = |k: &Key| held.contains(k);
        self.write_tunnel(s, family, &change, &on_device, previous)
    }

    /// Applies a change to `family`'s tunnel device, counting the drift repairs among it (see
    /// [`Worker::apply_tunnel`]). `on_device` says whether the device holds a peer already.
    ///
    /// A peer new to the device goes in without its keepalive, which the next read-back adds
    /// (within `--tunnel-poll`): WireGuard sends a keepalive the moment one is set, and two
    /// hosts adding each other at once would both start a handshake, neither would complete,
    /// and the pair would stall for WireGuard's 5 s retry.
    fn write_tunnel(
        &mut self,
        s: &Snapshot,
        family: Family,
        change: &TunnelChange,
        on_device: &dyn Fn(&Key) -> bool,
        previous: Option<&BTreeMap<Key, WgPeer>>,
    ) -> Result<(), Failure> {
        let Some(spec) = &s.devices[family] else {
            return Ok(());
        };
        if change.set.is_empty() && change.remove.is_empty() {
            return Ok(());
        }
        let mut written = change.clone();
        let mut held = Vec::new();
        for p in written.set.iter_mut() {
            if p.keepalive > 0 && !on_device(&p.public_key) {
                p.keepalive = 0;
                held.push(p.public_key);
            }
        }
        if let Err(e) = s.backend().change_tunnel(&mut self.nl, spec, &written) {
            self.metrics.netlink_errors.inc();
            tracing::warn!(device = %spec.name, error = %e, "cannot change the device's peers; will retry");
            return Err(Failure::Apply);
        }
        let mut repairs = 0;
        for p in &written.set {
            let object = reconcile::describe_peer(p);
            if p.keepalive > 0 && self.keepalive_held[family].remove(&p.public_key) {
                tracing::debug!(device = %spec.name, %object, "keepalive set");
            } else if previous.is_some_and(|prev| prev.get(&p.public_key) == Some(p)) {
                repairs += 1;
                tracing::info!(device = %spec.name, %object, "drift repaired");
            } else {
                tracing::debug!(device = %spec.name, %object, "programmed");
            }
        }
        for k in &change.remove {
            self.keepalive_held[family].remove(k);
            let key = backend::wireguard::format_key(k);
            if previous.is_some_and(|prev| !prev.contains_key(k)) {
                repairs += 1;
                tracing::info!(device = %spec.name, peer = %key, "drift repaired: removed a peer no lease calls for");
            } else {
                tracing::debug!(device = %spec.name, peer = %key, "peer removed");
            }
        }
        self.keepalive_held[family].extend(held);
        self.metrics.drift_repairs.inc_by(repairs);
        Ok(())
    }

    /// Points the prober at every family's programmed peers, changing only what differs from
    /// what it was last given.
    fn probe_programmed(&mut self) {
        let Some(s) = self.state.clone() else {
            return;
        };
        let now: BTreeMap<IpNet, IpAddr> = (s.families())
            .filter_map(|f| self.applied[f].as_ref())
            .flat_map(|a| a.probes.iter().map(|(k, v)| (*k, *v)))
            .collect();
        let removed = (self.probed.keys())
            .filter(|k| !now.contains_key(*k))
            .copied()
            .collect();
        let set = (now.iter())
            .filter(|(k, v)| self.probed.get(*k) != Some(*v))
            .map(|(k, v)| (*k, *v))
            .collect();
        self.probe_change(removed, set);
    }

    /// Hands the prober a change of its targets, whose ids are the peers' subnets.
    fn probe_change(&mut self, removed: Vec<IpNet>, set: Vec<(IpNet, IpAddr)>) {
        if removed.is_empty() && set.is_empty() {
            return;
        }
        for k in &removed {
            self.probed.remove(k);
        }
        self.probed.extend(set.iter().copied());
        if let Some(prober) = &self.prober {
            let remove: Vec<String> = removed.iter().map(|k| k.to_string()).collect();
            let set = (set.into_iter())
                .map(|(id, addr)| Target {
                    id: id.to_string(),
                    addr,
                })
                .collect();
            prober.change(set, &remove);
        }
    }

    /// Puts back the pinned MAC of every container bridge of weft's whose MAC moved (see
    /// [`crate::bridge`]), and tells the monitor which bridges to look at.
    fn ensure_bridges(&mut self) -> Result<(), Failure> {
        let links = self.nl.links().map_err(|e| {
            self.metrics.netlink_errors.inc();
            tracing::warn!(error = %e, "cannot list the links to check the container bridges");
            Failure::Dump
        })?;
        *self
            .watched
            .bridges
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (bridge::owned(&links))
            .map(|(l, mac)| (l.index, mac))
            .collect();
        let mut result = Ok(());
        for moved in bridge::moved(&links) {
            match bridge::mend(&mut self.nl, &moved) {
                Ok(()) => {
                    self.metrics.drift_repairs.inc();
                    tracing::info!(object = %moved, "drift repaired: bridge MAC put back");
                }
                Err(e) => {
                    self.metrics.netlink_errors.inc();
                    tracing::warn!(object = %moved, error = %e, "cannot put the bridge's MAC back; will retry");
                    result = Err(Failure::Apply);
                }
            }
        }
        result
    }

    /// Brings nftables and iptables to the snapshot's firewall spec; each change is a
    /// decision worth a line (a first write, a repaired flush, a stale accept removed).
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
