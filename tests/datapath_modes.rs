//! weftd's datapath modes across hosts in network namespaces, against a real etcd: host-gw,
//! VXLAN with DirectRouting across a router, masquerade, a hand-built flannel host in the same
//! network, and leases weftd must refuse to program.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use testkit::lab::{assert_mesh, flannel_vxlan_host, udp_source_seen, Host, Lab, VXLAN_CONFIG};
use testkit::leases;
use testkit::wait::wait_for;
use weft::subnet::lease_key_name;

const HOST_GW_CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}"#;
const DIRECT_CONFIG: &str =
    r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;

#[test]
fn host_gw_routes_via_public_ips_and_makes_no_vxlan_device() {
    let mut lab = Lab::new(3, HOST_GW_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    assert_mesh(&lab.hosts);
    for (i, h) in lab.hosts.iter().enumerate() {
        let vxlan = h.ns.ip(&["-o", "link", "show", "type", "vxlan"]);
        assert!(
            vxlan.trim().is_empty(),
            "host-gw made a VXLAN device on host {}: {vxlan}",
            i + 1
        );
        for peer in lab.hosts.iter().filter(|p| p.ip != h.ip) {
            let s = peer.subnet();
            assert_eq!(
                h.route_to(s),
                format!("{s} via {} dev eth0", peer.ip),
                "host {}'s route to {s}",
                i + 1
            );
        }
    }
    // The MTU offered to containers is the interface's own: nothing is encapsulated.
    let env = weft::subnet_env::SubnetEnv::read(&lab.hosts[0].subnet_file).unwrap();
    assert_eq!(env.mtu, 1500);

    // A host-gw peer that is not on this L2 cannot be a gateway: it is refused with a reason,
    // and the hosts that can be reached stay programmed and ready.
    let far: Ipv4Net = "198.19.250.0/24".parse().unwrap();
    lab.etcd.put(
        &leases::key(far, None),
        r#"{"PublicIP":"198.18.1.50","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    let h = &lab.hosts[0];
    let skipped = wait_for(Duration::from_secs(3), || {
        (h.metric("weft_leases_skipped") == Some(1.0)).then_some(())
    });
    assert!(skipped.is_some(), "{}", h.logs());
    assert!(
        h.logs().contains(&lease_key_name(far, None)),
        "{}",
        h.logs()
    );
    // Past a full resync (no lease changes after this one, so the next passes are full
    // ones), nothing is failing and the host is still ready.
    h.wait_next_reconcile("after the unreachable host-gw lease");
    assert_eq!(h.metric("weft_leases_skipped"), Some(1.0), "{}", h.logs());
    assert_eq!(h.route_to(far), "");
    assert_eq!(
        h.metric("weft_netlink_errors_total"),
        Some(0.0),
        "{}",
        h.logs()
    );
    assert_eq!(h.http_get("/readyz").0, 200, "{}", h.logs());
    assert_mesh(&lab.hosts);
}

#[test]
fn host_gw_refuses_a_public_ip_that_is_not_on_the_interface() {
    let mut lab = Lab::new(1, HOST_GW_CONFIG);
    let h = &mut lab.hosts[0];
    h.start(&["--public-ip", "198.18.0.77"]);
    let status = h.wait_exit(Duration::from_secs(20));
    let Some(status) = status else {
        panic!(
            "weftd kept running with host-gw and a foreign --public-ip:\n{}",
            h.logs()
        );
    };
    assert!(!status.success(), "weftd exited with {status}");
    let logs = h.logs();
    assert!(
        logs.contains("198.18.0.77"),
        "the error must name the address:\n{logs}"
    );
    assert!(logs.contains("host-gw"), "{logs}");
    // Nothing was advertised for an address nobody can route to.
    let keys = lab
        .etcd
        .etcdctl_ok(&["get", "--prefix", "--keys-only", leases::SUBNETS_PREFIX]);
    assert!(keys.trim().is_empty(), "{keys}");
}

#[test]
fn direct_routing_goes_direct_on_one_l2_and_through_vxlan_across_a_router() {
    let mut lab = Lab::new(2, DIRECT_CONFIG);
    lab.add_router();
    lab.add_far_host();
    lab.add_far_host();
    lab.start_all(&[]);
    lab.add_containers();
    let segment = |h: &Host| h.ip.rsplit_once('.').map(|(n, _)| n.to_string());
    for (i, h) in lab.hosts.iter().enumerate() {
        for peer in lab.hosts.iter().filter(|p| p.ip != h.ip) {
            let s = peer.subnet();
            let route = h.route_to(s);
            if segment(h) == segment(peer) {
                assert_eq!(
                    route,
                    format!("{s} via {} dev eth0", peer.ip),
                    "host {} to its L2 neighbour {}",
                    i + 1,
                    peer.ip
                );
                continue;
            }
            assert_eq!(
                route,
                format!("{s} via {} dev flannel.1 onlink", s.network()),
                "host {} to {} behind the router",
                i + 1,
                peer.ip
            );
            let mac = peer.ns.mac_of("flannel.1");
            let neigh = h.ns.ip(&[
                "neigh",
                "show",
                "dev",
                "flannel.1",
                &s.network().to_string(),
            ]);
            assert!(
                neigh.contains(&format!("lladdr {mac}")) && neigh.contains("PERMANENT"),
                "host {}: neighbour for {s}: {neigh}",
                i + 1
            );
            let fdb = h.ns.bridge(&["fdb", "show", "dev", "flannel.1"]);
            assert!(
                fdb.lines()
                    .any(|l| l.starts_with(&mac) && l.contains(&format!("dst {} ", peer.ip))),
                "host {}: FDB for {mac} dst {}: {fdb}",
                i + 1,
                peer.ip
            );
        }
        // Peers on the same L2 leave no VXLAN state behind.
        let fdb = h.ns.bridge(&["fdb", "show", "dev", "flannel.1"]);
        for peer in lab
            .hosts
            .iter()
            .filter(|p| p.ip != h.ip && segment(p) == segment(h))
        {
            let mac = peer.ns.mac_of("flannel.1");
            assert!(!fdb.contains(&mac), "host {}: {fdb}", i + 1);
        }
    }
    assert_mesh(&lab.hosts);
}

#[test]
fn ip_masq_hides_containers_from_the_outside_but_not_from_the_overlay() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&["--ip-masq"]);
    // A machine on the underlay without weftd and without any route to the overlay.
    let outside = lab.add_host();
    let outside_ip: Ipv4Addr = lab.hosts[outside].ip.parse().unwrap();
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    h1.add_container();
    h2.add_container();
    let env = weft::subnet_env::SubnetEnv::read(&h1.subnet_file).unwrap();
    assert!(env.ipmasq, "subnet.env must say FLANNEL_IPMASQ=true");
    let h1_public: Ipv4Addr = h1.ip.parse().unwrap();

    let seen = udp_source_seen(
        &h1.ns,
        h1.container_ip(),
        &lab.hosts[outside].ns,
        outside_ip,
    );
    assert_eq!(seen, Some(h1_public.into()), "{}", h1.logs());
    assert!(h1.ping_from_container(outside_ip));
    let seen = udp_source_seen(&h1.ns, h1.container_ip(), &h2.ns, h2.container_ip());
    assert_eq!(
        seen,
        Some(h1.container_ip().into()),
        "overlay traffic must keep its source"
    );

    // Rules removed by hand come back within the resync interval (5 s in the lab).
    let out = h1.ns.exec(&["nft", "delete", "table", "ip", "weft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = wait_for(Duration::from_secs(7), || {
        h1.ns
            .exec(&["nft", "list", "table", "ip", "weft"])
            .status
            .success()
            .then_some(())
    });
    assert!(back.is_some(), "table ip weft not restored:\n{}", h1.logs());
    let seen = udp_source_seen(
        &h1.ns,
        h1.container_ip(),
        &lab.hosts[outside].ns,
        outside_ip,
    );
    assert_eq!(seen, Some(h1_public.into()));
}

/// A lease's attributes as stored in etcd.
fn stored_attrs(lab: &Lab, subnet: Ipv4Net) -> serde_json::Value {
    let key = leases::key(subnet, None);
    let text = lab
        .etcd
        .get(&key)
        .unwrap_or_else(|| panic!("no lease at {key}"));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("lease at {key} is not JSON: {e}: {text}"))
}

#[test]
fn weftd_hosts_and_a_hand_built_flannel_host_share_one_network() {
    let mut lab = Lab::new(3, VXLAN_CONFIG);
    lab.start_first(2, &[]);
    for h in &lab.hosts[..2] {
        h.add_container();
    }
    // Host 3 is set up exactly as flanneld would set it up.
    let fl = &lab.hosts[2];
    let fl_subnet: Ipv4Net = "198.19.200.0/24".parse().unwrap();
    let (fl_container, _) = flannel_vxlan_host(&lab.etcd, fl, fl_subnet);
    // flanneld on host 3 programs the weftd hosts from their leases, as flannel reads them.
    for h in &lab.hosts[..2] {
        let s = h.subnet();
        let attrs = stored_attrs(&lab, s);
        assert_eq!(attrs["BackendType"], "vxlan", "{attrs}");
        assert_eq!(attrs["BackendData"]["VNI"], 1, "{attrs}");
        let mac = attrs["BackendData"]["VtepMAC"]
            .as_str()
            .unwrap_or_else(|| panic!("no VtepMAC in {attrs}"));
        let public = attrs["PublicIP"]
            .as_str()
            .unwrap_or_else(|| panic!("no PublicIP in {attrs}"));
        assert_eq!(public, h.ip);
        assert_eq!(mac, h.ns.mac_of("flannel.1"));
        let gw = s.network().to_string();
        fl.flannel_programs("flannel.1", &s.to_string(), &gw, mac, public);
    }
    lab.hosts[..2].iter().for_each(|h| {
        let ok = wait_for(Duration::from_secs(5), || {
            (!h.route_to(fl_subnet).is_empty()).then_some(())
        });
        assert!(ok.is_some(), "no route to the flannel host:\n{}", h.logs());
    });
    let fl = &lab.hosts[2];
    for h in &lab.hosts[..2] {
        assert!(
            h.ping_from_container(fl_container),
            "weftd host {} cannot reach the flannel host's container:\n{}",
            h.ip,
            h.logs()
        );
        let ok = fl
            .ns
            .exec(&[
                "ping",
                "-c1",
                "-W1",
                "-I",
                &fl_container.to_string(),
                &h.container_ip().to_string(),
            ])
            .status
            .success();
        assert!(ok, "the flannel host cannot reach {}'s container", h.ip);
    }
    assert_mesh(&lab.hosts[..2]);
}

#[test]
fn untrusted_leases_are_never_programmed_and_weftd_keeps_going() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    let malformed: Ipv4Net = "198.19.201.0/24".parse().unwrap();
    let multicast_mac: Ipv4Net = "198.19.202.0/24".parse().unwrap();
    let outside: Ipv4Net = "198.18.50.0/24".parse().unwrap();
    let own_ip: Ipv4Net = "198.19.203.0/24".parse().unwrap();
    let good: Ipv4Net = "198.19.204.0/24".parse().unwrap();
    let put = |subnet: Ipv4Net, value: &str| lab.etcd.put(&leases::key(subnet, None), value);
    let vxlan = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    // Two are there before weftd starts (read by the first listing) ...
    put(malformed, r#"{"PublicIP":"198.18.0.71","BackendType":"vxl"#);
    put(multicast_mac, &vxlan("198.18.0.72", "01:00:5e:00:00:01"));
    let h = &mut lab.hosts[0];
    h.start(&[]);
    h.wait_ready();
    // ... and two arrive through the watch, followed by a lease that is fine.
    let h_ip = h.ip.clone();
    put(outside, &vxlan("198.18.0.73", "0e:00:00:00:00:73"));
    put(own_ip, &vxlan(&h_ip, "0e:00:00:00:00:74"));
    put(good, &vxlan("198.18.0.75", "0e:00:00:00:00:75"));
    let h = &lab.hosts[0];
    let ok = wait_for(Duration::from_secs(5), || {
        (!h.route_to(good).is_empty()).then_some(())
    });
    assert!(
        ok.is_some(),
        "the good lease was not programmed:\n{}",
        h.logs()
    );
    let counted = wait_for(Duration::from_secs(3), || {
        (h.metric("weft_leases_skipped") == Some(4.0)).then_some(())
    });
    assert!(
        counted.is_some(),
        "weft_leases_skipped is {:?}, want 4:\n{}",
        h.metric("weft_leases_skipped"),
        h.logs()
    );
    let logs = h.logs();
    for s in [malformed, multicast_mac, outside, own_ip] {
        let key = lease_key_name(s, None);
        assert!(
            logs.lines().any(|l| l.contains("WARN") && l.contains(&key)),
            "no warning names {key}:\n{logs}"
        );
        assert_eq!(h.route_to(s), "", "{key} was programmed");
    }
    let fdb = h.ns.bridge(&["fdb", "show", "dev", "flannel.1"]);
    assert!(!fdb.contains("01:00:5e:00:00:01"), "{fdb}");
    assert!(!fdb.contains("0e:00:00:00:00:74"), "{fdb}");
    let neigh = h.ns.ip(&["neigh", "show", "dev", "flannel.1"]);
    assert!(!neigh.contains("198.19.203.0"), "{neigh}");

    // A lease that turns malformed stops being programmed.
    put(good, "not json at all");
    let gone = wait_for(Duration::from_secs(5), || {
        h.route_to(good).is_empty().then_some(())
    });
    assert!(gone.is_some(), "{}", h.logs());
    let counted = wait_for(Duration::from_secs(3), || {
        (h.metric("weft_leases_skipped") == Some(5.0)).then_some(())
    });
    assert!(
        counted.is_some(),
        "weft_leases_skipped is {:?}, want 5",
        h.metric("weft_leases_skipped")
    );
    let h = &mut lab.hosts[0];
    assert!(h.is_running(), "{}", h.logs());
    assert_eq!(h.http_get("/readyz").0, 200);
    assert_eq!(h.http_get("/healthz").0, 200);
}

#[test]
fn weftctl_check_reports_a_route_deleted_by_hand() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    let peer = lab.hosts[1].subnet();
    let h = &mut lab.hosts[0];
    let check = |h: &Host| {
        let out = h.weftctl_check(&[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = check(h);
    assert_eq!(code, Some(0), "a healthy host: {stdout}{stderr}");
    assert_eq!(stdout, "", "a healthy host reports nothing");

    // With weftd stopped nothing mends the kernel, so the hand-made damage stays for check.
    assert!(h.stop().success());
    h.ns.ip(&["route", "del", &peer.to_string()]);
    let (code, stdout, stderr) = check(h);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("route") && stdout.contains(&peer.to_string()),
        "the finding must name the route: {stdout}"
    );
    let out = h.weftctl_check(&["-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check -o json");
    assert_eq!(v["findings"].as_array().map(Vec::len), Some(1), "{v}");

    // weftd puts it back on start, and check is quiet again.
    h.start(&[]);
    h.wait_ready();
    let back = wait_for(Duration::from_secs(5), || {
        (!h.route_to(peer).is_empty()).then_some(())
    });
    assert!(back.is_some(), "{}", h.logs());
    let (code, stdout, stderr) = check(h);
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "{stderr}");
}

#[test]
fn a_forged_lease_with_this_hosts_ip_cannot_give_its_device_a_bad_mac() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    let forged: Ipv4Net = "198.19.205.0/24".parse().unwrap();
    let ip = lab.hosts[0].ip.clone();
    lab.etcd.put(
        &leases::key(forged, None),
        &format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"01:00:5e:00:00:05"}}}}"#
        ),
    );
    let h = &mut lab.hosts[0];
    h.start(&[]);
    h.wait_ready();
    let mac = h.ns.mac_of("flannel.1");
    assert_ne!(mac, "01:00:5e:00:00:05", "{}", h.logs());
    // Whatever subnet the host ended up with, its lease advertises the device's real MAC.
    let attrs = stored_attrs(&lab, lab.hosts[0].subnet());
    let advertised = wait_for(Duration::from_secs(5), || {
        let a = stored_attrs(&lab, lab.hosts[0].subnet());
        (a["BackendData"]["VtepMAC"] == mac.as_str()).then_some(a)
    });
    assert!(advertised.is_some(), "{attrs} vs {mac}");
}
