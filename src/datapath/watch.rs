//! The kernel monitor thread: it tells weft's objects (devices, routes inside the networks,
//! neighbours on the devices, the external interface, the container bridges) from everything
//! else, drops the echoes of the worker's own deletions, and asks for a full pass when
//! something of weft's changed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::Cmd;
use crate::netlink::{Change, Mac, Monitor, Op};

/// What the monitor thread needs to tell weft's objects from everything else.
#[derive(Default)]
pub(super) struct Watched {
    /// weft's devices as the kernel has them: name → index.
    pub devices: std::sync::Mutex<Vec<(String, u32)>>,
    pub ext: AtomicU32,
    /// No external interface could be chosen: any link or address may be the one awaited
    /// (a NIC re-created under a new index, an address not there yet).
    pub ext_missing: AtomicBool,
    /// The interface is chosen by a route (the default route, `--iface-can-reach`).
    pub follows_routes: bool,
    pub networks: std::sync::Mutex<Vec<IpNet>>,
    /// weft's container bridges and the MAC pinned on each: a notification of another MAC on
    /// one is drift.
    pub bridges: std::sync::Mutex<Vec<(u32, Mac)>>,
    /// Deletions the worker is about to make: their notifications are its own echo, not
    /// drift, and must not cost a full reconciliation (a dump of every object).
    pub echo: std::sync::Mutex<Echo>,
}

impl Watched {
    /// The index of device `name`, once it is known to exist.
    pub fn device(&self, name: &str) -> Option<u32> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }

    /// Notes device `name` at `index` (0: gone).
    pub fn set_device(&self, name: &str, index: u32) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.retain(|(n, _)| n != name);
        if index != 0 {
            devices.push((name.to_string(), index));
        }
    }

    fn device_indices(&self) -> Vec<u32> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.iter().map(|(_, i)| *i).collect()
    }
}

/// How long an expected deletion notification is waited for. A delete of something already
/// gone sends none; the expectation then lapses so it cannot hide real drift for long (the
/// resync timer still covers that window).
const ECHO_WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Echo {
    until: Option<Instant>,
    routes: HashSet<IpNet>,
    /// Neighbour and FDB deletions on the device: the notification names only the device.
    neighbours: u32,
}

impl Echo {
    pub fn expect(&mut self, ops: &[Op]) {
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

pub(super) fn watch_kernel(mut monitor: Monitor, watched: Arc<Watched>, tx: mpsc::Sender<Cmd>) {
    loop {
        let changes = match monitor.recv() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kernel monitor failed; relying on the resync timer for a moment");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let devices = watched.device_indices();
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
