//! The one diff: the operations that turn what the kernel holds (or what was applied last)
//! into the desired state, for routes, neighbours and FDB entries, and the changes of a tunnel
//! device's own peers. Replacements come first, removals after, so traffic never sees a gap.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Desired, Speakers};
use crate::backend::{PeerId, TunnelChange, TunnelPeer};
use crate::config::NetworkConfig;
use crate::netlink::{
    is_permanent, FdbEntry, Mac, Neighbour, Op, Route, RTPROT_KERNEL, RT_TABLE_MAIN,
};
use crate::subnet::Family as SubnetFamily;

/// What the kernel holds of weft's objects (after [`owned`] filtered a dump).
#[derive(Debug, Clone, Default)]
pub struct Actual {
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

/// Keeps only the kernel objects weft owns: routes in the main table inside the network (not
/// this host's own subnet, not the kernel's) on one of weft's devices or the external
/// interface; permanent neighbours and FDB entries on the backends' devices.
pub fn owned(
    cfg: &NetworkConfig,
    run: &Speakers,
    own_subnet: impl Into<IpNet>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
) -> Actual {
    let host = run.host();
    let family = host.family();
    let devices: Vec<u32> = run.devices().collect();
    let on_device = |i: u32| devices.contains(&i);
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
                && r.oif.is_some_and(|o| on_device(o) || o == host.ext_index)
        })
        .collect();
    let neighbours = neighbours
        .into_iter()
        .filter(|n| on_device(n.index) && is_permanent(n.state) && SubnetFamily::of(n.ip) == family)
        .collect();
    let fdb = fdb
        .into_iter()
        .filter(|f| on_device(f.index) && f.permanent && f.dst.is_some() && f.mac != [0; 6])
        .collect();
    Actual {
        routes,
        neighbours,
        fdb,
    }
}

pub(super) fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst && a.gateway == b.gateway && a.oif == b.oif && a.onlink == b.onlink
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
pub(super) trait Held<K, V> {
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
pub(super) trait Objects {
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
pub(super) fn ops_between(want: &Desired, have: &impl Objects, stale: &impl Objects) -> Vec<Op> {
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

/// The changes that make a tunnel device's peers `have` into `want`: peers missing or
/// different are set, peers no lease calls for are removed.
pub fn diff_tunnel<'a>(
    want: &BTreeMap<PeerId, TunnelPeer>,
    have: impl IntoIterator<Item = &'a TunnelPeer>,
) -> TunnelChange {
    let mut change = TunnelChange::default();
    let mut seen = BTreeSet::new();
    for h in have {
        let id = h.id();
        match want.get(&id) {
            Some(w) if w == h => {}
            Some(w) => change.set.push(w.clone()),
            None => change.remove.push(h.clone()),
        }
        seen.insert(id);
    }
    change.set.extend(
        (want.iter())
            .filter(|(id, _)| !seen.contains(*id))
            .map(|(_, w)| w.clone()),
    );
    change
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
    use crate::plan::desired;
    use crate::plan::testing::{cfg, lease, run};

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
                let applied = desired(&c, &run(&c), &own, old);
                let want = desired(&c, &run(&c), &own, new);
                let kernel = Actual {
                    routes: applied.routes.values().cloned().collect(),
                    neighbours: applied.neighbours.values().cloned().collect(),
                    fdb: applied.fdb.values().cloned().collect(),
                };
                assert_eq!(diff_applied(&want, &applied), diff(&want, &kernel));
            }
        }
    }

    #[test]
    fn diff_keeps_the_right_one_of_several_kernel_objects_under_one_key() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let peer = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let d = desired(&c, &run(&c), &own, &[peer]);
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
        let h = run(&c);
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
