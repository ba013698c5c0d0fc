//! weft's netlink layer against the real kernel, each test inside network namespaces it makes.
//! iproute2 builds some fixtures and cross-checks what weft wrote, the way an operator would
//! look at a host.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use testkit::netns::{veth_pair, Netns};
use weft::netlink::*;

fn nl(ns: &Netns) -> Netlink {
    Netlink::in_netns(&ns.path()).expect("netlink socket in test netns")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(i: u32) -> Mac {
    [0x02, 0x00, 0x00, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// A device with carrier (these kernels have no dummy driver): one end of a veth pair whose
/// other end stays in the same namespace, both up.
fn wire(n: &mut Netlink, name: &str) -> Link {
    let peer = format!("{name}p");
    n.create_veth(name, &peer, None, None).unwrap();
    let p = n.link_by_name(&peer).unwrap().unwrap();
    n.set_up(p.index).unwrap();
    let l = n.link_by_name(name).unwrap().unwrap();
    n.set_up(l.index).unwrap();
    n.link_by_index(l.index).unwrap().unwrap()
}

/// A VXLAN device on an underlay device carrying `local`, like flannel.1 on eth0.
fn vxlan_host(ns: &Netns, n: &mut Netlink, local: &str) -> (Link, Link) {
    let under = wire(n, "u0");
    n.add_address(under.index, net(&format!("{local}/24")))
        .unwrap();
    n.set_up(under.index).unwrap();
    let vx = n
        .create_vxlan(&VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 0,
            local: ip(local),
            lower: Some(under.index),
            learning: false,
            gbp: false,
            mtu: Some(1450),
            mac: None,
        })
        .unwrap();
    n.set_up(vx.index).unwrap();
    assert!(ns.ip(&["link", "show", "flannel.1"]).contains("UP"));
    (under, vx)
}

/// A link kind the kernel may lack, as weftd meets it: a kernel WireGuard device, which the
/// lab kernels cannot make (LAB.md) and others can.
#[test]
fn a_link_kind_the_kernel_may_lack_is_created_or_refused_with_a_clear_error() {
    let ns = Netns::new("kind");
    let mut n = nl(&ns);
    match n.create_wireguard("wg0") {
        Ok(d) => {
            assert_eq!(d.kind.as_deref(), Some("wireguard"));
            assert!(ns.ip(&["-d", "link", "show", "wg0"]).contains("wireguard"));
            assert!(n.create_wireguard("wg0").unwrap_err().is_exists());
        }
        Err(e) => {
            assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");
            assert!(e.to_string().starts_with("create wireguard wg0: "), "{e}");
            assert!(
                ns.try_ip(&["link", "add", "x0", "type", "wireguard"])
                    .status
                    .code()
                    != Some(0)
            );
        }
    }
}

/// One change through [`Netlink::apply`], weftd's only way of writing routes, neighbours and
/// FDB entries.
fn apply_one(n: &mut Netlink, op: Op) -> Result<(), NetlinkError> {
    let mut results = n.apply(std::slice::from_ref(&op));
    assert_eq!(results.len(), 1, "one result for {op}");
    results.remove(0)
}

#[test]
fn veth_and_bridge_create_get_set_delete() {
    let ns = Netns::new("links");
    let mut n = nl(&ns);

    n.create_veth("d0", "d0p", None, None).unwrap();
    let d = n.link_by_name("d0").unwrap().unwrap();
    assert_eq!(d.name, "d0");
    assert_eq!(d.kind.as_deref(), Some("veth"));
    assert!(!d.up);
    assert_eq!(n.link_by_index(d.index).unwrap(), Some(d.clone()));
    assert!(n.links().unwrap().iter().any(|l| l.name == "lo"));
    assert!(n.links().unwrap().contains(&d));
    assert!(n
        .create_veth("d0", "d0q", None, None)
        .unwrap_err()
        .is_exists());

    let pinned = [0x0a, 0x58, 0xc6, 0x13, 0x05, 0x01];
    let br = n.create_bridge("br0", Some(1400), Some(pinned)).unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!((br.mtu, br.mac), (1400, Some(pinned)));
    // Asking again hands back the same bridge.
    assert_eq!(n.create_bridge("br0", None, None).unwrap().index, br.index);
    let e = n.create_bridge("d0", None, None).unwrap_err();
    assert!(e.to_string().contains("kind veth"), "{e}");

    n.set_master(d.index, br.index).unwrap();
    n.set_mtu(d.index, 1300).unwrap();
    n.set_mac(d.index, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55])
        .unwrap();
    n.set_up(d.index).unwrap();
    n.set_up(br.index).unwrap();
    n.set_hairpin(d.index, true).unwrap();
    let d2 = n.link_by_index(d.index).unwrap().unwrap();
    assert_eq!(d2.master, Some(br.index));
    // A port with a lower MAC does not move a bridge created with its own.
    assert_eq!(
        n.link_by_index(br.index).unwrap().unwrap().mac,
        Some(pinned)
    );
    n.set_alias(br.index, "weft test").unwrap();
    let alias = n.link_by_index(br.index).unwrap().unwrap().alias;
    assert_eq!(alias.as_deref(), Some("weft test"));
    assert_eq!(d2.mtu, 1300);
    assert_eq!(d2.mac, Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
    assert!(d2.up);
    let shown = ns.ip(&["-d", "link", "show", "d0"]);
    assert!(shown.contains("master br0"), "{shown}");
    assert!(shown.contains("02:11:22:33:44:55"), "{shown}");
    assert!(shown.contains("hairpin on"), "{shown}");
    n.set_hairpin(d.index, false).unwrap();
    assert!(ns.ip(&["-d", "link", "show", "d0"]).contains("hairpin off"));
    n.set_master(d.index, 0).unwrap();
    assert_eq!(n.link_by_index(d.index).unwrap().unwrap().master, None);

    n.delete_link(d.index).unwrap();
    assert_eq!(n.link_by_name("d0").unwrap(), None);
    assert_eq!(n.link_by_index(d.index).unwrap(), None);
    n.delete_link(d.index).unwrap(); // already gone is fine
    assert!(
        !ns.ip(&["link", "show"]).contains("d0"),
        "the peer went with it"
    );
    n.delete_link(br.index).unwrap();
    assert_eq!(n.link_by_name("br0").unwrap(), None);
    assert!(n.link_by_name("a-name-far-too-long").is_err());
}

#[test]
fn veth_peer_is_created_inside_the_other_namespace() {
    let host = Netns::new("vethh");
    let cont = Netns::new("vethc");
    let mut n = nl(&host);
    let file = cont.file();
    n.create_veth("vh0", "eth0", Some(file.as_fd()), Some(1400))
        .unwrap();
    let vh = n.link_by_name("vh0").unwrap().unwrap();
    assert_eq!(vh.kind.as_deref(), Some("veth"));
    assert_eq!(vh.mtu, 1400);
    assert_eq!(n.link_by_name("eth0").unwrap(), None);
    let inside = cont.ip(&["-d", "link", "show", "eth0"]);
    assert!(
        inside.contains("mtu 1400") && inside.contains("veth"),
        "{inside}"
    );

    // Without a namespace both ends stay here.
    n.create_veth("va", "vb", None, None).unwrap();
    assert!(n.link_by_name("vb").unwrap().is_some());
}

#[test]
fn vxlan_reads_back_every_field_and_changes_learning_in_place() {
    let ns = Netns::new("vxlan");
    let mut n = nl(&ns);
    let under = wire(&mut n, "u0");
    let spec = VxlanSpec {
        name: "flannel.42".into(),
        vni: 42,
        port: 0,
        local: ip("198.18.0.1"),
        lower: Some(under.index),
        learning: true,
        gbp: true,
        mtu: Some(1400),
        mac: Some([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
    };
    let vx = n.create_vxlan(&spec).unwrap();
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mtu, 1400);
    assert_eq!(vx.mac, Some([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
    assert_eq!(
        vx.vxlan,
        Some(VxlanInfo {
            vni: 42,
            port: 8472,
            local: Some(ip("198.18.0.1")),
            lower: Some(under.index),
            learning: true,
            gbp: true,
        })
    );
    let shown = ns.ip(&["-d", "link", "show", "flannel.42"]);
    for want in [
        "vxlan id 42",
        "local 198.18.0.1",
        "dev u0",
        "dstport 8472",
        "gbp",
    ] {
        assert!(shown.contains(want), "{want:?} missing from {shown}");
    }
    assert!(!shown.contains("nolearning"), "{shown}");

    n.set_vxlan_learning(&vx, false).unwrap();
    let after = n.link_by_index(vx.index).unwrap().unwrap();
    assert!(!after.vxlan.as_ref().unwrap().learning);
    assert_eq!(after.index, vx.index, "changed in place, not recreated");
    assert!(ns
        .ip(&["-d", "link", "show", "flannel.42"])
        .contains("nolearning"));

    // Same identity: the existing device comes back; a different VNI is a conflict.
    assert_eq!(n.create_vxlan(&spec).unwrap().index, vx.index);
    let other = VxlanSpec {
        vni: 43,
        ..spec.clone()
    };
    let e = n.create_vxlan(&other).unwrap_err();
    assert!(e.is_exists(), "{e}");
    assert!(e.to_string().contains("flannel.42"), "{e}");

    let plain = n
        .create_vxlan(&VxlanSpec {
            name: "vx2".into(),
            vni: 7,
            port: 4789,
            local: ip("198.18.0.1"),
            lower: None,
            learning: false,
            gbp: false,
            mtu: None,
            mac: None,
        })
        .unwrap();
    let info = plain.vxlan.unwrap();
    assert_eq!((info.vni, info.port, info.lower), (7, 4789, None));
    assert!(!info.learning && !info.gbp);
    assert!(n.set_vxlan_learning(&under, true).is_err());
}

#[test]
fn addresses_add_list_delete() {
    let ns = Netns::new("addr");
    let mut n = nl(&ns);
    let d = wire(&mut n, "d0");
    let a = net("198.19.1.0/32");
    let b = net("198.18.5.1/24");
    n.add_address(d.index, a).unwrap();
    n.add_address(d.index, b).unwrap();
    n.add_address(d.index, a).unwrap(); // present already: fine
                                        // The kernel adds an IPv6 link-local address of its own; look at IPv4 only.
    let v4 = |n: &mut Netlink| -> Vec<Address> {
        let all = n.addresses(Some(d.index)).unwrap();
        all.into_iter()
            .filter(|a| a.addr.addr().is_ipv4())
            .collect()
    };
    let mine = v4(&mut n);
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.contains(&Address {
        index: d.index,
        addr: a
    }));
    assert!(mine.contains(&Address {
        index: d.index,
        addr: b
    }));
    assert!(n
        .addresses(None)
        .unwrap()
        .iter()
        .any(|x| x.addr == net("127.0.0.1/8")));
    let shown = ns.ip(&["addr", "show", "dev", "d0"]);
    assert!(
        shown.contains("198.19.1.0/32") && shown.contains("198.18.5.1/24"),
        "{shown}"
    );

    n.del_address(d.index, b).unwrap();
    n.del_address(d.index, b).unwrap(); // gone already: fine
    assert_eq!(
        v4(&mut n),
        vec![Address {
            index: d.index,
            addr: a
        }]
    );
    assert!(!ns.ip(&["addr", "show", "dev", "d0"]).contains("198.18.5.1"));
}

#[test]
fn routes_onlink_via_replace_table_delete() {
    let ns = Netns::new("routes");
    let mut n = nl(&ns);
    let d = wire(&mut n, "d0");
    n.add_address(d.index, net("198.18.0.1/24")).unwrap();

    // flannel's VXLAN shape: the gateway is the remote subnet's first address, on-link.
    let onlink = Route::new(net("198.19.2.0/24"))
        .via(ip("198.19.2.0"))
        .dev(d.index)
        .onlink();
    apply_one(&mut n, Op::ReplaceRoute(onlink.clone())).unwrap();
    apply_one(&mut n, Op::ReplaceRoute(onlink.clone())).unwrap(); // idempotent
    let shown = ns.ip(&["route", "show", "198.19.2.0/24"]);
    assert_eq!(shown.trim(), "198.19.2.0/24 via 198.19.2.0 dev d0 onlink");
    let dumped = n.routes(Family::V4).unwrap();
    assert!(dumped.contains(&onlink), "{dumped:?}");

    // Plain via through a connected gateway; adding twice is EEXIST with a useful message.
    let via = Route::new(net("198.19.3.0/24")).via(ip("198.18.0.2"));
    n.add_route(&via).unwrap();
    let e = n.add_route(&via).unwrap_err();
    assert!(e.is_exists());
    assert!(
        e.to_string()
            .starts_with("add route 198.19.3.0/24 via 198.18.0.2: File exists (os error 17)"),
        "{e}"
    );
    // Replace moves it to another gateway; there is still one route.
    apply_one(
        &mut n,
        Op::ReplaceRoute(Route::new(net("198.19.3.0/24")).via(ip("198.18.0.3"))),
    )
    .unwrap();
    let shown = ns.ip(&["route", "show", "198.19.3.0/24"]);
    assert_eq!(shown.trim(), "198.19.3.0/24 via 198.18.0.3 dev d0");
    let dumped = n.routes(Family::V4).unwrap();
    let r3: Vec<_> = dumped
        .iter()
        .filter(|r| r.dst == net("198.19.3.0/24"))
        .collect();
    assert_eq!(r3.len(), 1);
    assert_eq!(r3[0].gateway, Some(ip("198.18.0.3")));
    assert_eq!(r3[0].oif, Some(d.index));
    assert_eq!(r3[0].protocol, RTPROT_BOOT);
    assert_eq!(r3[0].table, RT_TABLE_MAIN);

    // Tables above 255 and metrics.
    let t = Route::new(net("198.19.4.0/24"))
        .via(ip("198.18.0.2"))
        .table(1000)
        .metric(50);
    apply_one(&mut n, Op::ReplaceRoute(t.clone())).unwrap();
    let shown = ns.ip(&["route", "show", "table", "1000"]);
    assert_eq!(
        shown.trim(),
        "198.19.4.0/24 via 198.18.0.2 dev d0 metric 50"
    );
    let got: Vec<_> = n
        .routes(Family::V4)
        .unwrap()
        .into_iter()
        .filter(|r| r.table == 1000)
        .collect();
    assert_eq!(
        got,
        vec![Route {
            oif: Some(d.index),
            ..t.clone()
        }]
    );

    // Kernel refusals name the route and the errno.
    let bad = Route::new(net("198.19.2.0/24"))
        .via(ip("198.19.2.0"))
        .dev(99999)
        .onlink();
    let e = apply_one(&mut n, Op::ReplaceRoute(bad)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENODEV));
    assert!(
        e.to_string().starts_with(
            "replace route 198.19.2.0/24 via 198.19.2.0 dev 99999 onlink: No such device (os error 19)"
        ),
        "{e}"
    );

    // IPv6 works the same way.
    n.add_address(d.index, "2001:db8::1/64".parse().unwrap())
        .unwrap();
    let v6 = Route::new("2001:db8:1::/64".parse().unwrap())
        .via(ip("2001:db8::2"))
        .dev(d.index)
        .onlink();
    apply_one(&mut n, Op::ReplaceRoute(v6.clone())).unwrap();
    let got = n.routes(Family::V6).unwrap();
    assert!(
        got.iter()
            .any(|r| r.dst == v6.dst && r.gateway == v6.gateway && r.onlink),
        "{got:?}"
    );
    assert!(n
        .routes(Family::V6)
        .unwrap()
        .iter()
        .all(|r| r.dst.addr().is_ipv6()));
    assert!(n
        .routes(Family::All)
        .unwrap()
        .iter()
        .any(|r| r.dst == onlink.dst));

    // Deletes, also of what is already gone.
    for r in [&onlink, &t, &v6] {
        n.del_route(r).unwrap();
        n.del_route(r).unwrap();
    }
    // A route written with another protocol still goes (weft deletes by destination/next hop).
    n.del_route(
        &Route::new(net("198.19.3.0/24"))
            .via(ip("198.18.0.3"))
            .table(RT_TABLE_MAIN),
    )
    .unwrap();
    let left = ns.ip(&["route", "show"]);
    assert!(!left.contains("198.19."), "{left}");
    assert!(ns.ip(&["route", "show", "table", "1000"]).trim().is_empty());
}

#[test]
fn neighbours_permanent_replace_delete() {
    let ns = Netns::new("neigh");
    let mut n = nl(&ns);
    n.create_veth("v0", "v1", None, None).unwrap();
    let v = n.link_by_name("v0").unwrap().unwrap();
    n.set_up(v.index).unwrap();

    let entry = Neighbour::permanent(v.index, ip("198.19.2.0"), mac(1));
    n.replace_neighbour(&entry).unwrap();
    let shown = ns.ip(&["neigh", "show", "dev", "v0"]);
    assert!(
        shown.contains("198.19.2.0 lladdr 02:00:00:00:00:01 PERMANENT"),
        "{shown}"
    );
    assert_eq!(n.neighbours(Some(v.index)).unwrap(), vec![entry.clone()]);

    let moved = Neighbour::permanent(v.index, ip("198.19.2.0"), mac(2));
    n.replace_neighbour(&moved).unwrap();
    assert_eq!(n.neighbours(Some(v.index)).unwrap(), vec![moved.clone()]);

    n.del_neighbour(&moved).unwrap();
    n.del_neighbour(&moved).unwrap();
    assert!(n.neighbours(Some(v.index)).unwrap().is_empty());
    assert!(!ns
        .ip(&["neigh", "show", "dev", "v0"])
        .contains("198.19.2.0"));
}

#[test]
fn fdb_entries_with_remote_dst() {
    let ns = Netns::new("fdb");
    let mut n = nl(&ns);
    let (_, vx) = vxlan_host(&ns, &mut n, "198.18.0.1");
    let f = FdbEntry {
        index: vx.index,
        mac: parse_mac("c6:d2:32:6f:8f:44").unwrap(),
        dst: Some(ip("198.18.0.2")),
        permanent: true,
    };
    n.replace_fdb(&f).unwrap();
    n.replace_fdb(&f).unwrap();
    let shown = ns.bridge(&["fdb", "show", "dev", "flannel.1"]);
    assert!(
        shown.contains("c6:d2:32:6f:8f:44 dst 198.18.0.2 self permanent"),
        "{shown}"
    );
    let mine: Vec<_> = n
        .fdb(Some(vx.index))
        .unwrap()
        .into_iter()
        .filter(|e| e.mac == f.mac)
        .collect();
    assert_eq!(mine, vec![f.clone()]);

    // Replace points the MAC at a new remote instead of adding a second one.
    let moved = FdbEntry {
        dst: Some(ip("198.18.0.3")),
        ..f.clone()
    };
    n.replace_fdb(&moved).unwrap();
    let shown = ns.bridge(&["fdb", "show", "dev", "flannel.1"]);
    assert!(
        shown.contains("dst 198.18.0.3") && !shown.contains("dst 198.18.0.2"),
        "{shown}"
    );

    apply_one(&mut n, Op::DelFdb(moved.clone())).unwrap();
    apply_one(&mut n, Op::DelFdb(moved)).unwrap();
    assert!(!ns
        .bridge(&["fdb", "show", "dev", "flannel.1"])
        .contains("c6:d2:32"));
}

/// The reconciler's shape: one remote host = one route, one neighbour, one FDB entry.
fn peer_ops(vx: u32, i: u32) -> [Op; 3] {
    let subnet = IpAddr::from([198, 19, (i / 64) as u8, ((i % 64) * 4) as u8]);
    let public = IpAddr::from([198, 18, (i / 250) as u8 + 1, (i % 250) as u8 + 1]);
    [
        Op::ReplaceRoute(
            Route::new(IpNet::new(subnet, 30).unwrap())
                .via(subnet)
                .dev(vx)
                .onlink(),
        ),
        Op::ReplaceNeighbour(Neighbour::permanent(vx, subnet, mac(i))),
        Op::ReplaceFdb(FdbEntry {
            index: vx,
            mac: mac(i),
            dst: Some(public),
            permanent: true,
        }),
    ]
}

fn undo(op: &Op) -> Op {
    match op {
        Op::ReplaceRoute(r) => Op::DelRoute(r.clone()),
        Op::ReplaceNeighbour(x) => Op::DelNeighbour(x.clone()),
        Op::ReplaceFdb(f) => Op::DelFdb(f.clone()),
        other => other.clone(),
    }
}

#[test]
fn apply_pipelines_three_thousand_ops() {
    let ns = Netns::new("apply");
    let mut n = nl(&ns);
    let (_, vx) = vxlan_host(&ns, &mut n, "198.18.0.1");
    let peers = 1000;
    let mut ops: Vec<Op> = (0..peers).flat_map(|i| peer_ops(vx.index, i)).collect();
    // One bad op in the middle fails alone.
    let bad_at = ops.len() / 2;
    ops.insert(
        bad_at,
        Op::ReplaceRoute(
            Route::new(net("198.19.255.0/24"))
                .via(ip("198.19.255.0"))
                .dev(99999)
                .onlink(),
        ),
    );

    let t = Instant::now();
    let results = n.apply(&ops);
    let took = t.elapsed();
    eprintln!("apply of {} ops took {took:?}", ops.len());
    assert_eq!(results.len(), ops.len());
    for (i, r) in results.iter().enumerate() {
        if i == bad_at {
            let e = r.as_ref().unwrap_err();
            assert!(e.to_string().contains("dev 99999"), "{e}");
        } else {
            assert!(r.is_ok(), "op {i} ({}) failed: {r:?}", ops[i]);
        }
    }

    let routes = n
        .routes(Family::V4)
        .unwrap()
        .into_iter()
        .filter(|r| r.oif == Some(vx.index) && r.onlink)
        .count();
    assert_eq!(routes, peers as usize);
    let neigh = n.neighbours(Some(vx.index)).unwrap();
    let permanent = neigh.iter().filter(|x| x.state == NUD_PERMANENT).count();
    assert_eq!(
        permanent,
        peers as usize,
        "{:?}",
        neigh.iter().find(|x| x.state != NUD_PERMANENT)
    );
    let fdb: Vec<_> = n
        .fdb(Some(vx.index))
        .unwrap()
        .into_iter()
        .filter(|f| f.dst.is_some() && f.permanent)
        .collect();
    assert_eq!(fdb.len(), peers as usize);
    // What iproute2 sees agrees.
    let ip_routes = ns.ip(&["route", "show", "dev", "flannel.1"]);
    assert_eq!(
        ip_routes.lines().filter(|l| l.contains("onlink")).count(),
        peers as usize
    );
    let bridge_fdb = ns.bridge(&["fdb", "show", "dev", "flannel.1"]);
    assert_eq!(
        bridge_fdb
            .lines()
            .filter(|l| l.contains(" dst 198.18."))
            .count(),
        peers as usize
    );
    assert!(
        ip_routes.contains("198.19.15.156/30 via 198.19.15.156 onlink"),
        "peer 999 missing"
    );

    // Undo everything, twice: the second time every delete finds nothing, which is fine.
    let undo_ops: Vec<Op> = ops.iter().map(undo).collect();
    for _ in 0..2 {
        let r = n.apply(&undo_ops);
        assert!(
            r.iter().all(|r| r.is_ok()),
            "{:?}",
            r.iter().find(|r| r.is_err())
        );
    }
    assert!(!n
        .neighbours(Some(vx.index))
        .unwrap()
        .iter()
        .any(|x| x.state == NUD_PERMANENT));
    assert!(!ns.ip(&["route", "show"]).contains("onlink"));
    assert!(!ns
        .bridge(&["fdb", "show", "dev", "flannel.1"])
        .contains(" dst 198.18."));
    assert!(n.apply(&[]).is_empty());
}

/// Waits up to 5 s for a change matching `want`.
fn wait_for(m: &mut Monitor, want: impl Fn(&Change) -> bool) -> Vec<Change> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let batch = m.recv().unwrap();
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let hit = batch.iter().any(&want);
        seen.extend(batch);
        if hit {
            return seen;
        }
    }
    panic!("no matching change within 5 s; saw {seen:?}");
}

#[test]
fn monitor_sees_route_and_link_deletions_made_by_others() {
    let ns = Netns::new("mon");
    ns.ip(&["link", "add", "d1", "type", "veth", "peer", "name", "d1p"]);
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "d1"]);
    ns.ip(&["link", "set", "d1", "up"]);
    ns.ip(&["route", "add", "198.19.7.0/24", "via", "198.18.0.2"]);
    let index = nl(&ns).link_by_name("d1").unwrap().unwrap().index;

    let mut m = Monitor::in_netns(&ns.path()).unwrap();
    m.set_nonblocking(true).unwrap();
    assert!(m.as_raw_fd() >= 0);
    ns.ip(&["route", "del", "198.19.7.0/24"]);
    wait_for(&mut m, |c| {
        *c == Change::Route {
            dst: net("198.19.7.0/24"),
            deleted: true,
        }
    });
    ns.ip(&["link", "set", "d1", "address", "02:00:00:00:00:07"]);
    wait_for(&mut m, |c| {
        *c == Change::Link {
            index,
            deleted: false,
            mac: Some([2, 0, 0, 0, 0, 7]),
        }
    });
    ns.ip(&["link", "del", "d1"]);
    wait_for(
        &mut m,
        |c| matches!(c, Change::Link { index: i, deleted: true, .. } if *i == index),
    );
}

#[test]
fn run_in_netns_runs_inside_and_reports_bad_paths() {
    let ns = Netns::new("run");
    ns.ip(&["link", "add", "only-here", "type", "bridge"]);
    let outer = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let (inner, found) = weft::netlink::run_in_netns(&ns.path(), || {
        let inner = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let found = Netlink::new().unwrap().link_by_name("only-here").unwrap();
        (inner, found.is_some())
    })
    .unwrap();
    assert_ne!(inner, outer);
    assert!(found);
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        outer
    );
    assert!(Netlink::new()
        .unwrap()
        .link_by_name("only-here")
        .unwrap()
        .is_none());

    let e = Netlink::in_netns(std::path::Path::new("/run/netns/weft-no-such-ns"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("/run/netns/weft-no-such-ns"), "{e}");
    assert_eq!(e.errno(), Some(libc::ENOENT));
}

#[test]
fn two_hosts_vxlan_overlay_like_flannel_pings_across() {
    let h1 = Netns::new("h1");
    let h2 = Netns::new("h2");
    veth_pair(&h1, "eth0", "198.18.0.1/24", &h2, "eth0", "198.18.0.2/24");

    struct Host {
        nl: Netlink,
        vx: Link,
        public: IpAddr,
        subnet: IpNet,
    }
    let mut hosts: Vec<Host> = [
        (&h1, "198.18.0.1", "198.19.1.0/24"),
        (&h2, "198.18.0.2", "198.19.2.0/24"),
    ]
    .into_iter()
    .map(|(ns, public, subnet)| {
        let mut n = nl(ns);
        let eth0 = n.link_by_name("eth0").unwrap().unwrap();
        let vx = n
            .create_vxlan(&VxlanSpec {
                name: "flannel.1".into(),
                vni: 1,
                port: 0,
                local: ip(public),
                lower: Some(eth0.index),
                learning: false,
                gbp: false,
                mtu: Some(eth0.mtu - 50),
                mac: None,
            })
            .unwrap();
        let subnet = net(subnet);
        n.add_address(vx.index, IpNet::new(subnet.network(), 32).unwrap())
            .unwrap();
        n.set_up(vx.index).unwrap();
        let vx = n.link_by_index(vx.index).unwrap().unwrap();
        Host {
            nl: n,
            vx,
            public: ip(public),
            subnet,
        }
    })
    .collect();

    for (me, peer) in [(0, 1), (1, 0)] {
        let (p_subnet, p_public, p_mac) = (
            hosts[peer].subnet,
            hosts[peer].public,
            hosts[peer].vx.mac.unwrap(),
        );
        let h = &mut hosts[me];
        let gw = p_subnet.network();
        let ops = [
            Op::ReplaceNeighbour(Neighbour::permanent(h.vx.index, gw, p_mac)),
            Op::ReplaceFdb(FdbEntry {
                index: h.vx.index,
                mac: p_mac,
                dst: Some(p_public),
                permanent: true,
            }),
            Op::ReplaceRoute(Route::new(p_subnet).via(gw).dev(h.vx.index).onlink()),
        ];
        for r in h.nl.apply(&ops) {
            r.unwrap();
        }
    }
    assert!(
        h1.ping("198.19.2.0"),
        "h1 cannot reach h2's overlay address"
    );
    assert!(
        h2.ping("198.19.1.0"),
        "h2 cannot reach h1's overlay address"
    );
    let route = h1.ip(&["route", "show", "198.19.2.0/24"]);
    assert_eq!(
        route.trim(),
        "198.19.2.0/24 via 198.19.2.0 dev flannel.1 onlink"
    );
}
