//! The containers' bridge keeps its MAC. Containers are added and removed on one host, and its
//! weftd restarted, while every container on it pings a container on another host every 10 ms:
//! none loses a packet, because the bridge (their gateway) never changes its MAC, which the
//! plugin pinned to the one derived from the host's subnet. A MAC changed by hand is drift:
//! `weftctl check` names it and weftd puts it back.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::bins;
use testkit::cni::{Container, Plugin};
use testkit::lab::{Host, Lab, VXLAN_CONFIG};
use testkit::ping::Pinger;
use testkit::podman::Podman;
use testkit::wait::pace_until;

/// The MAC the plugin pins on a host's bridge: 0a:58 and the IPv4 gateway.
fn pinned_mac(host: &Host) -> String {
    let gw = u32::from(host.subnet().network()) + 1;
    let [a, b, c, d] = Ipv4Addr::from(gw).octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Pings `dst` from inside `c` every 10 ms until finished.
fn ping_from(c: &Container, dst: Ipv4Addr) -> Pinger {
    Pinger::start_with(c.prefix(), c.ip, dst)
}

#[test]
fn containers_keep_their_gateway_while_others_come_and_go_and_weftd_restarts() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    let plugins: Vec<Plugin> = (lab.hosts.iter().enumerate())
        .map(|(i, h)| Plugin::new(h, &lab.dir.path().join(format!("ipam{i}"))))
        .collect();
    let far = plugins[1].add("far");
    let host = &lab.hosts[0];
    let pinned = pinned_mac(host);
    let bridge_mac = || host.ns.mac_of("cni0");

    let mut running: Vec<(Container, Pinger)> = Vec::new();
    for i in 0..13 {
        let c = plugins[0].add(&format!("c{i}"));
        assert_eq!(
            bridge_mac(),
            pinned,
            "cni0's MAC after ADD number {}",
            i + 1
        );
        let p = ping_from(&c, far.ip);
        running.push((c, p));
    }
    // Every other container goes (DEL as a runtime does), the rest keep pinging; among those
    // that go is the one whose port has the lowest MAC, which a bridge without a MAC of its
    // own takes for itself, and loses with that port.
    let lowest = (running.iter().map(|(c, _)| c.port_mac.clone()))
        .min()
        .expect("containers were added");
    let mut kept = Vec::new();
    for (i, (c, p)) in running.into_iter().enumerate() {
        if i % 2 == 1 || c.port_mac == lowest {
            p.finish()
                .assert_no_loss(&format!("container {} until its DEL", c.ip), 20);
            plugins[0].del(c);
            assert_eq!(bridge_mac(), pinned, "cni0's MAC after a DEL");
        } else {
            kept.push((c, p));
        }
    }
    let mut host = lab.hosts.remove(0);
    host.stop();
    host.start(&[]);
    host.wait_ready();
    for i in 13..16 {
        let c = plugins[0].add(&format!("c{i}"));
        let p = ping_from(&c, far.ip);
        kept.push((c, p));
    }
    let added = Instant::now();
    // The restarted weftd has adopted the bridge, and a full pass begun after these ADDs has
    // looked at it (the pass that would move a MAC it did not pin).
    host.wait_next_reconcile("after the restart and three ADDs");
    assert_eq!(
        host.ns.mac_of("cni0"),
        pinned,
        "cni0's MAC after the restart"
    );
    // The new containers' pingers run a while before they are counted.
    pace_until(added + Duration::from_millis(500));
    for (c, p) in kept {
        p.finish()
            .assert_no_loss(&format!("container {}", c.ip), 20);
    }
    let check = |h: &Host| h.weftctl_check(&[]);
    let out = check(&host);
    assert!(
        out.status.success(),
        "weftctl check: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Drift: a MAC changed by hand is put back by weftd, counted, and reported by check while
    // weftd is stopped.
    host.assert_mends(
        "cni0's MAC changed by hand",
        Duration::from_secs(2),
        Duration::from_secs(10),
        || {
            host.ns
                .ip(&["link", "set", "cni0", "address", "02:00:00:00:00:01"]);
        },
        || host.ns.mac_of("cni0") == pinned,
    );
    host.stop();
    host.ns
        .ip(&["link", "set", "cni0", "address", "02:00:00:00:00:01"]);
    let out = check(&host);
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "weftctl check passed: {found}");
    assert!(
        found.contains(&format!(
            "bridge cni0 has MAC 02:00:00:00:00:01, not {pinned} pinned by weft"
        )),
        "{found}"
    );
    plugins[1].del(far);
}

#[test]
fn a_bridge_made_before_weft_pinned_it_is_adopted_with_the_mac_its_containers_know() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    lab.start_all(&[]);
    let host = &lab.hosts[0];
    // As an older weft or flannel's bridge plugin left it: a bridge whose MAC follows its
    // ports, with a container on it.
    host.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    host.ns.ip(&[
        "link",
        "add",
        "vold",
        "address",
        "02:00:00:00:00:09",
        "type",
        "veth",
        "peer",
        "name",
        "vold-c",
    ]);
    host.ns.ip(&["link", "set", "vold", "master", "cni0", "up"]);
    let known = host.ns.mac_of("cni0");
    assert_eq!(known, "02:00:00:00:00:09", "the bridge follows its port");
    let plugin = Plugin::new(host, &lab.dir.path().join("ipam"));
    let c = plugin.add("new");
    assert_eq!(host.ns.mac_of("cni0"), known, "adopted with the MAC it had");
    // Pinned: a port with a lower MAC no longer moves it.
    host.ns.ip(&[
        "link",
        "add",
        "vlow",
        "address",
        "02:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        "vlow-c",
    ]);
    host.ns.ip(&["link", "set", "vlow", "master", "cni0", "up"]);
    assert_eq!(host.ns.mac_of("cni0"), known);
    plugin.del(c);
}

#[test]
fn podman_containers_keep_their_gateway_while_others_come_and_go() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    let far_plugin = Plugin::new(&lab.hosts[1], &lab.dir.path().join("ipam-far"));
    let far = far_plugin.add("far");
    let host = &lab.hosts[0];
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": format!("weftpin{}", std::process::id()),
        "plugins": [{
            "type": "weft",
            "subnetFile": host.subnet_file,
            "dataDir": lab.dir.path().join("ipam-podman"),
            "bridge": "cni0",
        }],
    });
    let podman = Podman::new(&host.ns, &bins::plugin(), &conflist);
    let pinned = pinned_mac(host);
    let mut running = Vec::new();
    for i in 0..6 {
        let name = format!("weftpin-{}-{i}", std::process::id());
        podman.start(&name);
        assert_eq!(host.ns.mac_of("cni0"), pinned, "cni0's MAC after run {i}");
        let ip: Ipv4Addr = podman.address(&name).parse().unwrap();
        let prefix = vec![
            "nsenter".to_string(),
            format!("--net=/proc/{}/ns/net", podman.pid(&name)),
            "--".to_string(),
        ];
        running.push((name, Pinger::start_with(prefix, ip, far.ip)));
    }
    // Every other container goes while the rest keep pinging.
    let repairs = host.repairs();
    let mut kept = Vec::new();
    for (i, (name, p)) in running.into_iter().enumerate() {
        if i % 2 == 1 {
            p.finish().assert_no_loss(&name, 20);
            podman.rm(&name);
        } else {
            kept.push((name, p));
        }
    }
    let removed = Instant::now();
    // weftd has looked at the bridge since the last rm: had its MAC moved, weftd would have
    // put it back by now, and counted that.
    host.wait_next_reconcile("after podman rm");
    pace_until(removed + Duration::from_millis(500));
    for (name, p) in kept {
        p.finish().assert_no_loss(&name, 20);
    }
    assert_eq!(host.ns.mac_of("cni0"), pinned, "cni0's MAC after podman rm");
    assert_eq!(
        host.repairs(),
        repairs,
        "cni0's MAC moved and was put back:\n{}",
        host.logs()
    );
    far_plugin.del(far);
}
