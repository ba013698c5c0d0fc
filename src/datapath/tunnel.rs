//! A tunnel device's own peers (WireGuard's): the device tells nobody when they change, so
//! they are read back (on every full pass and on a short poll) and mended. Reading and
//! writing them is the backend's [`Tunnel`]; which changes are repairs is decided here.

use std::collections::{BTreeMap, BTreeSet};

use super::tally::Tally;
use super::{Failure, Snapshot};
use crate::backend::{PeerId, Tunnel, TunnelChange, TunnelPeer};
use crate::metrics::Metrics;
use crate::netlink::Netlink;
use crate::plan;
use crate::subnet::{Family, PerFamily};

/// Each family's tunnel, made from the spec of the family's device whose pass manages peers,
/// and kept while that device keeps its name (a tunnel may remember what it did). A host runs
/// at most one backend whose device holds peers (WireGuard): a migration is between two
/// types, and of the types weft has only WireGuard's devices hold peers.
#[derive(Default)]
pub(super) struct Tunnels {
    by_family: PerFamily<Option<(String, Box<dyn Tunnel>)>>,
}

impl Tunnels {
    /// Whether any device of `s` holds peers that must be polled.
    pub fn any(&mut self, s: &Snapshot) -> bool {
        Family::ALL.iter().any(|f| self.get(s, *f).is_some())
    }

    fn get(&mut self, s: &Snapshot, family: Family) -> Option<&mut Box<dyn Tunnel>> {
        let slot = &mut self.by_family[family];
        let kept = slot
            .as_ref()
            .is_some_and(|(name, _)| s.devices_of(family).any(|(_, d)| d.name == *name));
        if !kept {
            *slot = (s.devices_of(family))
                .find_map(|(_, spec)| Some((spec.name.clone(), spec.kind.tunnel(spec)?)));
        }
        slot.as_mut().map(|(_, t)| t)
    }

    /// The name of `family`'s device that holds peers, if any.
    fn device(&self, family: Family) -> Option<String> {
        self.by_family[family].as_ref().map(|(n, _)| n.clone())
    }

    /// The peers `family`'s tunnel device holds; None when the family manages no device's
    /// peers.
    pub fn read(
        &mut self,
        nl: &mut Netlink,
        metrics: &Metrics,
        s: &Snapshot,
        family: Family,
    ) -> Result<Option<Vec<TunnelPeer>>, Failure> {
        let Some(t) = self.get(s, family) else {
            metrics.set_handshakes(family, Vec::new());
            return Ok(None);
        };
        let read = t.read(nl);
        let peers = read.map_err(|e| {
            metrics.netlink_errors.inc();
            let device = self.device(family);
            tracing::warn!(device, error = %e, "cannot read the device's peers");
            Failure::Dump
        })?;
        // Every read (the poll, each full pass) refreshes the handshake ages /metrics shows.
        let handshakes = peers.iter().filter_map(|p| p.0.handshake()).collect();
        metrics.set_handshakes(family, handshakes);
        Ok(Some(peers))
    }

    /// Makes the peers of `family`'s tunnel device, `have`, into `want`. A change that puts
    /// back what `previous` (the state last applied) had, or removes a peer it did not have,
    /// is a drift repair.
    pub fn mend(
        &mut self,
        nl: &mut Netlink,
        metrics: &Metrics,
        s: &Snapshot,
        family: Family,
        (want, have): (&BTreeMap<PeerId, TunnelPeer>, &[TunnelPeer]),
        previous: Option<&BTreeMap<PeerId, TunnelPeer>>,
    ) -> Result<(), Failure> {
        let change = plan::diff_tunnel(want, have);
        let held: BTreeSet<PeerId> = have.iter().map(TunnelPeer::id).collect();
        self.write(
            nl,
            metrics,
            s,
            family,
            &change,
            &|id| held.contains(id),
            previous,
        )
    }

    /// Applies a change to `family`'s tunnel device, counting the drift repairs among it (see
    /// [`Tunnels::mend`]). `held` says whether the device holds a peer already.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        nl: &mut Netlink,
        metrics: &Metrics,
        s: &Snapshot,
        family: Family,
        change: &TunnelChange,
        held: &dyn Fn(&PeerId) -> bool,
        previous: Option<&BTreeMap<PeerId, TunnelPeer>>,
    ) -> Result<(), Failure> {
        if change.is_empty() {
            return Ok(());
        }
        if self.get(s, family).is_none() {
            return Ok(());
        }
        let device = self.device(family);
        let Some((_, t)) = self.by_family[family].as_mut() else {
            return Ok(());
        };
        let finished = t.write(nl, change, held).map_err(|e| {
            metrics.netlink_errors.inc();
            tracing::warn!(device, error = %e, "cannot change the device's peers; will retry");
            Failure::Apply
        })?;
        metrics.drift_repairs.inc_by(count_repairs(
            device.as_deref(),
            change,
            &finished,
            previous,
        ));
        Ok(())
    }
}

/// The repairs among `change`, logged in one line per kind: a peer set back as `previous`
/// had it (unless the device only finished taking it in), a peer removed that `previous` did
/// not have.
fn count_repairs(
    device: Option<&str>,
    change: &TunnelChange,
    finished: &[PeerId],
    previous: Option<&BTreeMap<PeerId, TunnelPeer>>,
) -> u64 {
    let mut tally = Tally::default();
    for p in &change.set {
        let object = p.describe();
        if finished.contains(&p.id()) {
            tracing::debug!(device, %object, "peer finished");
        } else if previous.is_some_and(|prev| prev.get(&p.id()) == Some(p)) {
            tally.repaired(object.to_string());
        } else {
            tracing::debug!(device, %object, "programmed");
        }
    }
    for p in &change.remove {
        let object = p.describe();
        if previous.is_some_and(|prev| !prev.contains_key(&p.id())) {
            tally.removed(object.to_string());
        } else {
            tracing::debug!(device, %object, "peer removed");
        }
    }
    tally.log(device);
    tally.repairs()
}
