//! The heart of weftd: the kernel state this host should have is a pure function of the
//! network config, this host's facts and the leases it knows; the reconciler reads what the
//! kernel has, keeps only the objects weft owns, and applies the difference. Events only say
//! when to look, so a hand-deleted route, a recreated device or a missed watch event all mend
//! the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::backend::uapi::Change as TunnelChange;
use crate::backend::wireguard::{Key, WgPeer};
pub use crate::backend::{Host, PeerObjects};
use crate::backend::{Identity, Peer};
use crate::config::NetworkConfig;
use crate::iface::ExtIface;
use crate::lease::Lease;
use crate::netlink::{
    is_permanent, FdbEntry, Mac, Neighbour, Netlink, NetlinkError, Op, Route, RTPROT_KERNEL,
    RT_TABLE_MAIN,
};
use crate::subnet::Family as SubnetFamily;

/// A lease that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub key: String,
    pub reason: String,
}

/// The whole desired state, keyed the way the kernel identifies each object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<IpNet, Route>,
    pub neighbours: BTreeMap<IpAddr, Neighbour>,
    pub fdb: BTreeMap<Mac, FdbEntry>,
    /// The tunnel device's peers (WireGuard), by public key.
    pub tunnel: BTreeMap<Key, WgPeer>,
    /// The identities (VTEP MACs, public keys) of the accepted peers and of this host.
    pub identities: BTreeSet<Identity>,
    /// The accepted peers as the probes see them: each one's subnet in the family, and the
    /// address that answers along the path its traffic takes (see [`crate::probe::probe_addr`]).
    pub probes: BTreeMap<IpNet, IpAddr>,
    pub peers: usize,
    pub skipped: Vec<Skip>,
}

/// What the kernel holds of weft's objects (after [`owned`] filtered a dump).
#[derive(Debug, Clone, Default)]
pub struct Actual {
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

/// The families a host runs an overlay in: those its lease has a subnet of, its external
/// interface an address of, and the network config a network of. IPv4 always qualifies.
pub fn families<'a>(
    cfg: &'a NetworkConfig,
    ext: &'a ExtIface,
    own: &'a Lease,
) -> impl Iterator<Item = SubnetFamily> + 'a {
    SubnetFamily::ALL.into_iter().filter(|f| {
        own.side(*f).is_some() && ext.public(*f).is_some() && cfg.network_of(*f).is_some()
    })
}

fn usable_ip(ip: IpAddr) -> Result<(), &'static str> {
    if ip.is_unspecified() {
        Err("is unspecified")
    } else if ip.is_loopback() {
        Err("is a loopback address")
    } else if ip.is_multicast() {
        Err("is a multicast address")
    } else if matches!(ip, IpAddr::V4(a) if a.is_broadcast()) {
        Err("is the broadcast address")
    } else {
        Ok(())
    }
}

/// The rules a lease's part in `family` must meet whoever looks at it: a subnet of the
/// network of that family (so `::/0`, a /128 or a subnet outside `IPv6Network` is refused) and
/// a usable public address. The one check of a lease's parts: the datapath builds on it (with
/// the rules relative to this host and the backend's), and `weftctl` lists by it. `Err` says
/// why the part must not be used.
pub fn check_side(
    cfg: &NetworkConfig,
    lease: &Lease,
    family: SubnetFamily,
) -> Result<(IpNet, IpAddr), String> {
    let Some(side) = lease.side(family) else {
        return Err(format!("the lease has no {family} subnet"));
    };
    let subnet = side.subnet;
    if !cfg.contains(subnet) {
        let network = match cfg.network_of(family) {
            Some(n) => format!("the {family} network {n}"),
            None => format!("the network, which has no {family}"),
        };
        return Err(format!("subnet {subnet} is not a subnet of {network}"));
    }
    let Some(public_ip) = side.public_ip else {
        return Err(format!("the lease has no {family} PublicIP"));
    };
    usable_ip(public_ip).map_err(|why| format!("PublicIP {public_ip} {why}"))?;
    Ok((subnet, public_ip))
}

/// The parts of a lease [`check_side`] refuses, with why: what no host uses of it.
pub fn refused_parts(cfg: &NetworkConfig, lease: &Lease) -> Vec<(SubnetFamily, String)> {
    SubnetFamily::ALL
        .into_iter()
        .filter(|f| lease.side(*f).is_some())
        .filter_map(|f| Some((f, check_side(cfg, lease, f).err()?)))
        .collect()
}

/// Checks one remote lease's side in `host`'s family on its own and returns the objects it
/// calls for. `Err` says why it must not be programmed. The rules here hold for every backend
/// and family ([`check_side`], and those relative to this host); the backend adds its own.
pub fn peer_objects(
    cfg: &NetworkConfig,
    host: &Host,
    own_subnet: IpNet,
    lease: &Lease,
) -> Result<PeerObjects, String> {
    let family = host.family();
    let (subnet, public_ip) = check_side(cfg, lease, family)?;
    if subnet.contains(&own_subnet) || own_subnet.contains(&subnet) {
        return Err(format!(
            "subnet {subnet} overlaps this host's subnet {own_subnet}"
        ));
    }
    if public_ip == host.public_ip {
        return Err(format!("PublicIP {public_ip} is this host's own address"));
    }
    let backend = crate::backend::of(&cfg.backend);
    let own_type = backend.type_name();
    if lease.attrs.backend_type != own_type {
        return Err(format!(
            "BackendType {:?} differs from this network's {own_type:?}",
            lease.attrs.backend_type
        ));
    }
    let peer = Peer {
        subnet,
        public_ip,
        data: lease.side(family).and_then(|s| s.backend_data),
        lease,
    };
    backend.peer(host, &peer)
}

/// The desired state of `host`'s family for all known leases. Leases that overlap each other
/// are settled by age: the older (lower revision, then lower key) is kept, the newer skipped.
pub fn desired<L: std::borrow::Borrow<Lease>>(
    cfg: &NetworkConfig,
    host: &Host,
    own: &Lease,
    leases: &[L],
) -> Desired {
    let mut out = Desired::default();
    let family = host.family();
    let Some(own_subnet) = own.side(family).map(|s| s.subnet) else {
        return out;
    };
    let subnet_of = |l: &Lease| l.side(family).map(|s| s.subnet);
    // A lease without a subnet of the family is no peer of it (an IPv4-only host seen from a
    // dual-stack one), and nothing to skip either.
    let mut sorted: Vec<&Lease> = leases
        .iter()
        .map(|l| l.borrow())
        .filter(|l| subnet_of(l).is_some_and(|s| s != own_subnet))
        .collect();
    // The key is built once per lease, not once per comparison: this runs on every lease
    // event, with thousands of leases.
    sorted.sort_by_cached_key(|l| (l.mod_revision, l.key_name()));
    let backend = crate::backend::of(&cfg.backend);
    if let Some(network) = cfg.network_of(family) {
        for r in backend.device_routes(host, network) {
            out.routes.insert(r.dst, r);
        }
    }
    let mut accepted: BTreeMap<IpAddr, IpNet> = BTreeMap::new();
    // This host's own identity is the oldest claim: a lease carrying it (a forgery, or a stale
    // copy of this host's data) would point this host's MAC or key away from it.
    let identity_of = |l: &Lease| backend.identity(l.side(family).and_then(|s| s.backend_data));
    let own_identity = identity_of(own);
    out.identities.extend(own_identity.clone());
    for lease in sorted {
        let key = lease.key_name();
        let subnet = subnet_of(lease);
        let overlap = subnet.and_then(|s| Some((s, overlapping(&accepted, s)?)));
        if let Some((s, other)) = overlap {
            out.skipped.push(Skip {
                key,
                reason: format!("subnet {s} overlaps the older lease {other}"),
            });
            continue;
        }
        match peer_objects(cfg, host, own_subnet, lease) {
            Ok(objects) => {
                // Two leases with one identity would fight over one FDB entry or one
                // device peer.
                if let Some(id) = identity_of(lease) {
                    let taken = out.identities.contains(&id);
                    if taken {
                        let reason = if Some(&id) == own_identity.as_ref() {
                            format!("{id} is this host's own")
                        } else {
                            format!("{} is already used by an older lease", id.what)
                        };
                        out.skipped.push(Skip { key, reason });
                        continue;
                    }
                    out.identities.insert(id);
                }
                // peer_objects refuses a lease without a subnet in the family.
                if let Some(s) = subnet {
                    accepted.insert(s.network(), s);
                }
                if let Some(side) = lease.side(family) {
                    let tunnel = host.device.is_some();
                    if let Some(addr) = crate::probe::probe_addr(&side, tunnel) {
                        out.probes.insert(side.subnet, addr);
                    }
                }
                out.peers += 1;
                if let Some(r) = objects.route {
                    out.routes.insert(r.dst, r);
                }
                if let Some(n) = objects.neighbour {
                    out.neighbours.insert(n.ip, n);
                }
                if let Some(f) = objects.fdb {
                    out.fdb.insert(f.mac, f);
                }
                if let Some(t) = objects.tunnel {
                    out.tunnel.insert(t.public_key, t);
                }
            }
            Err(reason) => out.skipped.push(Skip { key, reason }),
        }
    }
    out
}

/// The accepted subnet `s` overlaps, if any (see [`overlap`]).
fn overlapping(accepted: &BTreeMap<IpAddr, IpNet>, s: IpNet) -> Option<IpNet> {
    overlap(accepted, s, |addr, _| addr, |_, net| *net)
}

/// Which of `taken`'s subnets `s` overlaps, in O(log n), for either family. `taken` never
/// holds two that overlap each other, so only two can: the last one starting at or before
/// `s` (it may contain `s`) and the first one starting inside `s` (`s` contains it). `key`
/// is the map's key of a subnet address and prefix length, `net` the subnet of an entry.
fn overlap<K: Ord, V>(
    taken: &BTreeMap<K, V>,
    s: IpNet,
    key: impl Fn(IpAddr, u8) -> K,
    net: impl Fn(&K, &V) -> IpNet,
) -> Option<IpNet> {
    let bits = SubnetFamily::of(s.addr()).bits();
    if let Some((k, v)) = taken.range(..=key(s.network(), bits)).next_back() {
        let n = net(k, v);
        if n.contains(&s.network()) {
            return Some(n);
        }
    }
    taken
        .range(key(s.network(), 0)..=key(s.broadcast(), bits))
        .next()
        .map(|(k, v)| net(k, v))
}

/// Keeps only the kernel objects weft owns: routes in the main table inside the network (not
/// this host's own subnet, not the kernel's) on weft's device or the external interface;
/// permanent neighbours and FDB entries on the backend's device.
pub fn owned(
    cfg: &NetworkConfig,
    host: &Host,
    own_subnet: impl Into<IpNet>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
) -> Actual {
    let family = host.family();
    let Some(network) = cfg.network_of(family) else {
        return Actual::default();
    };
    let own_subnet = own_subnet.into();
    let routes = routes
        .into_iter()
        .filter(|r| {
            r.table == RT_TABLE_MAIN
                && r.protocol != RTPROT_KERNEL
                && network.contains(&r.dst)
                && !own_subnet.contains(&r.dst)
                && r.oif.is_some()
                && (r.oif == host.device || r.oif == Some(host.ext_index))
        })
        .collect();
    let neighbours = neighbours
        .into_iter()
        .filter(|n| {
            Some(n.index) == host.device
                && is_permanent(n.state)
                && SubnetFamily::of(n.ip) == family
        })
        .collect();
    let fdb = fdb
        .into_iter()
        .filter(|f| {
            Some(f.index) == host.device && f.permanent && f.dst.is_some() && f.mac != [0; 6]
        })
        .collect();
    Actual {
        routes,
        neighbours,
        fdb,
    }
}

fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.gateway == b.gateway && a.oif == b.oif && a.onlink == b.onlink
}

/// Reads weft's objects from the kernel (the routes of the main table, the neighbours and FDB
/// of the backend's device) and keeps those [`owned`] says are weft's.
pub fn read_actual(
    nl: &mut Netlink,
    cfg: &NetworkConfig,
    host: &Host,
    own_subnet: impl Into<IpNet>,
) -> Result<Actual, NetlinkError> {
    let routes = nl.routes(host.family().into())?;
    let (neigh, fdb) = match host.device {
        Some(d) => (nl.neighbours(Some(d))?, nl.fdb(Some(d))?),
        None => (Vec::new(), Vec::new()),
    };
    Ok(owned(cfg, host, own_subnet, routes, neigh, fdb))
}

/// The operations that turn `actual` into `desired`: replacements first (a changed object is
/// replaced in place, never deleted and re-added, so traffic never sees a gap), then removals.
pub fn diff(desired: &Desired, actual: &Actual) -> Vec<Op> {
    let actual = Indexed::new(actual);
    ops_between(desired, &actual, &actual)
}

/// The operations that turn the state last applied into `desired`, without reading the
/// kernel: what the fast path runs on a lease event. The same operations, in the same order,
/// as [`diff`] against a kernel that holds exactly `applied`, but no object is copied.
pub fn diff_applied(desired: &Desired, applied: &Desired) -> Vec<Op> {
    ops_between(desired, applied, applied)
}

/// Objects of one kind, looked up by the key the kernel identifies them by. The kernel may
/// hold several under one key (routes with other metrics, FDB entries to several hosts);
/// a desired state holds one.
trait Held<K, V> {
    fn at(&self, key: &K) -> &[V];
    fn each<'a>(&'a self) -> impl Iterator<Item = &'a V>
    where
        V: 'a;
}

impl<K: Ord, V> Held<K, V> for BTreeMap<K, V> {
    fn at(&self, key: &K) -> &[V] {
        self.get(key).map(std::slice::from_ref).unwrap_or(&[])
    }
    fn each<'a>(&'a self) -> impl Iterator<Item = &'a V>
    where
        V: 'a,
    {
        self.values()
    }
}

/// A kernel dump indexed by key.
struct Many<K, V>(BTreeMap<K, Vec<V>>);

impl<K: Ord, V: Clone> Many<K, V> {
    fn new(items: &[V], key: impl Fn(&V) -> K) -> Many<K, V> {
        let mut m: BTreeMap<K, Vec<V>> = BTreeMap::new();
        for v in items {
            m.entry(key(v)).or_default().push(v.clone());
        }
        Many(m)
    }
}

impl<K: Ord, V> Held<K, V> for Many<K, V> {
    fn at(&self, key: &K) -> &[V] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
    fn each<'a>(&'a self) -> impl Iterator<Item = &'a V>
    where
        V: 'a,
    {
        self.0.values().flatten()
    }
}

/// A set of weft's objects the diff can compare against: the kernel's or a desired state.
trait Objects {
    fn routes(&self) -> &impl Held<IpNet, Route>;
    fn neighbours(&self) -> &impl Held<IpAddr, Neighbour>;
    fn fdb(&self) -> &impl Held<Mac, FdbEntry>;
}

impl Objects for Desired {
    fn routes(&self) -> &impl Held<IpNet, Route> {
        &self.routes
    }
    fn neighbours(&self) -> &impl Held<IpAddr, Neighbour> {
        &self.neighbours
    }
    fn fdb(&self) -> &impl Held<Mac, FdbEntry> {
        &self.fdb
    }
}

/// What the kernel holds, indexed like a desired state.
struct Indexed {
    routes: Many<IpNet, Route>,
    neighbours: Many<IpAddr, Neighbour>,
    fdb: Many<Mac, FdbEntry>,
}

impl Indexed {
    fn new(a: &Actual) -> Indexed {
        Indexed {
            routes: Many::new(&a.routes, |r| r.dst),
            neighbours: Many::new(&a.neighbours, |n| n.ip),
            fdb: Many::new(&a.fdb, |f| f.mac),
        }
    }
}

impl Objects for Indexed {
    fn routes(&self) -> &impl Held<IpNet, Route> {
        &self.routes
    }
    fn neighbours(&self) -> &impl Held<IpAddr, Neighbour> {
        &self.neighbours
    }
    fn fdb(&self) -> &impl Held<Mac, FdbEntry> {
        &self.fdb
    }
}

/// The one diff: replacements for every object of `want` that `have` lacks or holds
/// otherwise, then removals of every object of `stale` that `want` no longer has. The full
/// path passes the kernel as both; the fast path the applied state; an incremental update
/// the applied state and the objects of the leases that went.
fn ops_between(want: &Desired, have: &impl Objects, stale: &impl Objects) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut dels = Vec::new();
    for (dst, w) in &want.routes {
        let held = have.routes().at(dst);
        if !held.iter().any(|h| same_route(h, w)) {
            ops.push(Op::ReplaceRoute(w.clone()));
        }
        // A route of ours to the same destination with another metric is another route: the
        // replacement leaves it, so it goes.
        for h in held
            .iter()
            .filter(|h| !same_route(h, w) && h.metric != w.metric)
        {
            dels.push(Op::DelRoute(h.clone()));
        }
    }
    for s in stale.routes().each() {
        if !want.routes.contains_key(&s.dst) {
            dels.push(Op::DelRoute(s.clone()));
        }
    }
    for (ip, w) in &want.neighbours {
        if have.neighbours().at(ip).last().map(|h| h.mac) != Some(w.mac) {
            ops.push(Op::ReplaceNeighbour(w.clone()));
        }
    }
    for s in stale.neighbours().each() {
        if !want.neighbours.contains_key(&s.ip) {
            dels.push(Op::DelNeighbour(s.clone()));
        }
    }
    for (mac, w) in &want.fdb {
        if !have.fdb().at(mac).iter().any(|h| h.dst == w.dst) {
            ops.push(Op::ReplaceFdb(w.clone()));
        }
    }
    for s in stale.fdb().each() {
        if want.fdb.get(&s.mac).is_none_or(|w| w.dst != s.dst) {
            dels.push(Op::DelFdb(s.clone()));
        }
    }
    ops.extend(dels);
    ops
}

/// What an incremental update changes: kernel objects and tunnel peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub ops: Vec<Op>,
    pub tunnel: TunnelChange,
    /// Tunnel peers the device does not hold yet.
    pub fresh: BTreeSet<Key>,
    /// Peers the probes stop at, and peers they start or move to (see [`Desired::probes`]).
    pub probes_removed: Vec<IpNet>,
    pub probes_set: Vec<(IpNet, IpAddr)>,
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
    host: &Host,
    own: &Lease,
    applied: &mut Desired,
    gone: &[Lease],
    added: &[Lease],
) -> Option<Update> {
    if !applied.skipped.is_empty() {
        return None;
    }
    let old = desired(cfg, host, own, gone);
    let new = desired(cfg, host, own, added);
    if !old.skipped.is_empty() || !new.skipped.is_empty() {
        return None;
    }
    // Every gone lease must be one the applied state holds, object for object.
    let held = old
        .routes
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
            .all(|(k, v)| applied.tunnel.get(k) == Some(v));
    if !held || old.peers > applied.peers {
        return None;
    }
    // A new object may only take a key that is free or that a gone lease frees.
    for dst in new.routes.keys() {
        if let Some(other) = route_overlapping(&applied.routes, *dst) {
            if !old.routes.contains_key(&other) || other != *dst {
                return None;
            }
        }
    }
    let taken_elsewhere = |in_applied: bool, in_old: bool| in_applied && !in_old;
    if new.neighbours.keys().any(|k| {
        taken_elsewhere(
            applied.neighbours.contains_key(k),
            old.neighbours.contains_key(k),
        )
    }) || new
        .identities
        .iter()
        .any(|k| taken_elsewhere(applied.identities.contains(k), old.identities.contains(k)))
    {
        return None;
    }

    let ops = ops_between(&new, applied, &old);
    let tunnel = TunnelChange {
        set: (new.tunnel.values())
            .filter(|p| applied.tunnel.get(&p.public_key) != Some(p))
            .cloned()
            .collect(),
        remove: (old.tunnel.keys())
            .filter(|k| !new.tunnel.contains_key(*k))
            .copied()
            .collect(),
        ..TunnelChange::default()
    };
    let fresh = (new.tunnel.keys())
        .filter(|k| !applied.tunnel.contains_key(*k))
        .copied()
        .collect();

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
    let probes_removed: Vec<IpNet> = (old.probes.keys())
        .filter(|k| !new.probes.contains_key(*k))
        .copied()
        .collect();
    let probes_set: Vec<(IpNet, IpAddr)> = (new.probes.iter())
        .filter(|(k, v)| applied.probes.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
        .collect();
    for k in old.probes.keys() {
        applied.probes.remove(k);
    }
    applied.probes.extend(new.probes);
    applied.routes.extend(new.routes);
    applied.neighbours.extend(new.neighbours);
    applied.fdb.extend(new.fdb);
    applied.tunnel.extend(new.tunnel);
    applied.identities.extend(new.identities);
    applied.peers = applied.peers - old.peers + new.peers;
    Some(Update {
        ops,
        tunnel,
        fresh,
        probes_removed,
        probes_set,
    })
}

/// The changes that make a tunnel device's peers `have` into `want`: peers missing or
/// different are set (their allowed IPs replaced), peers no lease calls for are removed.
pub fn diff_tunnel<'a>(
    want: &BTreeMap<Key, WgPeer>,
    have: impl IntoIterator<Item = &'a WgPeer>,
) -> TunnelChange {
    let mut change = TunnelChange::default();
    let mut seen = BTreeSet::new();
    for h in have {
        seen.insert(h.public_key);
        match want.get(&h.public_key) {
            Some(w) if same_peer(w, h) => {}
            Some(w) => change.set.push(w.clone()),
            None => change.remove.push(h.public_key),
        }
    }
    change.set.extend(
        want.values()
            .filter(|w| !seen.contains(&w.public_key))
            .cloned(),
    );
    change
}

/// Two peers are the same when all weft sets agrees; the device may list allowed IPs in
/// another order.
fn same_peer(a: &WgPeer, b: &WgPeer) -> bool {
    let sorted = |p: &WgPeer| {
        let mut ips = p.allowed_ips.clone();
        ips.sort();
        ips
    };
    a.public_key == b.public_key
        && a.endpoint == b.endpoint
        && a.psk == b.psk
        && a.keepalive == b.keepalive
        && sorted(a) == sorted(b)
}

/// A short name of a tunnel peer, for logs and `weftctl check`.
pub fn describe_peer(p: &WgPeer) -> String {
    let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
    format!(
        "WireGuard peer {} endpoint {} allowed-ips {}",
        crate::backend::wireguard::format_key(&p.public_key),
        p.endpoint
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none".into()),
        ips.join(",")
    )
}

/// The route whose destination overlaps `s` (see [`overlap`]): the destinations of weft's
/// routes are the accepted subnets, which never overlap.
fn route_overlapping(routes: &BTreeMap<IpNet, Route>, s: IpNet) -> Option<IpNet> {
    let key = |addr, len| IpNet::new(addr, len).expect("a prefix length within the family");
    overlap(routes, s, key, |dst, _| *dst)
}

/// Ops that put back objects the previous desired state already had: the kernel lost them
/// (or someone changed them) since weft last programmed them. Counted as drift repairs.
pub fn is_repair(op: &Op, previous: &Desired) -> bool {
    match op {
        Op::ReplaceRoute(r) => previous
            .routes
            .get(&r.dst)
            .is_some_and(|p| same_route(p, r)),
        Op::ReplaceNeighbour(n) => previous.neighbours.get(&n.ip) == Some(n),
        Op::ReplaceFdb(f) => previous.fdb.get(&f.mac) == Some(f),
        _ => false,
    }
}

/// A short name of an op's object, for logs and `weftctl check`; `dev` names a device by its
/// index.
pub fn describe(op: &Op, dev: &dyn Fn(u32) -> String) -> String {
    let route = |r: &Route| {
        let mut s = r.dst.to_string();
        if let Some(g) = r.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(o) = r.oif {
            s.push_str(&format!(" dev {}", dev(o)));
        }
        if r.onlink {
            s.push_str(" onlink");
        }
        s
    };
    let mac = |m: &Option<Mac>| {
        m.map(|m| crate::netlink::format_mac(&m))
            .unwrap_or_default()
    };
    match op {
        Op::ReplaceRoute(r) => format!("route {}", route(r)),
        Op::DelRoute(r) => format!("remove route {}", route(r)),
        Op::ReplaceNeighbour(n) => format!("neighbour {} lladdr {}", n.ip, mac(&n.mac)),
        Op::DelNeighbour(n) => format!("remove neighbour {}", n.ip),
        Op::ReplaceFdb(f) => format!(
            "fdb {} dst {}",
            crate::netlink::format_mac(&f.mac),
            f.dst.map(|d| d.to_string()).unwrap_or_default()
        ),
        Op::DelFdb(f) => format!("remove fdb {}", crate::netlink::format_mac(&f.mac)),
        Op::AddAddress(i, a) => format!("address {a} on {}", dev(*i)),
        Op::DelAddress(i, a) => format!("remove address {a} from {}", dev(*i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::netlink::NUD_PERMANENT;

    fn cfg(backend: &str) -> NetworkConfig {
        NetworkConfig::parse(&format!(
            r#"{{"Network":"198.19.0.0/16","Backend":{backend}}}"#
        ))
        .unwrap()
    }

    fn lease(subnet: &str, ip: &str, mac: Option<&str>, rev: i64) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            subnet6: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: if mac.is_some() { "vxlan" } else { "host-gw" }.into(),
                backend_data: mac.map(|m| serde_json::json!({"VNI": 1, "VtepMAC": m})),
                backend_v6_data: None,
            },
            expiration: None,
            etcd_lease_id: None,
            mod_revision: rev,
        }
    }

    fn host() -> Host {
        Host {
            public_ip: "198.18.0.1".parse().unwrap(),
            ext_index: 2,
            ext_networks: vec!["198.18.0.0/24".parse().unwrap()],
            device: Some(7),
            other_public_ip: None,
        }
    }

    fn wg_lease(subnet: &str, ip: &str, key: u8, rev: i64) -> Lease {
        let mut l = lease(subnet, ip, None, rev);
        l.attrs.backend_type = "wireguard".into();
        l.attrs.backend_data = Some(
            crate::backend::wireguard::WgLeaseData {
                public_key: [key; 32],
                port: 51820,
            }
            .to_value(),
        );
        l
    }

    #[test]
    fn wireguard_peers_are_one_per_key_with_one_network_route() {
        let c = cfg(
            r#"{"Type":"wireguard","PSK":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=","PersistentKeepaliveInterval":25}"#,
        );
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let peer = wg_lease("198.19.2.0/24", "198.18.0.2", 2, 2);
        let twin = wg_lease("198.19.3.0/24", "198.18.0.3", 2, 3);
        let d = desired(&c, &host(), &own, &[own.clone(), peer.clone(), twin]);
        assert_eq!(d.peers, 1);
        assert_eq!(d.skipped.len(), 1);
        assert!(
            d.skipped[0].reason.contains("PublicKey is already used"),
            "{:?}",
            d.skipped
        );
        let p = &d.tunnel[&[2; 32]];
        assert_eq!(p.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(
            p.allowed_ips,
            vec!["198.19.2.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!((p.psk, p.keepalive), (Some([7; 32]), 25));
        // No per-peer route: one for the whole network on the device, scope link.
        assert_eq!(d.routes.len(), 1);
        let r = &d.routes[&"198.19.0.0/16".parse::<IpNet>().unwrap()];
        assert_eq!((r.oif, r.gateway), (Some(7), None));
        assert_eq!(r.scope, crate::netlink::RouteScope::Link);
    }

    #[test]
    fn update_of_tunnel_peers_gives_what_a_full_computation_gives_or_declines() {
        let c = cfg(r#"{"Type":"wireguard"}"#);
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let a = wg_lease("198.19.2.0/24", "198.18.0.2", 2, 2);
        let b = wg_lease("198.19.3.0/24", "198.18.0.3", 3, 3);
        let b_moved = wg_lease("198.19.3.0/24", "198.18.0.33", 3, 4);
        let b_rekeyed = wg_lease("198.19.3.0/24", "198.18.0.3", 33, 5);
        let d = wg_lease("198.19.4.0/24", "198.18.0.4", 4, 6);
        let dup_key = wg_lease("198.19.5.0/24", "198.18.0.5", 2, 7);
        let states = [
            vec![],
            vec![a.clone()],
            vec![a.clone(), b.clone()],
            vec![a.clone(), b_moved.clone(), d.clone()],
            vec![a.clone(), b_rekeyed.clone()],
            vec![d.clone()],
            vec![a.clone(), dup_key.clone()],
        ];
        let fast = updates_match_full(&c, &own, &states);
        assert!(fast >= 25, "only {fast} changes took the incremental path");
    }

    #[test]
    fn tunnel_diff_sets_what_differs_and_removes_what_no_lease_wants() {
        let c = cfg(r#"{"Type":"wireguard"}"#);
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let a = wg_lease("198.19.2.0/24", "198.18.0.2", 2, 2);
        let b = wg_lease("198.19.3.0/24", "198.18.0.3", 3, 3);
        let d = desired(&c, &host(), &own, &[a, b]);
        let mut have: Vec<WgPeer> = d.tunnel.values().cloned().collect();
        assert_eq!(diff_tunnel(&d.tunnel, &have), TunnelChange::default());
        // Another order of allowed IPs is the same peer.
        have[0].allowed_ips.reverse();
        assert_eq!(diff_tunnel(&d.tunnel, &have), TunnelChange::default());
        have[0].endpoint = Some("198.18.0.99:51820".parse().unwrap());
        have.remove(1);
        let stranger = WgPeer {
            public_key: [9; 32],
            endpoint: None,
            allowed_ips: vec![],
            psk: None,
            keepalive: 0,
        };
        have.push(stranger);
        let change = diff_tunnel(&d.tunnel, &have);
        let keys: Vec<Key> = change.set.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, vec![[2; 32], [3; 32]]);
        assert_eq!(change.set[0], d.tunnel[&[2; 32]]);
        assert_eq!(change.remove, vec![[9; 32]]);
    }

    #[test]
    fn vxlan_peer_gets_flannels_three_objects() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let peer = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let d = desired(&c, &host(), &own, &[own.clone(), peer]);
        assert_eq!(d.peers, 1);
        let r = &d.routes[&"198.19.2.0/24".parse::<IpNet>().unwrap()];
        assert_eq!(r.gateway, Some("198.19.2.0".parse().unwrap()));
        assert_eq!((r.oif, r.onlink), (Some(7), true));
        let n = &d.neighbours[&"198.19.2.0".parse::<IpAddr>().unwrap()];
        assert_eq!(n.mac, Some([0x0e, 0, 0, 0, 0, 2]));
        assert_eq!(n.state, NUD_PERMANENT);
        let f = &d.fdb[&[0x0e, 0, 0, 0, 0, 2]];
        assert_eq!(f.dst, Some("198.18.0.2".parse().unwrap()));
    }

    #[test]
    fn a_lease_with_this_hosts_own_mac_or_key_is_skipped_as_such() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        // Another spelling of this host's MAC, with another host's address.
        let forged = lease(
            "198.19.181.0/24",
            "198.18.0.2",
            Some("0E:00:00:00:00:01"),
            2,
        );
        let d = desired(&c, &host(), &own, &[own.clone(), forged.clone()]);
        assert_eq!((d.peers, d.fdb.len()), (0, 0));
        assert_eq!(
            d.skipped,
            [Skip {
                key: "198.19.181.0-24".into(),
                reason: "VtepMAC 0e:00:00:00:00:01 is this host's own".into()
            }]
        );
        // The same when the lease arrives as an event.
        let mut applied = desired(&c, &host(), &own, std::slice::from_ref(&own));
        assert_eq!(
            update(&c, &host(), &own, &mut applied, &[], &[forged]),
            None
        );

        let c = cfg(r#"{"Type":"wireguard"}"#);
        let own = wg_lease("198.19.1.0/24", "198.18.0.1", 1, 1);
        let forged = wg_lease("198.19.181.0/24", "198.18.0.2", 1, 2);
        let d = desired(&c, &host(), &own, &[own.clone(), forged]);
        assert!(d.tunnel.is_empty());
        assert_eq!(d.skipped.len(), 1);
        let key = crate::backend::wireguard::format_key(&[1; 32]);
        assert_eq!(
            d.skipped[0].reason,
            format!("PublicKey {key} is this host's own")
        );
    }

    #[test]
    fn a_lease_part_outside_its_network_is_refused_whoever_looks() {
        let c = NetworkConfig::parse(
            r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let mut l = lease(
            "198.19.211.0/24",
            "198.18.0.2",
            Some("0e:00:00:00:00:02"),
            1,
        );
        l.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        assert!(check_side(&c, &l, SubnetFamily::V4).is_ok());
        for (v6, why) in [
            (
                "::/0",
                "subnet ::/0 is not a subnet of the IPv6 network 2001:db8:100::/48",
            ),
            (
                "2001:db8:100:cc::/127",
                "is not a subnet of the IPv6 network",
            ),
            (
                "2001:db8:100:cc::/128",
                "is not a subnet of the IPv6 network",
            ),
            ("2001:db8:200::/64", "is not a subnet of the IPv6 network"),
        ] {
            l.subnet6 = Some(v6.parse().unwrap());
            let e = check_side(&c, &l, SubnetFamily::V6).unwrap_err();
            assert!(e.contains(why), "{v6}: {e}");
        }
        l.subnet6 = Some("2001:db8:100:cc::/64".parse().unwrap());
        assert!(check_side(&c, &l, SubnetFamily::V6).is_ok());
        l.attrs.public_ipv6 = None;
        let e = check_side(&c, &l, SubnetFamily::V6).unwrap_err();
        assert_eq!(e, "the lease has no IPv6 PublicIP");
    }

    #[test]
    fn untrusted_leases_are_skipped_with_the_reason() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let bad = [
            lease("198.19.1.0/25", "198.18.0.9", Some("0e:00:00:00:00:09"), 2),
            lease("198.19.3.0/24", "224.0.0.5", Some("0e:00:00:00:00:03"), 3),
            lease("198.19.4.0/24", "127.0.0.1", Some("0e:00:00:00:00:04"), 4),
            lease("198.19.5.0/24", "198.18.0.1", Some("0e:00:00:00:00:05"), 5),
            lease("198.19.6.0/24", "198.18.0.6", Some("01:00:5e:00:00:01"), 6),
            lease("198.19.7.0/24", "198.18.0.7", Some("not-a-mac"), 7),
            lease("198.19.8.0/24", "198.18.0.8", None, 8),
            lease(
                "198.19.9.0/24",
                "255.255.255.255",
                Some("0e:00:00:00:00:0a"),
                9,
            ),
        ];
        let d = desired(&c, &host(), &own, &bad);
        assert_eq!(d.peers, 0, "{:?}", d.routes);
        assert_eq!(d.skipped.len(), bad.len());
        let reasons: Vec<_> = d.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert!(
            reasons[0].contains("not a subnet of the IPv4 network 198.19.0.0/16"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("multicast"), "{reasons:?}");
        assert!(reasons[2].contains("loopback"), "{reasons:?}");
        assert!(reasons[3].contains("this host's own"), "{reasons:?}");
        assert!(reasons[4].contains("not a unicast"), "{reasons:?}");
        assert!(reasons[5].contains("not-a-mac"), "{reasons:?}");
        assert!(reasons[6].contains("BackendType"), "{reasons:?}");
        assert!(reasons[7].contains("broadcast"), "{reasons:?}");
        assert_eq!(d.skipped[1].key, "198.19.3.0-24");
    }

    #[test]
    fn overlapping_leases_keep_the_older() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let older = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 5);
        let newer = lease("198.19.2.0/23", "198.18.0.3", Some("0e:00:00:00:00:03"), 9);
        let d = desired(&c, &host(), &own, &[newer, older]);
        assert_eq!(d.peers, 1);
        assert!(d
            .routes
            .contains_key(&"198.19.2.0/24".parse::<IpNet>().unwrap()));
        assert!(d.skipped[0].reason.contains("overlaps the older lease"));
    }

    #[test]
    fn overlap_is_found_on_either_side() {
        let mut acc = BTreeMap::new();
        for s in ["198.19.0.0/24", "198.19.4.0/22", "198.19.9.0/24"] {
            let n: IpNet = s.parse().unwrap();
            acc.insert(n.network(), n);
        }
        let o = |s: &str| overlapping(&acc, s.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(o("198.19.0.128/25").as_deref(), Some("198.19.0.0/24"));
        assert_eq!(o("198.19.6.0/24").as_deref(), Some("198.19.4.0/22"));
        assert_eq!(o("198.19.8.0/22").as_deref(), Some("198.19.9.0/24"));
        assert_eq!(o("198.19.0.0/16").as_deref(), Some("198.19.0.0/24"));
        assert_eq!(o("198.19.1.0/24"), None);
        assert_eq!(o("198.19.8.0/24"), None);
        assert_eq!(o("198.19.10.0/23"), None);
    }

    #[test]
    fn diff_applied_matches_a_diff_against_a_kernel_holding_the_applied_state() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let a = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let b = lease("198.19.3.0/24", "198.18.0.3", Some("0e:00:00:00:00:03"), 3);
        let b_moved = lease("198.19.3.0/24", "198.18.0.9", Some("0e:00:00:00:00:09"), 4);
        let d = lease("198.19.4.0/24", "198.18.0.4", Some("0e:00:00:00:00:04"), 5);
        let states = [
            vec![],
            vec![a.clone()],
            vec![a.clone(), b.clone()],
            vec![a.clone(), b_moved.clone(), d.clone()],
            vec![d],
        ];
        for old in &states {
            for new in &states {
                let applied = desired(&c, &host(), &own, old);
                let want = desired(&c, &host(), &own, new);
                let kernel = Actual {
                    routes: applied.routes.values().cloned().collect(),
                    neighbours: applied.neighbours.values().cloned().collect(),
                    fdb: applied.fdb.values().cloned().collect(),
                };
                assert_eq!(diff_applied(&want, &applied), diff(&want, &kernel));
            }
        }
    }

    /// Moves between every pair of `states` with [`update`] and checks it against the full
    /// computation (ops, tunnel change, resulting state), or that it declined a change that
    /// meets a lease skipped. Gives how many took the incremental path.
    fn updates_match_full(c: &NetworkConfig, own: &Lease, states: &[Vec<Lease>]) -> usize {
        let key = |l: &Lease| (l.subnet, l.mod_revision);
        let sorted = |mut t: TunnelChange| {
            t.set.sort_by_key(|p| p.public_key);
            t.remove.sort();
            t
        };
        let mut fast = 0;
        for old in states {
            for new in states {
                let gone: Vec<Lease> = (old.iter())
                    .filter(|l| !new.iter().any(|n| key(n) == key(l)))
                    .cloned()
                    .collect();
                let added: Vec<Lease> = (new.iter())
                    .filter(|l| !old.iter().any(|o| key(o) == key(l)))
                    .cloned()
                    .collect();
                let before = desired(c, &host(), own, old);
                let want = desired(c, &host(), own, new);
                let mut applied = before.clone();
                match update(c, &host(), own, &mut applied, &gone, &added) {
                    Some(u) => {
                        fast += 1;
                        assert_eq!(u.ops, diff_applied(&want, &before), "{old:?} -> {new:?}");
                        assert_eq!(
                            sorted(u.tunnel),
                            sorted(diff_tunnel(&want.tunnel, before.tunnel.values())),
                            "{old:?} -> {new:?}"
                        );
                        assert_eq!(applied, want, "{old:?} -> {new:?}");
                    }
                    None => assert!(
                        !before.skipped.is_empty() || !want.skipped.is_empty(),
                        "declined a plain change {old:?} -> {new:?}"
                    ),
                }
            }
        }
        fast
    }

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

    #[test]
    fn direct_routing_and_host_gw_route_via_the_public_ip() {
        let c = cfg(r#"{"Type":"vxlan","DirectRouting":true}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let near = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let far = lease("198.19.3.0/24", "198.18.5.3", Some("0e:00:00:00:00:03"), 3);
        let d = desired(&c, &host(), &own, &[near, far]);
        let r = &d.routes[&"198.19.2.0/24".parse::<IpNet>().unwrap()];
        assert_eq!(
            (r.gateway, r.oif, r.onlink),
            (Some("198.18.0.2".parse().unwrap()), Some(2), false)
        );
        let r = &d.routes[&"198.19.3.0/24".parse::<IpNet>().unwrap()];
        assert_eq!((r.oif, r.onlink), (Some(7), true));
        assert_eq!(d.fdb.len(), 1);

        let c = cfg(r#"{"Type":"host-gw"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", None, 1);
        let peer = lease("198.19.2.0/24", "198.18.0.2", None, 2);
        let far = lease("198.19.3.0/24", "198.18.5.3", None, 3);
        let d = desired(&c, &host(), &own, &[peer, far]);
        let r = &d.routes[&"198.19.2.0/24".parse::<IpNet>().unwrap()];
        assert_eq!(r.gateway, Some("198.18.0.2".parse().unwrap()));
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
        // A host-gw peer off this L2 cannot be a gateway.
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.skipped.len(), 1);
        assert!(d.skipped[0]
            .reason
            .contains("198.18.5.3 is not on a network"));
    }

    #[test]
    fn the_same_code_gives_the_ipv6_side_for_an_ipv6_host() {
        let c = NetworkConfig::parse(
            r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        let dual = |v4: &str, v6: &str, ip: &str, ip6: &str, rev| {
            let mut l = lease(v4, ip, None, rev);
            l.subnet6 = Some(v6.parse().unwrap());
            l.attrs.public_ipv6 = Some(ip6.parse().unwrap());
            l
        };
        let own = dual(
            "198.19.1.0/24",
            "2001:db8:100:1::/64",
            "198.18.0.1",
            "2001:db8::1",
            1,
        );
        let peer = dual(
            "198.19.2.0/24",
            "2001:db8:100:2::/64",
            "198.18.0.2",
            "2001:db8::2",
            2,
        );
        let v4_only = lease("198.19.3.0/24", "198.18.0.3", None, 3);
        let h6 = Host {
            public_ip: "2001:db8::1".parse().unwrap(),
            ext_index: 2,
            ext_networks: vec!["2001:db8::/64".parse().unwrap()],
            device: None,
            other_public_ip: None,
        };
        let d = desired(&c, &h6, &own, &[own.clone(), peer.clone(), v4_only.clone()]);
        assert_eq!(d.peers, 1);
        let r = &d.routes[&"2001:db8:100:2::/64".parse::<IpNet>().unwrap()];
        assert_eq!(
            (r.gateway, r.oif),
            (Some("2001:db8::2".parse().unwrap()), Some(2))
        );
        // An IPv4-only lease is no IPv6 peer, and not a broken lease either.
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        // The IPv4 side of the same leases, through the same code.
        let d4 = desired(&c, &host(), &own, &[own.clone(), peer, v4_only]);
        assert_eq!(d4.peers, 2);
        let kernel = vec![r.clone(), d4.routes.values().next().unwrap().clone()];
        assert_eq!(
            owned(&c, &h6, own.subnet6.unwrap(), kernel, vec![], vec![]).routes,
            std::slice::from_ref(r)
        );
    }

    #[test]
    fn diff_keeps_the_right_one_of_several_kernel_objects_under_one_key() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let peer = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let d = desired(&c, &host(), &own, &[peer]);
        let route = d.routes.values().next().unwrap().clone();
        // Another next hop with another metric: the replacement would leave it in place.
        let other_metric = Route {
            gateway: Some("198.18.0.2".parse().unwrap()),
            oif: Some(2),
            onlink: false,
            metric: Some(100),
            ..route.clone()
        };
        let fdb = d.fdb.values().next().unwrap().clone();
        let old_dst = FdbEntry {
            dst: Some("198.18.0.9".parse().unwrap()),
            ..fdb.clone()
        };
        let kernel = Actual {
            routes: vec![other_metric.clone(), route],
            neighbours: d.neighbours.values().cloned().collect(),
            fdb: vec![old_dst.clone(), fdb],
        };
        assert_eq!(
            diff(&d, &kernel),
            [Op::DelRoute(other_metric), Op::DelFdb(old_dst)]
        );
    }

    #[test]
    fn diff_replaces_missing_removes_stale_and_leaves_others_alone() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let h = host();
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let peer = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let d = desired(&c, &h, &own, &[peer]);

        let mut stale = Route::new("198.19.9.0/24".parse().unwrap());
        stale.gateway = Some("198.19.9.0".parse().unwrap());
        stale.oif = Some(7);
        stale.onlink = true;
        let mut foreign = Route::new("198.19.50.0/24".parse().unwrap());
        foreign.oif = Some(99); // another tool's device: not ours
        let mut own_bridge = Route::new("198.19.1.0/24".parse().unwrap());
        own_bridge.oif = Some(2);
        let mut outside = Route::new("198.20.0.0/24".parse().unwrap());
        outside.oif = Some(7);
        let good_neigh = d.neighbours.values().next().unwrap().clone();
        let stale_fdb = FdbEntry {
            index: 7,
            mac: [0x0e, 0, 0, 0, 0, 9],
            dst: Some("198.18.0.9".parse().unwrap()),
            permanent: true,
        };
        let actual = owned(
            &c,
            &h,
            own.subnet,
            vec![stale.clone(), foreign, own_bridge, outside],
            vec![good_neigh],
            vec![stale_fdb.clone()],
        );
        assert_eq!(actual.routes, vec![stale.clone()]);
        let ops = diff(&d, &actual);
        let names: Vec<String> = ops
            .iter()
            .map(|op| describe(op, &|i| format!("#{i}")))
            .collect();
        assert_eq!(ops.len(), 4, "{names:?}");
        assert!(
            matches!(&ops[0], Op::ReplaceRoute(r) if r.dst == "198.19.2.0/24".parse::<IpNet>().unwrap())
        );
        assert!(matches!(&ops[1], Op::ReplaceFdb(_)));
        assert!(ops.contains(&Op::DelRoute(stale)));
        assert!(ops.contains(&Op::DelFdb(stale_fdb)));
        assert!(ops[..2].iter().all(|op| is_repair(op, &d)));
    }
}
