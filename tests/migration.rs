//! Moving a live node from flanneld to weftd: a host whose datapath, lease and subnet.env were
//! made exactly as flanneld makes them starts weftd in flanneld's place, under a ping every
//! 10 ms in both directions. weftd adopts the device (same MAC), the lease (same subnet; flannel's
//! etcd lease is swapped for weft's own, never leaked) and the routes: not one packet is lost.

use std::time::{Duration, Instant};

use testkit::lab::{make_flannel_device, Lab, VXLAN_CONFIG};
use testkit::ping::Pinger;
use testkit::wait::pace_until;

#[test]
fn a_flannel_node_moves_to_weftd_without_losing_a_packet() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    let flannel_subnet = "198.19.50.0/24";

    // Host 1 as flanneld leaves it: device, address, lease with an etcd lease, subnet.env.
    let h1 = &lab.hosts[0];
    let h1_mac = make_flannel_device(&h1.ns, "198.18.0.1", flannel_subnet.parse().unwrap());
    let key = "/coreos.com/network/subnets/198.19.50.0-24";
    let value = format!(
        r#"{{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{h1_mac}"}}}}"#
    );
    let lease_id = lab.etcd.put_on_lease(key, &value, 86400);
    std::fs::create_dir_all(h1.subnet_file.parent().unwrap()).unwrap();
    std::fs::write(&h1.subnet_file, "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.50.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").unwrap();

    // Host 2 runs weftd; host 1's path towards it is made by hand, as flanneld would.
    lab.hosts[1].start(&[]);
    lab.hosts[1].wait_ready();
    let h2_subnet = lab.hosts[1].subnet();
    let h2_mac = lab.hosts[1].ns.mac_of("flannel.1");
    let h1 = &lab.hosts[0];
    let gw2 = h2_subnet.network().to_string();
    h1.ns.ip(&[
        "neigh",
        "add",
        &gw2,
        "lladdr",
        &h2_mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    h1.ns.bridge(&[
        "fdb",
        "add",
        &h2_mac,
        "dev",
        "flannel.1",
        "dst",
        "198.18.0.2",
    ]);
    h1.ns.ip(&[
        "route",
        "add",
        &h2_subnet.to_string(),
        "via",
        &gw2,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    lab.add_containers();
    let (c1, c2) = (lab.hosts[0].container_ip(), lab.hosts[1].container_ip());
    assert!(
        lab.hosts[0].ping_from_container(c2),
        "the hand-made flannel host must work before the move"
    );

    // The move: flanneld is gone (nothing runs on host 1); weftd starts with the same flags.
    // The pings run for 10 s (over 500 each way), from before the start to well past it.
    let pinging = Instant::now();
    let pings = [
        Pinger::in_netns(&lab.hosts[0].ns, c1, c2),
        Pinger::in_netns(&lab.hosts[1].ns, c2, c1),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let h1 = &mut lab.hosts[0];
    h1.start(&[]);
    let env = h1.wait_ready();
    let ready = h1.reconcile_mark();
    pace_until(pinging + Duration::from_secs(10));
    for (p, what) in pings
        .into_iter()
        .zip(["host 1 -> host 2", "host 2 -> host 1"])
    {
        p.finish().assert_no_loss(
            &format!("{what} while host 1 moved from flanneld to weftd"),
            500,
        );
    }
    // A full pass begun after weftd was ready has looked at what it adopted.
    lab.hosts[0].wait_reconciled_since(ready, "after the move");

    // weftd kept what flannel had: subnet, device MAC and routes; nothing was recreated.
    let h1 = &lab.hosts[0];
    assert_eq!(env.subnet_network().unwrap().to_string(), flannel_subnet);
    assert_eq!(h1.ns.mac_of("flannel.1"), h1_mac);
    assert!(
        lab.etcd.key_lease(key).is_some(),
        "the lease is still on an etcd lease (it expires if the host dies)"
    );
    // Per host one etcd lease for its subnet and one for its status record; flannel's old
    // one released.
    let leases = lab.etcd.etcdctl_ok(&["lease", "list"]);
    assert!(
        leases.starts_with("found 4 leases"),
        "two etcd leases per host, flannel's old one released: {leases}"
    );
    assert!(
        !leases.contains(&lease_id),
        "flannel's etcd lease {lease_id} is still there: {leases}"
    );
    let stored = lab.etcd.get(key).expect("the lease is still in etcd");
    assert!(
        stored.contains(&h1_mac) && stored.contains("\"PublicIP\":\"198.18.0.1\""),
        "{stored}"
    );
    assert!(!h1.logs().contains("recreated"), "{}", h1.logs());
}
