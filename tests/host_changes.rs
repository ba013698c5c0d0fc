//! The host's network changes under a running weftd, with containers pinging across: the
//! public IP renumbered, the external NIC deleted and re-created, its MTU changed, the default
//! route moved. weftd follows each without a restart; each test states how long that took.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use testkit::lab::{
    host_port, Host, Lab, FAR_SEGMENT, ROUTER_FAR_IP, ROUTER_NEAR_IP, VXLAN_CONFIG, VXLAN_DEVICE,
};
use testkit::netns::plug;
use testkit::wait::time_until;
use weft::netlink::{Link, Netlink};

/// How long a host and its peers may take to follow a change, loosely: the issue asks for
/// "within a few seconds".
const BOUND: Duration = Duration::from_secs(5);
/// How long to keep polling past the bound, so a failure says how late it was.
const PATIENCE: Duration = Duration::from_secs(20);

/// A link of the host, read through netlink inside its namespace.
fn link(host: &Host, name: &str) -> Option<Link> {
    let name = name.to_string();
    weft::netlink::run_in_netns(&host.ns.path(), move || {
        Netlink::new()
            .expect("a netlink socket")
            .link_by_name(&name)
            .expect("reading a link")
    })
    .expect("entering the host namespace")
}

/// Polls until `done` and says how long after `since` that was; fails with the host's log
/// when it is later than BOUND.
fn recovered(since: Instant, what: &str, host: &Host, done: impl FnMut() -> bool) -> Duration {
    let took = time_until(PATIENCE, since, done);
    let Some(took) = took else {
        panic!("{what}: not within {PATIENCE:?}:\n{}", host.logs());
    };
    eprintln!("{}: {what}: {took:?}", host.ns.name());
    assert!(
        took <= BOUND,
        "{what} took {took:?}, more than {BOUND:?}:\n{}",
        host.logs()
    );
    took
}

/// Both containers reach each other.
fn pings_both_ways(a: &Host, b: &Host) -> bool {
    a.ping_from_container(b.container_ip()) && b.ping_from_container(a.container_ip())
}

/// The lease of `host`'s subnet: (PublicIP, VtepMAC).
fn lease_of(lab: &Lab, host: &Host) -> (String, String) {
    let v = lab
        .lease_value(host.subnet())
        .expect("the host's lease in etcd");
    let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (field(&v["PublicIP"]), field(&v["BackendData"]["VtepMAC"]))
}

/// The VXLAN device's local address and lower device.
fn device_local_and_lower(host: &Host) -> Option<(Option<IpAddr>, Option<u32>)> {
    let vx = link(host, VXLAN_DEVICE)?.vxlan?;
    Some((vx.local, vx.lower))
}

#[test]
fn a_renumbered_public_ip_is_advertised_and_peers_follow() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let (old_ip, new_ip) = ("198.18.0.1", "198.18.0.101");
    let subnet = lab.hosts[0].subnet();
    let (_, mac) = lease_of(&lab, &lab.hosts[0]);
    assert_eq!(lease_of(&lab, &lab.hosts[0]).0, old_ip);
    let pinger = lab.hosts[1].start_pinging(lab.hosts[0].container_ip());
    std::thread::sleep(Duration::from_millis(300));

    // DHCP hands out another address: the new one comes, the old one goes.
    let a = &lab.hosts[0];
    let out =
        a.ns.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"]);
    assert!(out.status.success(), "sysctl promote_secondaries");
    let changed = Instant::now();
    a.ns.ip(&["addr", "add", &format!("{new_ip}/24"), "dev", "eth0"]);
    a.ns.ip(&["addr", "del", &format!("{old_ip}/24"), "dev", "eth0"]);

    let new: IpAddr = new_ip.parse().unwrap();
    recovered(changed, "the device's local address follows", a, || {
        device_local_and_lower(a).is_some_and(|(local, _)| local == Some(new))
    });
    recovered(changed, "the lease advertises the new public IP", a, || {
        lease_of(&lab, a).0 == new_ip
    });
    let b = &lab.hosts[1];
    recovered(changed, "the peer sends to the new address", b, || {
        b.fdb_for(&mac).contains(&format!("dst {new_ip}"))
    });
    let took = recovered(changed, "containers reach each other again", a, || {
        pings_both_ways(a, b)
    });
    // Whatever else weftd would do about the new address, a pass begun after the recovery
    // has done it.
    a.wait_next_reconcile("after the renumbering");
    let totals = pinger.finish();
    eprintln!(
        "renumbering: traffic back after {took:?}; {} of {} pings lost",
        totals.lost(),
        totals.transmitted
    );
    assert!(totals.received > 0, "no ping came back: {totals:?}");
    // Same subnet, same VTEP MAC: only the address moved.
    assert_eq!(a.subnet(), subnet);
    assert_eq!(lease_of(&lab, a), (new_ip.to_string(), mac));

    // The renumbered host still hears of peers at once: its lease watch does not hang on a
    // connection from the address it lost.
    let c = lab.add_host();
    lab.hosts[c].start(&[]);
    lab.hosts[c].wait_ready();
    let joined = Instant::now();
    let c_subnet = lab.hosts[c].subnet();
    let a = &lab.hosts[0];
    recovered(joined, "the renumbered host programs a new peer", a, || {
        !a.route_to(c_subnet).is_empty()
    });
}

#[test]
fn a_recreated_nic_gets_the_device_back_and_peers_see_nothing() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let lease_before = lease_of(&lab, &lab.hosts[0]);
    let a = &lab.hosts[0];
    let old_index = link(a, "eth0").expect("eth0").index;
    let pinger = lab.hosts[1].start_pinging(a.container_ip());
    std::thread::sleep(Duration::from_millis(300));

    // The NIC goes (the kernel takes the VXLAN device with it) and comes back under the same
    // name with the same address, as a driver reload or a hot-plug does.
    let changed = Instant::now();
    a.ns.ip(&["link", "del", "eth0"]);
    plug(
        &a.ns,
        "eth0",
        &lab.underlay,
        &host_port(1),
        "br0",
        &format!("{}/24", a.ip),
    );
    let new_index = link(a, "eth0").expect("the new eth0").index;
    assert_ne!(new_index, old_index, "the kernel reused the index");

    recovered(changed, "the device is rebuilt on the new NIC", a, || {
        device_local_and_lower(a).is_some_and(|(_, lower)| lower == Some(new_index))
    });
    let b = &lab.hosts[1];
    let took = recovered(changed, "containers reach each other again", a, || {
        pings_both_ways(a, b)
    });
    // A pass begun after the recovery found nothing more to change: the lease stays.
    a.wait_next_reconcile("after the NIC came back");
    let totals = pinger.finish();
    eprintln!(
        "NIC re-created: traffic back after {took:?}; {} of {} pings lost",
        totals.lost(),
        totals.transmitted
    );
    assert!(totals.received > 0, "no ping came back: {totals:?}");
    // The device kept its MAC and the lease did not change: the peer had nothing to do.
    assert_eq!(lease_of(&lab, a), lease_before);
    assert_eq!(a.vtep_mac(), lease_before.1);
    assert_eq!(b.objects_for(&a.as_peer()), [true; 3]);
}

#[test]
fn an_mtu_change_reaches_the_device_and_subnet_env_without_loss() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let a = &lab.hosts[0];
    assert_eq!(link(a, VXLAN_DEVICE).expect("the device").mtu, 1450);
    let lease_before = lease_of(&lab, a);
    let pinger = lab.hosts[1].start_pinging(a.container_ip());
    std::thread::sleep(Duration::from_millis(300));

    let changed = Instant::now();
    a.ns.ip(&["link", "set", "eth0", "mtu", "1400"]);
    recovered(changed, "the device MTU follows", a, || {
        link(a, VXLAN_DEVICE).is_some_and(|l| l.mtu == 1350)
    });
    recovered(changed, "subnet.env's FLANNEL_MTU follows", a, || {
        std::fs::read_to_string(&a.subnet_file).is_ok_and(|t| t.contains("FLANNEL_MTU=1350\n"))
    });
    // A pass begun after the change found nothing more to change: the lease stays.
    a.wait_next_reconcile("after the MTU change");
    pinger
        .finish()
        .assert_no_loss("while the external MTU changed", 20);
    assert_eq!(lease_of(&lab, a), lease_before);
    assert!(pings_both_ways(a, &lab.hosts[1]));
}

/// Gives host `i` a second NIC, `eth1` at `ip`/24 on the router's far segment (instead of the
/// route there through the router).
fn second_nic(lab: &Lab, i: usize, ip: &str) {
    let h = &lab.hosts[i];
    h.ns.ip(&["route", "del", FAR_SEGMENT]);
    let port = format!("q{}", i + 1);
    plug(
        &h.ns,
        "eth1",
        &lab.underlay,
        &port,
        "br1",
        &format!("{ip}/24"),
    );
}

#[test]
fn a_moved_default_route_moves_an_unpinned_host_and_never_a_pinned_one() {
    let mut lab = Lab::new(3, VXLAN_CONFIG);
    lab.add_router();
    for h in &lab.hosts {
        h.ns.ip(&["route", "add", "default", "via", ROUTER_NEAR_IP]);
    }
    // Host 1 chooses by the default route; host 3 is pinned to eth0. Both have two NICs.
    let (moving_ip, pinned_eth1) = ("198.18.1.101", "198.18.1.103");
    second_nic(&lab, 0, moving_ip);
    second_nic(&lab, 2, pinned_eth1);
    lab.hosts[0].iface = None;
    lab.start_all(&[]);
    lab.add_containers();
    assert_eq!(lease_of(&lab, &lab.hosts[0]).0, lab.hosts[0].ip);
    let pinned_before = lease_of(&lab, &lab.hosts[2]);
    let pinned_lower = link(&lab.hosts[2], "eth0").expect("eth0").index;
    let pinger = lab.hosts[1].start_pinging(lab.hosts[0].container_ip());
    std::thread::sleep(Duration::from_millis(300));

    let moved = Instant::now();
    for i in [0, 2] {
        lab.hosts[i].ns.ip(&[
            "route",
            "replace",
            "default",
            "via",
            ROUTER_FAR_IP,
            "dev",
            "eth1",
        ]);
    }
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let eth1 = link(a, "eth1").expect("eth1").index;
    let new: IpAddr = moving_ip.parse().unwrap();
    recovered(
        moved,
        "the device moves to the default route's NIC",
        a,
        || device_local_and_lower(a) == Some((Some(new), Some(eth1))),
    );
    recovered(moved, "the lease advertises that NIC's address", a, || {
        lease_of(&lab, a).0 == moving_ip
    });
    let mac = a.vtep_mac();
    recovered(moved, "the peer sends to the new address", b, || {
        b.fdb_for(&mac).contains(&format!("dst {moving_ip}"))
    });
    let took = recovered(moved, "containers reach each other again", a, || {
        pings_both_ways(a, b)
    });

    // The pinned host stays where it was told to be. It has followed host 1's lease (so no
    // lease event is pending), and a full pass begun after that has chosen its interface
    // again, as every full pass does.
    let c = &lab.hosts[2];
    recovered(
        moved,
        "the pinned host sends to host 1's new address",
        c,
        || c.fdb_for(&mac).contains(&format!("dst {moving_ip}")),
    );
    c.wait_next_reconcile("after the default route moved");
    let totals = pinger.finish();
    eprintln!(
        "default route moved: traffic back after {took:?}; {} of {} pings lost",
        totals.lost(),
        totals.transmitted
    );
    assert!(totals.received > 0, "no ping came back: {totals:?}");
    assert_eq!(lease_of(&lab, c), pinned_before);
    let pinned_ip: IpAddr = c.ip.parse().unwrap();
    assert_eq!(
        device_local_and_lower(c),
        Some((Some(pinned_ip), Some(pinned_lower)))
    );
    assert!(
        !c.logs().contains("external interface changed"),
        "{}",
        c.logs()
    );
}
