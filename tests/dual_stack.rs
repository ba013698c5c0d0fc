//! Dual stack across hosts in network namespaces, against a real etcd: IPv4 and IPv6 overlays
//! side by side, flannel's lease format for both, drift repair and restarts on the IPv6 side,
//! host-gw, DirectRouting and masquerade over IPv6, and hosts without IPv6 among dual-stack
//! ones.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use testkit::lab::{assert_mesh, make_flannel_device, udp_source_seen, Host, Lab};
use testkit::lab6::{DUAL_CONFIG, VXLAN6_DEVICE};
use testkit::leases;
use testkit::netns::Netns;
use testkit::wait::wait_for;
use weft::subnet_env::SubnetEnv;

const HOST_GW_DUAL: &str = r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"host-gw"}}"#;
const DIRECT_DUAL: &str = r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"vxlan","DirectRouting":true}}"#;

fn dual_key(h: &Host) -> String {
    leases::key(h.subnet(), Some(h.subnet6()))
}

/// Every host's container reaches every other's over IPv4 and IPv6. A fresh underlay link
/// may need a moment for its first neighbour discovery (host-gw, DirectRouting), so each
/// pair gets a few seconds.
fn assert_dual_mesh(hosts: &[&Host]) {
    let within =
        |f: &dyn Fn() -> bool| wait_for(Duration::from_secs(5), || f().then_some(())).is_some();
    for a in hosts {
        for b in hosts {
            if a.ip == b.ip {
                continue;
            }
            assert!(
                within(&|| a.ping_from_container(b.container_ip())),
                "{} cannot reach {}'s container over IPv4:\n{}",
                a.ip,
                b.ip,
                a.logs()
            );
            assert!(
                within(&|| a.ping6_from_container(b.container_ip6())),
                "{} cannot reach {}'s container over IPv6:\n{}",
                a.ip,
                b.ip,
                a.logs()
            );
        }
    }
}

#[test]
fn three_dual_stack_hosts_reach_each_other_on_both_families_with_exact_mtus() {
    let mut lab = Lab::dual(3, DUAL_CONFIG);
    lab.start_all(&[]);
    lab.wait_converged6(&[0, 1, 2]);
    lab.add_containers6();
    assert_dual_mesh(&lab.hosts.iter().collect::<Vec<_>>());

    // subnet.env as flannel writes it; FLANNEL_MTU the smaller of the two devices' MTUs.
    let h = &lab.hosts[0];
    let env = SubnetEnv::read(&h.subnet_file).unwrap();
    assert_eq!(env.ipv6_network, Some("2001:db8:100::/48".parse().unwrap()));
    let s6 = h.subnet6();
    assert_eq!(s6.prefix_len(), 64);
    assert_eq!(
        env.ipv6_subnet.unwrap().addr(),
        Ipv6Addr::from(u128::from(s6.network()) + 1)
    );
    assert_eq!(env.mtu, 1430);
    let text = std::fs::read_to_string(&h.subnet_file).unwrap();
    let order: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
    assert_eq!(
        order,
        [
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ]
    );

    // The lease: flannel's dual-stack key and its exact bytes.
    let value = lab
        .etcd
        .get(&dual_key(h))
        .expect("the dual-stack lease key");
    let want = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
        h.ip,
        h.ip6(),
        h.vtep_mac(),
        h.ns.mac_of(VXLAN6_DEVICE)
    );
    assert_eq!(value, want);

    // The IPv6 device: over the IPv6 underlay, external MTU less 70.
    let link = h.ns.ip(&["-d", "-o", "link", "show", VXLAN6_DEVICE]);
    for part in [
        "mtu 1430",
        "vxlan id 1",
        &format!("local {}", h.ip6()),
        "dev eth0",
        "dstport 8472",
        "nolearning",
    ] {
        assert!(link.contains(part), "{part:?} not in {link}");
    }
    let addrs = h.ns.ip(&["-6", "addr", "show", "dev", VXLAN6_DEVICE]);
    assert!(addrs.contains(&format!("{}/128", s6.network())), "{addrs}");

    // Exactly the devices' MTUs cross unfragmented, per family.
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let (b4, b6) = (b.container_ip().into(), b.container_ip6().into());
    assert!(a.ping_sized(b6, Some(1430 - 48)) && !a.ping_sized(b6, Some(1430 - 47)));
    assert!(a.ping_sized(b4, Some(1450 - 28)) && !a.ping_sized(b4, Some(1450 - 27)));

    // weftctl shows the IPv6 side: table columns, JSON fields, lookup by an IPv6 address.
    let out = h.weftctl(&["leases", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().unwrap().contains("IPV6 SUBNET"),
        "{table}"
    );
    assert!(table.contains(&s6.to_string()) && table.contains(&h.ip6().to_string()));
    let ip6 = lab.hosts[1].container_ip6().to_string();
    let out = lab.hosts[0].weftctl(&["-o", "json", "leases", "show", &ip6]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("leases show -o json");
    assert_eq!(v["ipv6_subnet"], lab.hosts[1].subnet6().to_string());
    assert_eq!(v["public_ipv6"], lab.hosts[1].ip6().to_string());
    assert_eq!(v["backend_v6_data"]["VNI"], 1);
    let out = lab.hosts[0].weftctl(&["leases", "show", &lab.hosts[2].ip6().to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&lab.hosts[2].subnet6().to_string()),
        "{out:?}"
    );
}

#[test]
fn ipv6_objects_deleted_by_hand_come_back_and_a_restart_loses_no_ipv6_packet() {
    let mut lab = Lab::dual(2, DUAL_CONFIG);
    lab.start_all(&[]);
    lab.wait_converged6(&[0, 1]);
    lab.add_containers6();
    let peer6 = lab.hosts[1].subnet6();
    let peer_ip6 = lab.hosts[1].ip6();
    let h = &lab.hosts[0];
    let check = |h: &Host| {
        let out = h.weftctl_check(&[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(check(h), (Some(0), String::new()), "{}", h.logs());

    // Route, neighbour and FDB entry: each deleted by hand comes back.
    let gw = peer6.network().to_string();
    h.ns.ip(&["-6", "route", "del", &peer6.to_string()]);
    h.ns.ip(&["-6", "neigh", "del", &gw, "dev", VXLAN6_DEVICE]);
    let fdb = h.fdb6_to(peer_ip6);
    let mac = fdb
        .split_whitespace()
        .next()
        .expect("an FDB entry for the peer")
        .to_string();
    h.ns.bridge(&[
        "fdb",
        "del",
        &mac,
        "dev",
        VXLAN6_DEVICE,
        "dst",
        &peer_ip6.to_string(),
        "self",
    ]);
    let back = wait_for(Duration::from_secs(7), || {
        (!h.route6_to(peer6).is_empty()
            && h.neighbour6_to(peer6).contains(&mac)
            && !h.fdb6_to(peer_ip6).is_empty())
        .then_some(())
    });
    assert!(back.is_some(), "IPv6 objects not restored:\n{}", h.logs());
    assert!(h.ping6_from_container(lab.hosts[1].container_ip6()));

    // The IPv6 device deleted: it comes back with the MAC the lease advertises.
    let mac6 = h.ns.mac_of(VXLAN6_DEVICE);
    h.ns.ip(&["link", "del", VXLAN6_DEVICE]);
    let back = wait_for(Duration::from_secs(7), || {
        let up =
            h.ns.try_ip(&["link", "show", VXLAN6_DEVICE])
                .status
                .success();
        (up && !h.route6_to(peer6).is_empty()).then_some(())
    });
    assert!(
        back.is_some(),
        "{VXLAN6_DEVICE} not recreated:\n{}",
        h.logs()
    );
    assert_eq!(h.ns.mac_of(VXLAN6_DEVICE), mac6);
    let pinged = wait_for(Duration::from_secs(5), || {
        h.ping6_from_container(lab.hosts[1].container_ip6())
            .then_some(())
    });
    assert!(
        pinged.is_some(),
        "no IPv6 traffic after the device came back"
    );

    // weftctl check sees a missing IPv6 route while nothing mends it (weftd stopped).
    let h = &mut lab.hosts[0];
    assert!(h.stop().success());
    h.ns.ip(&["-6", "route", "del", &peer6.to_string()]);
    let (code, out) = check(h);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("route") && out.contains(&peer6.to_string()),
        "{out}"
    );
    h.start(&[]);
    h.wait_ready();
    let back = wait_for(Duration::from_secs(5), || {
        (!h.route6_to(peer6).is_empty()).then_some(())
    });
    assert!(back.is_some(), "{}", h.logs());

    // A restart under 10 ms IPv6 pings in both directions loses nothing.
    let there = lab.hosts[0].start_pinging6(lab.hosts[1].container_ip6());
    let back_again = lab.hosts[1].start_pinging6(lab.hosts[0].container_ip6());
    std::thread::sleep(Duration::from_millis(500));
    let h = &mut lab.hosts[0];
    assert!(h.stop().success());
    std::thread::sleep(Duration::from_millis(300));
    h.start(&[]);
    h.wait_ready();
    // A full pass begun after the start has looked at the device it adopted.
    h.wait_next_reconcile("after the restart");
    there
        .finish()
        .assert_no_loss("IPv6 pings out during a restart", 30);
    back_again
        .finish()
        .assert_no_loss("IPv6 pings in during a restart", 30);
    assert_eq!(lab.hosts[0].ns.mac_of(VXLAN6_DEVICE), mac6);
    let (code, out) = check(&lab.hosts[0]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
}

/// Makes `flannel-v6.1` inside `ns` as flanneld does, with iproute2: VNI 1 over the IPv6
/// underlay, the address `<v6 subnet ip>/128`, up. Returns its MAC. (flannel asks for the
/// external MTU less 50, which the kernel refuses for an IPv6 underlay on a lower device;
/// the device keeps the kernel's largest, external less 70.)
fn make_flannel_v6_device(ns: &Netns, local: Ipv6Addr, subnet: Ipv6Net) -> String {
    let local = local.to_string();
    ns.ip(&[
        "link",
        "add",
        VXLAN6_DEVICE,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    let addr = format!("{}/128", subnet.network());
    ns.ip(&["addr", "add", &addr, "dev", VXLAN6_DEVICE, "nodad"]);
    ns.ip(&["link", "set", VXLAN6_DEVICE, "up"]);
    ns.mac_of(VXLAN6_DEVICE)
}

#[test]
fn a_hand_built_flannel_dual_stack_host_and_weft_hosts_reach_each_other() {
    let mut lab = Lab::dual(3, DUAL_CONFIG);
    lab.start_first(2, &[]);
    for h in &lab.hosts[..2] {
        h.add_container6();
    }
    let fl = &lab.hosts[2];
    let (s4, s6): (Ipv4Net, Ipv6Net) = (
        "198.19.200.0/24".parse().unwrap(),
        "2001:db8:100:c8::/64".parse().unwrap(),
    );
    let mac4 = make_flannel_device(&fl.ns, &fl.ip, s4);
    let mac6 = make_flannel_v6_device(&fl.ns, fl.ip6(), s6);
    let (c4, c6) = (
        std::net::Ipv4Addr::from(u32::from(s4.network()) + 1),
        Ipv6Addr::from(u128::from(s6.network()) + 1),
    );
    fl.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    fl.ns
        .ip(&["addr", "add", &format!("{c4}/24"), "dev", "cni0"]);
    fl.ns
        .ip(&["addr", "add", &format!("{c6}/64"), "dev", "cni0", "nodad"]);
    fl.ns.ip(&["link", "set", "cni0", "up"]);
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#,
        fl.ip,
        fl.ip6()
    );
    let key = leases::key(s4, Some(s6));
    lab.etcd.put_on_lease(&key, &value, 3600);

    // flanneld programs the weft hosts from their leases, both families.
    for h in &lab.hosts[..2] {
        let v: serde_json::Value =
            serde_json::from_str(&lab.etcd.get(&dual_key(h)).unwrap()).unwrap();
        let m4 = v["BackendData"]["VtepMAC"].as_str().unwrap();
        let m6 = v["BackendV6Data"]["VtepMAC"].as_str().unwrap();
        let p6 = v["PublicIPv6"].as_str().unwrap();
        assert_eq!(p6, h.ip6().to_string());
        let (hs4, hs6) = (h.subnet(), h.subnet6());
        fl.flannel_programs(
            "flannel.1",
            &hs4.to_string(),
            &hs4.network().to_string(),
            m4,
            &h.ip,
        );
        fl.flannel_programs(
            VXLAN6_DEVICE,
            &hs6.to_string(),
            &hs6.network().to_string(),
            m6,
            p6,
        );
    }
    for h in &lab.hosts[..2] {
        let ok = wait_for(Duration::from_secs(5), || {
            (!h.route6_to(s6).is_empty() && !h.route_to(s4).is_empty()).then_some(())
        });
        assert!(ok.is_some(), "no routes to the flannel host:\n{}", h.logs());
        assert!(h.ping_from_container(c4), "IPv4 to flannel:\n{}", h.logs());
        assert!(h.ping6_from_container(c6), "IPv6 to flannel:\n{}", h.logs());
        for (src, dst) in [
            (IpAddr::from(c4), IpAddr::from(h.container_ip())),
            (IpAddr::from(c6), IpAddr::from(h.container_ip6())),
        ] {
            let ok = fl
                .ns
                .exec(&[
                    "ping",
                    "-c1",
                    "-W1",
                    "-I",
                    &src.to_string(),
                    &dst.to_string(),
                ])
                .status
                .success();
            assert!(ok, "the flannel host cannot reach {dst}");
        }
    }
    assert_dual_mesh(&[&lab.hosts[0], &lab.hosts[1]]);
}

#[test]
fn host_gw_and_direct_routing_carry_ipv6_over_the_underlay() {
    for (config, device) in [(HOST_GW_DUAL, None), (DIRECT_DUAL, Some(VXLAN6_DEVICE))] {
        let mut lab = Lab::dual(2, config);
        lab.start_all(&[]);
        lab.wait_converged6(&[0, 1]);
        lab.add_containers6();
        let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
        let route = a.route6_to(b.subnet6());
        assert!(
            route.contains(&format!("via {} dev eth0", b.ip6())),
            "{config}: {route}"
        );
        assert_dual_mesh(&[a, b]);
        match device {
            None => {
                let value = lab.etcd.get(&dual_key(a)).unwrap();
                assert_eq!(
                    value,
                    format!(
                        r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"host-gw"}}"#,
                        a.ip,
                        a.ip6()
                    )
                );
                assert!(!a.ns.try_ip(&["link", "show", "flannel.1"]).status.success());
            }
            Some(dev) => assert!(a.ns.try_ip(&["link", "show", dev]).status.success()),
        }
    }
}

#[test]
fn ipv6_masquerade_hides_containers_from_the_outside_but_not_from_the_overlay() {
    let mut lab = Lab::dual(2, DUAL_CONFIG);
    lab.start_all(&["--ip-masq"]);
    lab.wait_converged6(&[0, 1]);
    let outside = lab.add_host();
    lab.hosts[outside].add_ipv6();
    let outside_ip = lab.hosts[outside].ip6();
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    h1.add_container6();
    h2.add_container6();
    let listed = h1.ns.exec(&["nft", "list", "table", "ip6", "weft"]);
    assert!(listed.status.success(), "no table ip6 weft:\n{}", h1.logs());
    let seen = udp_source_seen(
        &h1.ns,
        h1.container_ip6(),
        &lab.hosts[outside].ns,
        outside_ip,
    );
    assert_eq!(seen, Some(IpAddr::V6(h1.ip6())), "{}", h1.logs());
    let seen = udp_source_seen(&h1.ns, h1.container_ip6(), &h2.ns, h2.container_ip6());
    assert_eq!(
        seen,
        Some(IpAddr::V6(h1.container_ip6())),
        "overlay traffic keeps its source"
    );
}

#[test]
fn an_ipv4_only_host_among_dual_stack_hosts_keeps_ipv4_working() {
    let mut lab = Lab::new(3, DUAL_CONFIG);
    lab.hosts[0].add_ipv6();
    lab.hosts[1].add_ipv6();
    lab.start_all(&[]);
    lab.wait_converged6(&[0, 1]);
    for h in &lab.hosts[..2] {
        h.add_container6();
    }
    let v4 = &lab.hosts[2];
    v4.add_container();
    // The IPv4-only host: a plain key, no IPv6 in its lease or subnet.env, no IPv6 device.
    let key = leases::key(v4.subnet(), None);
    let value = lab.etcd.get(&key).expect("an IPv4-only lease key");
    assert!(
        value.contains(r#""PublicIPv6":null"#) && !value.contains("BackendV6Data"),
        "{value}"
    );
    assert_eq!(SubnetEnv::read(&v4.subnet_file).unwrap().ipv6_subnet, None);
    assert_eq!(SubnetEnv::read(&v4.subnet_file).unwrap().mtu, 1450);
    assert!(!v4
        .ns
        .try_ip(&["link", "show", VXLAN6_DEVICE])
        .status
        .success());
    assert!(
        v4.logs().contains("no global IPv6 address"),
        "{}",
        v4.logs()
    );
    assert_mesh(&lab.hosts);
    assert_dual_mesh(&[&lab.hosts[0], &lab.hosts[1]]);
    // Nothing is refused on either side: an IPv4-only lease is no IPv6 peer.
    for h in &lab.hosts {
        assert_eq!(h.metric("weft_leases_skipped"), Some(0.0), "{}", h.logs());
    }
}

#[test]
fn the_ipv6_subnet_is_kept_across_restarts_reserved_and_replaced_when_it_no_longer_fits() {
    let mut lab = Lab::dual(2, DUAL_CONFIG);
    // Host 2's subnets are reserved ahead, both families.
    lab.weftctl_ok(&[
        "reservations",
        "add",
        "198.19.50.0/24",
        &lab.hosts[1].ip,
        "--ipv6-subnet",
        "2001:db8:100:50::/64",
        "--public-ipv6",
        &lab.hosts[1].ip6().to_string(),
    ]);
    lab.start_all(&[]);
    assert_eq!(
        lab.hosts[1].subnet6(),
        "2001:db8:100:50::/64".parse::<Ipv6Net>().unwrap()
    );
    assert_eq!(
        lab.hosts[1].subnet(),
        "198.19.50.0/24".parse::<Ipv4Net>().unwrap()
    );

    // A restart keeps both subnets, from the lease.
    let h = &mut lab.hosts[0];
    let (s4, s6) = (h.subnet(), h.subnet6());
    assert!(h.stop().success());
    h.start(&[]);
    h.wait_ready();
    assert_eq!((h.subnet(), h.subnet6()), (s4, s6));

    // The lease gone while weftd is down: subnet.env still names both, and they are reused.
    assert!(h.stop().success());
    lab.revoke_lease(s4);
    let h = &mut lab.hosts[0];
    h.start(&[]);
    h.wait_ready();
    assert_eq!((h.subnet(), h.subnet6()), (s4, s6));

    // The IPv6 range moves: the next start keeps the IPv4 subnet, takes a new IPv6 one, and
    // the lease moves to its new key (the old one gone in the same transaction).
    let moved = r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","IPv6SubnetMin":"2001:db8:100:f000::","IPv6SubnetMax":"2001:db8:100:f0ff::","Backend":{"Type":"vxlan"}}"#;
    lab.etcd.put("/coreos.com/network/config", moved);
    let h = &mut lab.hosts[0];
    assert!(h.stop().success());
    h.start(&[]);
    h.wait_ready();
    let n6 = h.subnet6();
    assert_eq!(h.subnet(), s4);
    assert_ne!(n6, s6);
    assert!(n6.network().segments()[3] >= 0xf000, "{n6}");
    let old = leases::key(s4, Some(s6));
    assert_eq!(lab.etcd.get(&old), None, "the old key must be gone");
    assert!(lab.etcd.get(&dual_key(&lab.hosts[0])).is_some());
    // Host 2 follows the move: its route to host 1's IPv6 subnet is the new one.
    let h2 = &lab.hosts[1];
    let ok = wait_for(Duration::from_secs(5), || {
        (!h2.route6_to(n6).is_empty() && h2.route6_to(s6).is_empty()).then_some(())
    });
    assert!(
        ok.is_some(),
        "host 2 did not follow the new IPv6 subnet:\n{}",
        h2.logs()
    );
}
