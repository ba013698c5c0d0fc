//! The worker's three passes: the fast path (a new snapshot against the state applied last,
//! incremental when only a few leases changed), the full path (devices, addresses, dumps,
//! diff, apply, firewall, bridges) and the tunnel read-back.

use std::sync::Arc;
use std::time::Instant;

use super::{devices, kernel, lease_delta, release_free_memory, Failure, Report, Snapshot, Worker};
use crate::netlink::Mac;
use crate::plan::{self, Desired, Speakers};
use crate::subnet::Family;

/// What the fast path did in one family: operations sent, peers programmed.
struct FastFamily {
    ops: usize,
    peers: usize,
}

impl Worker {
    /// The fast path: the new desired state against the last applied one, without reading
    /// the kernel, family by family. When only leases changed, only those are looked at, so
    /// the cost of an event does not grow with the number of leases.
    pub(super) fn fast(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let Some(s) = self.state.clone() else {
            return Ok(());
        };
        let mut result = Ok(());
        let (mut changes, mut peers, mut whole) = (0, 0, false);
        let mut replaced = Vec::new();
        for family in s.families() {
            let Some(run) = self.speakers(&s, family) else {
                continue;
            };
            let done = self.fast_family(&s, &run, &mut whole);
            let ok = done.is_ok();
            if let Ok(f) = &done {
                (changes, peers) = (changes + f.ops, peers + f.peers);
            }
            // The snapshot this one replaces is freed after the clock stops: thousands of
            // leases take a while to free, and by then the kernel is already programmed.
            replaced.push(if ok {
                self.applied_from[family].replace((s.clone(), run))
            } else {
                self.applied[family] = None;
                self.applied_from[family].take()
            });
            result = result.and(done.map(|_| ()));
        }
        self.metrics.leases_known.set(s.leases.len() as u64);
        self.metrics.subnet_pool_size.set(s.cfg.subnet_count());
        self.metrics.peers_programmed.set(peers as u64);
        if result.is_ok() && whole {
            self.probe_programmed();
        }
        if result.is_ok() && changes > 0 {
            let took_us = started.elapsed().as_micros() as u64;
            tracing::info!(changes, peers, took_us, "peers updated");
        }
        self.metrics.record_reconcile(started.elapsed());
        drop(replaced);
        result
    }

    /// One family's fast path: incremental when it can be, else the whole desired state
    /// against the applied one (`whole` is then set).
    fn fast_family(
        &mut self,
        s: &Arc<Snapshot>,
        run: &Speakers,
        whole: &mut bool,
    ) -> Result<FastFamily, Failure> {
        let family = run.family();
        if let Some(u) = self.incremental(s, run) {
            self.probes.change(u.probes_removed, u.probes_set);
            let peers = self.applied[family].as_ref().map_or(0, |a| a.peers);
            let fresh = u.fresh;
            let tunnel = (self.tunnels).write(
                &mut self.nl,
                &self.metrics,
                s,
                family,
                &u.tunnel,
                &|k| !fresh.contains(k),
                None,
            );
            let applied = kernel::apply(
                &mut self.nl,
                &self.metrics,
                &self.watched,
                Some(s),
                &u.ops,
                None,
            );
            return applied.and(tunnel).map(|()| FastFamily {
                ops: u.ops.len(),
                peers,
            });
        }
        *whole = true;
        let desired = self.desired(s, run);
        self.count_leases(s, desired.skipped.len());
        let Some(previous) = self.applied[family].take() else {
            return Err(Failure::NothingApplied);
        };
        let ops = plan::diff_applied(&desired, &previous);
        let have: Vec<_> = previous.tunnel.values().cloned().collect();
        let tunnel = (self.tunnels).mend(
            &mut self.nl,
            &self.metrics,
            s,
            family,
            (&desired.tunnel, &have),
            None,
        );
        let peers = desired.peers;
        self.applied[family] = Some(desired);
        let applied = kernel::apply(
            &mut self.nl,
            &self.metrics,
            &self.watched,
            Some(s),
            &ops,
            None,
        );
        applied.and(tunnel).map(|()| FastFamily {
            ops: ops.len(),
            peers,
        })
    }

    /// The operations for the leases that changed since the applied snapshot of `host`'s
    /// family, updating its applied state; `None` when anything else changed or the change
    /// needs the whole picture (see [`plan::update`]).
    fn incremental(&mut self, s: &Snapshot, run: &Speakers) -> Option<plan::Update> {
        let family = run.family();
        let (prev, prev_run) = self.applied_from[family].as_ref()?;
        // This host's own lease counts too: what it advertises decides which backend a pair
        // takes.
        if prev_run != run || prev.cfg != s.cfg || prev.own != s.own {
            return None;
        }
        let (gone, added) = lease_delta(&prev.leases, &s.leases)?;
        let applied = self.applied[family].as_mut()?;
        plan::update(&s.cfg, run, &s.own, applied, &gone, &added)
    }

    /// The full path: devices, addresses, dumps, diff and apply for each family, then the
    /// masquerade rules and the container bridges. A failure in one step does not keep the
    /// others from running.
    pub(super) fn full(&mut self) -> Result<(), Failure> {
        let started = Instant::now();
        let Some(s) = self.state.clone() else {
            return Ok(());
        };
        self.watch(&s);
        if let Some(ext) = self.uplink.changed(&mut self.nl, &self.watched, &s) {
            // The agent answers with a new snapshot and a kick; this one is out of date.
            let _ = self.reports.send(Report {
                ext: Some(ext),
                ..Report::default()
            });
            return Err(Failure::Iface);
        }
        let mut result = if self.uplink.is_missing() {
            Err(Failure::Iface)
        } else {
            Ok(())
        };
        devices::retire(&mut self.nl, &self.metrics, &self.watched, &s.retire);
        let mut report = Report::default();
        let mut skipped = 0;
        for family in Family::ALL {
            if !s.families().any(|f| f == family) {
                self.applied[family] = None;
                self.applied_from[family] = None;
                continue;
            }
            let (macs, pass) = self.full_family(&s, family, started);
            report.device_mac.extend(macs);
            skipped = skipped.max(pass.as_ref().map_or(0, |n| *n));
            result = result.and(pass.map(|_| ()));
        }
        result = result.and(self.after_full(&s, skipped));
        self.metrics.record_reconcile(started.elapsed());
        self.metrics
            .datapath_programmed
            .store(result.is_ok(), std::sync::atomic::Ordering::Relaxed);
        // A full pass parses whole kernel dumps (megabytes with thousands of peers), and lease
        // snapshots come and go between passes: hand the freed pages back to the kernel.
        release_free_memory();
        let _ = self.reports.send(report);
        result
    }

    /// What the full path does once every family is programmed: counts, the prober's targets,
    /// the firewall, the bridges.
    fn after_full(&mut self, s: &Snapshot, skipped: usize) -> Result<(), Failure> {
        self.count_leases(s, skipped);
        let peers: usize = Family::ALL
            .iter()
            .filter_map(|f| self.applied[*f].as_ref().map(|a| a.peers))
            .sum();
        self.metrics.peers_programmed.set(peers as u64);
        self.probe_programmed();
        let firewall = self.ensure_firewall(s);
        let bridges = devices::ensure_bridges(&mut self.nl, &self.metrics, &self.watched);
        firewall.and(bridges)
    }

    /// Tells the monitor thread which networks and interface concern weft.
    fn watch(&self, s: &Snapshot) {
        *self
            .watched
            .networks
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            s.families().filter_map(|f| s.cfg.network_of(f)).collect();
        (self.watched.ext).store(s.ext.index, std::sync::atomic::Ordering::Relaxed);
    }

    /// One family's part of the full path: its devices, their address, and the kernel's
    /// objects. Gives the devices' MACs by name and, when all went in, the number of leases
    /// the family skipped.
    fn full_family(
        &mut self,
        s: &Arc<Snapshot>,
        family: Family,
        started: Instant,
    ) -> (Vec<(String, Mac)>, Result<usize, Failure>) {
        let (devices, mut result) =
            devices::ensure_devices(&mut self.nl, &self.metrics, &self.watched, s, family);
        let macs = (devices.iter())
            .filter_map(|(spec, dev)| Some((spec.name.clone(), dev.mac?)))
            .collect();
        if let Some(subnet) = s.own_subnet(family) {
            for (spec, dev) in &devices {
                let a = devices::ensure_address(&mut self.nl, &self.metrics, spec, dev, subnet);
                result = result.and(a);
            }
        }
        let kernel = self.reconcile_kernel(s, family, started);
        (macs, result.and(kernel))
    }

    /// Routes, neighbours and FDB of `family`, and its tunnel's peers: the kernel's against
    /// the desired state, and the difference applied. The applied state is kept only when
    /// everything went in. Gives the number of leases the family skipped.
    fn reconcile_kernel(
        &mut self,
        s: &Arc<Snapshot>,
        family: Family,
        started: Instant,
    ) -> Result<usize, Failure> {
        let (Some(run), Some(own_subnet)) = (self.speakers(s, family), s.own_subnet(family)) else {
            return Ok(0);
        };
        let desired = self.desired(s, &run);
        let skipped = desired.skipped.len();
        let actual = kernel::read_actual(&mut self.nl, &s.cfg, &run, own_subnet).map_err(|e| {
            self.metrics.netlink_errors.inc();
            tracing::warn!(%family, error = %e, "cannot read the kernel's routes, neighbours or FDB");
            Failure::Dump
        })?;
        let ops = plan::diff(&desired, &actual);
        let previous = self.applied[family].take();
        let applying = Instant::now();
        // The tunnel's peers first, as on the fast path: a route that moves a pair onto the
        // tunnel (a migration, a restart mid-way) finds the peer there.
        let tunnel = self.mend_tunnel(s, family, &desired, previous.as_ref());
        let result = kernel::apply(
            &mut self.nl,
            &self.metrics,
            &self.watched,
            Some(s),
            &ops,
            previous.as_ref(),
        );
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
        let result = result.and(tunnel);
        if result.is_ok() {
            self.applied[family] = Some(desired);
            self.applied_from[family] = Some((s.clone(), run));
        } else {
            self.applied_from[family] = None;
        }
        result.map(|()| skipped)
    }

    /// Reads `family`'s tunnel peers back and makes them `want`'s (`previous` tells repairs).
    fn mend_tunnel(
        &mut self,
        s: &Snapshot,
        family: Family,
        want: &Desired,
        previous: Option<&Desired>,
    ) -> Result<(), Failure> {
        let Some(have) = self.tunnels.read(&mut self.nl, &self.metrics, s, family)? else {
            return Ok(());
        };
        let previous = previous.map(|p| &p.tunnel);
        let pair = (&want.tunnel, have.as_slice());
        (self.tunnels).mend(&mut self.nl, &self.metrics, s, family, pair, previous)
    }

    /// Reads the tunnel devices' peers back and mends any that differ from the state last
    /// applied (a peer removed, changed or added by hand). Err when a device cannot be read
    /// or changed: the full path then mends the device itself.
    pub(super) fn poll_tunnels(&mut self) -> Result<(), Failure> {
        let Some(s) = self.state.clone() else {
            return Ok(());
        };
        for family in s.families() {
            let Some(applied) = self.applied[family].take() else {
                continue;
            };
            let result = self.mend_tunnel(&s, family, &applied, Some(&applied));
            self.applied[family] = Some(applied);
            result?;
        }
        Ok(())
    }
}
