//! One family's desired state from the leases: the rules every lease part must meet
//! ([`check_side`]), those relative to this host, the backend's own ([`peer_objects`]), and
//! the rules that relate leases to each other, settled by age ([`desired`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Desired, ProbeAt, Skip, Speakers};
use crate::backend::{Host, Identity, Peer, PeerObjects};
use crate::config::NetworkConfig;
use crate::iface::ExtIface;
use crate::lease::Lease;
use crate::subnet::Family as SubnetFamily;

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

/// Checks one remote lease's side in the family of `run` on its own and returns the objects
/// it calls for, with the index in `run` of the backend that carries its traffic. `Err` says
/// why it must not be programmed. The rules here hold for every backend and family
/// ([`check_side`], and those relative to this host); each backend adds its own.
///
/// Every backend both ends speak gives its per-peer objects (a device's peer, a neighbour, an
/// FDB entry), so the pair can move between them by a route; the route is the chosen one's:
/// the first in `run`'s order, once the lease's advertisement of it and this host's have
/// settled, else the next.
pub fn peer_objects(
    cfg: &NetworkConfig,
    run: &Speakers,
    own: &Lease,
    lease: &Lease,
) -> Result<(PeerObjects, usize), String> {
    let host = run.host();
    let family = host.family();
    let (subnet, public_ip) = check_side(cfg, lease, family)?;
    if let Some(own_subnet) = own.side(family).map(|s| s.subnet) {
        if subnet.contains(&own_subnet) || own_subnet.contains(&subnet) {
            return Err(format!(
                "subnet {subnet} overlaps this host's subnet {own_subnet}"
            ));
        }
    }
    if public_ip == host.public_ip {
        return Err(format!("PublicIP {public_ip} is this host's own address"));
    }
    let spoken = lease.attrs.spoken();
    let mut refused = None;
    let mut candidates: Vec<(usize, PeerObjects)> = Vec::new();
    for (i, (backend, h)) in run.backends().enumerate() {
        let Some(side) = spoken
            .iter()
            .find(|s| s.backend_type == backend.type_name())
        else {
            continue;
        };
        let peer = Peer {
            subnet,
            public_ip,
            data: side.data(family),
            lease,
        };
        match backend.peer(h, &peer) {
            Ok(o) => candidates.push((i, o)),
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    let Some(first) = candidates.first() else {
        return Err(refused.unwrap_or_else(|| no_common_backend(run, lease)));
    };
    let wait = first.0 == 0
        && candidates.len() > 1
        && !(run.settled(lease.subnet) && run.settled(own.subnet));
    let chosen = usize::from(wait);
    Ok((merge(candidates.clone(), chosen), candidates[chosen].0))
}

/// Why a lease speaks none of `run`'s backends.
fn no_common_backend(run: &Speakers, lease: &Lease) -> String {
    let types: Vec<String> = (run.backends())
        .map(|(b, _)| format!("{:?}", b.type_name()))
        .collect();
    match types.as_slice() {
        [one] => format!(
            "BackendType {:?} differs from this network's {one}",
            lease.attrs.backend_type
        ),
        many => format!(
            "BackendType {:?} is none of this host's {} (nor does WeftBackends name one)",
            lease.attrs.backend_type,
            many.join(" and ")
        ),
    }
}

/// One peer's objects from every backend both ends speak: the chosen one's route, and the
/// others' per-peer state beside the chosen one's.
fn merge(candidates: Vec<(usize, PeerObjects)>, chosen: usize) -> PeerObjects {
    fn take<T>(mine: &mut Option<T>, theirs: Option<T>, chosen: bool) {
        if chosen || mine.is_none() {
            if let Some(t) = theirs {
                *mine = Some(t);
            }
        }
    }
    let mut out = PeerObjects::default();
    for (i, (_, o)) in candidates.into_iter().enumerate() {
        let first = i == chosen;
        if first {
            out.route = o.route;
        }
        take(&mut out.neighbour, o.neighbour, first);
        take(&mut out.fdb, o.fdb, first);
        take(&mut out.tunnel, o.tunnel, first);
    }
    out
}

/// The identities (VTEP MAC, public key) a lease's data holds for each backend of `run`.
fn identities(run: &Speakers, lease: &Lease) -> Vec<Identity> {
    let family = run.family();
    (run.backends())
        .filter_map(|(b, _)| {
            let data = lease.attrs.speaks(b.type_name())?.data(family);
            b.identity(data)
        })
        .collect()
}

/// The desired state of `run`'s family for all known leases. Leases that overlap each other
/// are settled by age: the older (lower revision, then lower key) is kept, the newer skipped.
pub fn desired<L: std::borrow::Borrow<Lease>>(
    cfg: &NetworkConfig,
    run: &Speakers,
    own: &Lease,
    leases: &[L],
) -> Desired {
    let mut out = Desired::default();
    let family = run.family();
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
    if let Some(network) = cfg.network_of(family) {
        for (b, h) in run.backends() {
            for r in b.device_routes(h, network) {
                out.routes.insert(r.dst, r);
            }
        }
    }
    let mut accepted: BTreeMap<IpAddr, IpNet> = BTreeMap::new();
    // This host's own identities are the oldest claims: a lease carrying one (a forgery, or
    // a stale copy of this host's data) would point this host's MAC or key away from it.
    let own_identities = identities(run, own);
    out.identities.extend(own_identities.iter().cloned());
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
        match peer_objects(cfg, run, own, lease) {
            Ok((objects, chosen)) => {
                // Two leases with one identity would fight over one FDB entry or one
                // device peer.
                let ids = identities(run, lease);
                if let Some(id) = ids.iter().find(|id| out.identities.contains(*id)) {
                    let reason = if own_identities.contains(id) {
                        format!("{id} is this host's own")
                    } else {
                        format!("{} is already used by an older lease", id.what)
                    };
                    out.skipped.push(Skip { key, reason });
                    continue;
                }
                out.identities.extend(ids);
                // peer_objects refuses a lease without a subnet in the family.
                if let Some(s) = subnet {
                    accepted.insert(s.network(), s);
                }
                take_peer(&mut out, &run.list[chosen].host, lease, objects);
            }
            Err(reason) => out.skipped.push(Skip { key, reason }),
        }
    }
    out
}

/// Puts an accepted peer's kernel objects and where it is probed into `out`; `host` is this
/// host's facts as the backend that carries the pair's traffic sees them.
fn take_peer(out: &mut Desired, host: &Host, lease: &Lease, objects: PeerObjects) {
    if let Some(side) = lease.side(host.family()) {
        let tunnel = host.device.is_some();
        if let Some(addr) = crate::probe::probe_addr(&side, tunnel) {
            let at = ProbeAt {
                addr,
                host: lease.subnet,
                public_ip: (side.public_ip).unwrap_or(lease.attrs.public_ip.into()),
            };
            out.probes.insert(side.subnet, at);
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
        out.tunnel.insert(t.id(), t);
    }
}

/// The accepted subnet `s` overlaps, if any (see [`overlap`]).
fn overlapping(accepted: &BTreeMap<IpAddr, IpNet>, s: IpNet) -> Option<IpNet> {
    overlap(accepted, s, |addr, _| addr, |_, net| *net)
}

/// Which of `taken`'s subnets `s` overlaps, in O(log n), for either family. `taken` never
/// holds two that overlap each other, so only two can: the last one starting at or before
/// `s` (it may contain `s`) and the first one starting inside `s` (`s` contains it). `key`
/// is the map's key of a subnet address and prefix length, `net` the subnet of an entry.
pub(super) fn overlap<K: Ord, V>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NUD_PERMANENT;
    use crate::plan::testing::{cfg, lease, run};
    use crate::plan::Speakers;
    use crate::plan::{owned, update};

    #[test]
    fn vxlan_peer_gets_flannels_three_objects() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let peer = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let d = desired(&c, &run(&c), &own, &[own.clone(), peer]);
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
    fn a_lease_with_this_hosts_own_mac_is_skipped_as_such() {
        let c = cfg(r#"{"Type":"vxlan"}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        // Another spelling of this host's MAC, with another host's address.
        let forged = lease(
            "198.19.181.0/24",
            "198.18.0.2",
            Some("0E:00:00:00:00:01"),
            2,
        );
        let d = desired(&c, &run(&c), &own, &[own.clone(), forged.clone()]);
        assert_eq!((d.peers, d.fdb.len()), (0, 0));
        assert_eq!(
            d.skipped,
            [Skip {
                key: "198.19.181.0-24".into(),
                reason: "VtepMAC 0e:00:00:00:00:01 is this host's own".into()
            }]
        );
        // The same when the lease arrives as an event.
        let mut applied = desired(&c, &run(&c), &own, std::slice::from_ref(&own));
        assert_eq!(
            update(&c, &run(&c), &own, &mut applied, &[], &[forged]),
            None
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
        let d = desired(&c, &run(&c), &own, &bad);
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
        let d = desired(&c, &run(&c), &own, &[newer, older]);
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
    fn direct_routing_and_host_gw_route_via_the_public_ip() {
        let c = cfg(r#"{"Type":"vxlan","DirectRouting":true}"#);
        let own = lease("198.19.1.0/24", "198.18.0.1", Some("0e:00:00:00:00:01"), 1);
        let near = lease("198.19.2.0/24", "198.18.0.2", Some("0e:00:00:00:00:02"), 2);
        let far = lease("198.19.3.0/24", "198.18.5.3", Some("0e:00:00:00:00:03"), 3);
        let d = desired(&c, &run(&c), &own, &[near, far]);
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
        let d = desired(&c, &run(&c), &own, &[peer, far]);
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
        let r6 = Speakers::one(c.backend.clone(), h6);
        let d = desired(&c, &r6, &own, &[own.clone(), peer.clone(), v4_only.clone()]);
        assert_eq!(d.peers, 1);
        let r = &d.routes[&"2001:db8:100:2::/64".parse::<IpNet>().unwrap()];
        assert_eq!(
            (r.gateway, r.oif),
            (Some("2001:db8::2".parse().unwrap()), Some(2))
        );
        // An IPv4-only lease is no IPv6 peer, and not a broken lease either.
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
        // The IPv4 side of the same leases, through the same code.
        let d4 = desired(&c, &run(&c), &own, &[own.clone(), peer, v4_only]);
        assert_eq!(d4.peers, 2);
        let kernel = vec![r.clone(), d4.routes.values().next().unwrap().clone()];
        assert_eq!(
            owned(&c, &r6, own.subnet6.unwrap(), kernel, vec![], vec![]).routes,
            std::slice::from_ref(r)
        );
    }
}
