//! Watching a host's kernel from the bench process: a change monitor and a netlink socket
//! bound to the host's namespace. A probe wakes on the kernel's own notifications (poll(2)
//! on the monitor socket), so the moment an object appears is seen as it happens, not at the
//! next tick of a polling loop.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use weft::netlink::{is_permanent, Change, Family, Monitor, Netlink};

use crate::rig::FakeLease;

pub struct Probe {
    nl: Netlink,
    mon: Monitor,
    pub dev: u32,
    route_seen: bool,
    neigh_seen: u32,
}

impl Probe {
    pub fn new(ns: &Path, device: &str) -> Probe {
        let mut nl = Netlink::in_netns(ns).expect("netlink socket in the host namespace");
        let dev = nl
            .link_by_name(device)
            .expect("reading links")
            .unwrap_or_else(|| panic!("no device {device} in {}", ns.display()))
            .index;
        let mon = Monitor::in_netns(ns).expect("kernel monitor in the host namespace");
        mon.set_nonblocking(true).expect("non-blocking monitor");
        Probe {
            nl,
            mon,
            dev,
            route_seen: false,
            neigh_seen: 0,
        }
    }

    /// Reads what is queued; counts adds relevant to `subnet`.
    fn drain(&mut self, subnet: Option<Ipv4Net>) {
        for _ in 0..10_000 {
            let changes = self.mon.recv().expect("reading kernel notifications");
            if changes.is_empty() {
                return;
            }
            for c in changes {
                match c {
                    Change::Route {
                        dst,
                        deleted: false,
                    } if Some(dst) == subnet.map(IpNet::V4) => self.route_seen = true,
                    Change::Neighbour {
                        index,
                        deleted: false,
                    } if index == self.dev => self.neigh_seen += 1,
                    _ => {}
                }
            }
        }
    }

    /// Forgets everything queued so far.
    pub fn reset(&mut self) {
        self.drain(None);
        self.route_seen = false;
        self.neigh_seen = 0;
    }

    /// Whether the route, the neighbour and the FDB entry for `l` are all in the kernel.
    pub fn present(&mut self, l: &FakeLease) -> bool {
        let gw = l.gateway();
        let routes = self.nl.routes(Family::V4).expect("route dump");
        let route = routes.iter().any(|r| {
            r.dst == IpNet::V4(l.subnet) && r.oif == Some(self.dev) && r.gateway == Some(gw)
        });
        if !route {
            return false;
        }
        let neigh = self
            .nl
            .neighbours(Some(self.dev))
            .expect("neighbour dump")
            .iter()
            .any(|n| n.ip == gw && n.mac == Some(l.mac));
        if !neigh {
            return false;
        }
        self.nl
            .fdb(Some(self.dev))
            .expect("fdb dump")
            .iter()
            .any(|f| f.mac == l.mac && f.dst == Some(IpAddr::V4(l.public_ip)))
    }

    /// Whether none of the three objects for `l` is left.
    pub fn absent(&mut self, l: &FakeLease) -> bool {
        let gw = l.gateway();
        !self
            .nl
            .routes(Family::V4)
            .expect("route dump")
            .iter()
            .any(|r| r.dst == IpNet::V4(l.subnet))
            && !self
                .nl
                .neighbours(Some(self.dev))
                .expect("neighbour dump")
                .iter()
                .any(|n| n.ip == gw)
            && !self
                .nl
                .fdb(Some(self.dev))
                .expect("fdb dump")
                .iter()
                .any(|f| f.mac == l.mac)
    }

    /// Counts of weft's objects on the device: (routes via it, permanent neighbours, FDB
    /// entries with a destination).
    pub fn counts(&mut self) -> (usize, usize, usize) {
        let dev = self.dev;
        let r = self
            .nl
            .routes(Family::V4)
            .expect("route dump")
            .iter()
            .filter(|r| r.oif == Some(dev) && r.onlink)
            .count();
        let n = self
            .nl
            .neighbours(Some(dev))
            .expect("neighbour dump")
            .iter()
            .filter(|n| is_permanent(n.state))
            .count();
        let f = self
            .nl
            .fdb(Some(dev))
            .expect("fdb dump")
            .iter()
            .filter(|f| f.permanent && f.dst.is_some())
            .count();
        (r, n, f)
    }
}

/// Waits until every probe sees `l`'s three objects; returns when each did (None on timeout).
pub fn wait_present(
    probes: &mut [Probe],
    l: &FakeLease,
    timeout: Duration,
) -> Vec<Option<Instant>> {
    let deadline = Instant::now() + timeout;
    let mut done: Vec<Option<Instant>> = vec![None; probes.len()];
    loop {
        for (i, p) in probes.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            p.drain(Some(l.subnet));
            // Seen when the route and both neighbour-table adds on the device (the ARP and
            // the FDB entry) were notified, then confirmed by one dump that is not timed: a
            // dump after every notification would load a machine running many hosts.
            if p.route_seen && p.neigh_seen >= 2 {
                let t = Instant::now();
                if p.present(l) {
                    done[i] = Some(t);
                } else {
                    // Something else on the device moved; wait for more.
                    p.neigh_seen = 0;
                    p.route_seen = false;
                }
            }
        }
        let now = Instant::now();
        if done.iter().all(Option::is_some) || now >= deadline {
            return done;
        }
        let mut fds: Vec<libc::pollfd> = probes
            .iter()
            .zip(&done)
            .filter(|(_, d)| d.is_none())
            .map(|(p, _)| libc::pollfd {
                fd: p.mon.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait = (deadline - now).min(Duration::from_millis(50));
        // SAFETY: fds is a valid array of pollfd for its whole length.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis() as i32,
            )
        };
    }
}

/// Waits until no probe has any of `l`'s objects.
pub fn wait_absent(probes: &mut [Probe], l: &FakeLease, timeout: Duration) -> bool {
    crate::rig::poll(timeout, Duration::from_millis(5), || {
        probes.iter_mut().all(|p| p.absent(l)).then_some(())
    })
    .is_some()
}
