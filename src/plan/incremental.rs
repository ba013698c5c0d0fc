//! The lease-event path: the applied state moved by a few changed leases in place, in
//! O(k log n) for k changed among n, or declined when a change meets a rule that relates
//! leases to each other (then the caller computes the whole desired state).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::desired::{desired, overlap};
use super::diff::ops_between;
use super::{Desired, ProbeAt, Speakers};
use crate::backend::{PeerId, TunnelChange};
use crate::config::NetworkConfig;
use crate::lease::Lease;
use crate::netlink::{Op, Route};

/// What an incremental update changes: kernel objects and tunnel peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub ops: Vec<Op>,
    pub tunnel: TunnelChange,
    /// Tunnel peers the device does not hold yet.
    pub fresh: BTreeSet<PeerId>,
    /// Peers the probes stop at, and peers they start or move to (see [`Desired::probes`]).
    pub probes_removed: Vec<IpNet>,
    pub probes_set: Vec<(IpNet, ProbeAt)>,
}

/// Brings `applied` (the desired state last programmed) up to date with a few changed leases
/// in place and returns the operations, in O(k log n) for k changed leases among n: the lease
/// event path, whose cost must not grow with the size of the network. `gone` are leases no
/// longer known (or known before a change), `added` the new or changed ones.
///
/// The result is what [`desired`] over all leases and [`diff_applied`] would give. `None`
/// when the change meets a rule that relates leases to each other (a lease that was or would
/// be skipped, an overlap, a VTEP MAC, gateway or public key already in use): the caller
/// then computes the whole desired state. A backend's device routes are in `old` and `new`
/// alike, so they are kept as they are.
pub fn update(
    cfg: &NetworkConfig,
    run: &Speakers,
    own: &Lease,
    applied: &mut Desired,
    gone: &[Lease],
    added: &[Lease],
) -> Option<Update> {
    if !applied.skipped.is_empty() {
        return None;
    }
    let old = desired(cfg, run, own, gone);
    let new = desired(cfg, run, own, added);
    if !old.skipped.is_empty() || !new.skipped.is_empty() {
        return None;
    }
    if !holds(applied, &old) || !takes_only_free_keys(applied, &old, &new) {
        return None;
    }
    let ops = ops_between(&new, applied, &old);
    let tunnel = TunnelChange {
        set: (new.tunnel.iter())
            .filter(|(id, p)| applied.tunnel.get(*id) != Some(p))
            .map(|(_, p)| p.clone())
            .collect(),
        remove: (old.tunnel.iter())
            .filter(|(k, _)| !new.tunnel.contains_key(*k))
            .map(|(_, p)| p.clone())
            .collect(),
    };
    let fresh = (new.tunnel.keys())
        .filter(|k| !applied.tunnel.contains_key(*k))
        .cloned()
        .collect();
    let (probes_removed, probes_set) = replace(applied, old, new);
    Some(Update {
        ops,
        tunnel,
        fresh,
        probes_removed,
        probes_set,
    })
}

/// Whether `applied` holds every object of the gone leases (`old`), object for object.
fn holds(applied: &Desired, old: &Desired) -> bool {
    old.routes
        .iter()
        .all(|(k, v)| applied.routes.get(k) == Some(v))
        && old
            .neighbours
            .iter()
            .all(|(k, v)| applied.neighbours.get(k) == Some(v))
        && old.fdb.iter().all(|(k, v)| applied.fdb.get(k) == Some(v))
        && old
            .tunnel
            .iter()
            .all(|(k, v)| applied.tunnel.get(k) == Some(v))
        && old.peers <= applied.peers
}

/// Whether every object of the new leases takes a key that is free in `applied` or that a
/// gone lease (`old`) frees: otherwise the change relates leases to each other.
fn takes_only_free_keys(applied: &Desired, old: &Desired, new: &Desired) -> bool {
    for dst in new.routes.keys() {
        if let Some(other) = route_overlapping(&applied.routes, *dst) {
            if !old.routes.contains_key(&other) || other != *dst {
                return false;
            }
        }
    }
    let taken_elsewhere = |in_applied: bool, in_old: bool| in_applied && !in_old;
    let neighbour_taken = (new.neighbours.keys()).any(|k| {
        taken_elsewhere(
            applied.neighbours.contains_key(k),
            old.neighbours.contains_key(k),
        )
    });
    let identity_taken = (new.identities.iter())
        .any(|k| taken_elsewhere(applied.identities.contains(k), old.identities.contains(k)));
    !neighbour_taken && !identity_taken
}

/// Takes the gone leases' objects (`old`) out of `applied` and puts the new ones' in; gives
/// the probe targets that went and those that came or moved.
fn replace(
    applied: &mut Desired,
    old: Desired,
    new: Desired,
) -> (Vec<IpNet>, Vec<(IpNet, ProbeAt)>) {
    let probes_removed: Vec<IpNet> = (old.probes.keys())
        .filter(|k| !new.probes.contains_key(*k))
        .copied()
        .collect();
    let probes_set: Vec<(IpNet, ProbeAt)> = (new.probes.iter())
        .filter(|(k, v)| applied.probes.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
        .collect();
    // Key by key: a pass over `applied` would cost what grows with the network.
    for k in old.routes.keys() {
        applied.routes.remove(k);
    }
    for k in old.neighbours.keys() {
        applied.neighbours.remove(k);
    }
    for k in old.fdb.keys() {
        applied.fdb.remove(k);
    }
    for k in old.tunnel.keys() {
        applied.tunnel.remove(k);
    }
    for k in &old.identities {
        applied.identities.remove(k);
    }
    for k in old.probes.keys() {
        applied.probes.remove(k);
    }
    applied.peers = applied.peers - old.peers + new.peers;
    applied.probes.extend(new.probes);
    applied.routes.extend(new.routes);
    applied.neighbours.extend(new.neighbours);
    applied.fdb.extend(new.fdb);
    applied.tunnel.extend(new.tunnel);
    applied.identities.extend(new.identities);
    (probes_removed, probes_set)
}

/// The route whose destination overlaps `s` (see [`overlap`]): the destinations of weft's
/// routes are the accepted subnets, which never overlap.
fn route_overlapping(routes: &BTreeMap<IpNet, Route>, s: IpNet) -> Option<IpNet> {
    let key = |addr, len| IpNet::new(addr, len).expect("a prefix length within the family");
    overlap(routes, s, key, |dst, _| *dst)
}

#[cfg(test)]
mod tests {
    use crate::plan::testing::{cfg, lease, updates_match_full};

    #[test]
    fn update_gives_what_a_full_computation_gives_or_declines() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let a = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let b = lease("198.19.3.0/24", "198.18.0.3", Some("0e:00:00:00:00:03"), 3);
        let b_moved = lease("198.19.3.0/24", "198.18.0.9", Some("0e:00:00:00:00:09"), 4);
        let b_new_mac = lease("198.19.3.0/24", "198.18.0.3", Some("0e:00:00:00:00:0b"), 5);
        let d = lease("198.19.4.0/24", "198.18.0.4", Some("0e:00:00:00:00:04"), 6);
        // A newer lease reusing a's MAC: the full computation skips it.
        let dup_mac = lease("198.19.5.0/24", "198.18.0.5", Some("0e:00:00:00:00:02"), 7);
        let overlap = lease(
            "198.19.2.128/25",
            "198.18.0.6",
            Some("0e:00:00:00:00:06"),
            8,
        );
        let states = [
            vec![],
            vec![a.clone()],
            vec![a.clone(), b.clone()],
            vec![a.clone(), b_moved.clone(), d.clone()],
            vec![a.clone(), b_new_mac.clone()],
            vec![d.clone()],
            vec![a.clone(), dup_mac.clone()],
            vec![a.clone(), overlap.clone()],
        ];
        let fast = updates_match_full(&c, &own, &states);
        assert!(fast >= 30, "only {fast} changes took the incremental path");
    }
}
