//! Moving a live node from flanneld to weftd: a host whose datapath, lease and subnet.env were
//! made exactly as flanneld makes them starts weftd in flanneld's place, under a ping every
//! 10 ms in both directions. weftd adopts the device (same MAC), the lease (same subnet; flannel's
//! etcd lease is swapped for weft's own, never leaked) and the routes: not one packet is lost.

use std::process::{Child, Command, Stdio};

use testkit::lab::{make_flannel_device, Lab, VXLAN_CONFIG};

/// `ping -i 0.01 -c COUNT` from `src` to `dst` inside `ns`, in the background.
fn start_ping(ns: &str, src: &str, dst: &str, count: u32) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            "-I",
            src,
            dst,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ping (apt-get install iputils-ping)")
}

/// (transmitted, received) from ping's summary line.
fn ping_result(child: Child) -> (u32, u32) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| {
            panic!(
                "no ping summary in {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

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
    let pings = [
        start_ping(
            lab.hosts[0].ns.name(),
            &c1.to_string(),
            &c2.to_string(),
            600,
        ),
        start_ping(
            lab.hosts[1].ns.name(),
            &c2.to_string(),
            &c1.to_string(),
            600,
        ),
    ];
    std::thread::sleep(std::time::Duration::from_millis(500));
    let h1 = &mut lab.hosts[0];
    h1.start(&[]);
    let env = h1.wait_ready();
    for p in pings {
        let (sent, got) = ping_result(p);
        assert!(sent >= 500, "ping ran: {sent}");
        assert_eq!(
            sent,
            got,
            "packets lost while host 1 moved from flanneld to weftd:\n{}",
            lab.hosts[0].logs()
        );
    }

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
