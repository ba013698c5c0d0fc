//! A real runtime on a real overlay: two hosts in namespaces run weftd, podman on each host
//! starts a container through the weft plugin, and the containers reach each other across
//! VXLAN, over IPv4 and, on a dual-stack network, IPv6. After `podman rm`, no address is
//! left reserved on either host.

use serde_json::json;
use testkit::bins;
use testkit::lab::{Lab, VXLAN_CONFIG};
use testkit::lab6::DUAL_CONFIG;
use testkit::plugin::reservations;
use testkit::podman::Podman;
use testkit::wait::wait_for;

#[test]
fn podman_containers_on_two_hosts_reach_each_other_over_the_overlay() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    two_hosts(&lab, false);
}

#[test]
fn dual_stack_podman_containers_on_two_hosts_reach_each_other_on_both_families() {
    let mut lab = Lab::dual(2, DUAL_CONFIG);
    lab.start_all(&[]);
    lab.wait_converged6(&[0, 1]);
    two_hosts(&lab, true);
}

/// A container by podman on each host; they ping each other (on both families with `dual`),
/// and `podman rm` leaves no address reserved.
fn two_hosts(lab: &Lab, dual: bool) {
    let network = format!("weftpod{}", std::process::id());
    let mut runtimes = Vec::new();
    for (i, host) in lab.hosts.iter().enumerate() {
        let data_dir = lab.dir.path().join(format!("h{}-ipam", i + 1));
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "weft",
                "subnetFile": host.subnet_file,
                "dataDir": data_dir,
                "bridge": "cni0",
                "isDefaultGateway": true,
            }],
        });
        runtimes.push((
            Podman::new(&host.ns, &bins::plugin(), &conflist),
            data_dir.join(&network),
        ));
    }
    let names = ["weftpod-a", "weftpod-b"];
    let mut addrs = Vec::new();
    for ((podman, _), name) in runtimes.iter().zip(names) {
        podman.start(name);
        addrs.push(podman.address(name));
    }
    for (i, host) in lab.hosts.iter().enumerate() {
        let subnet = host.subnet();
        let addr: std::net::Ipv4Addr = addrs[i].parse().unwrap();
        assert!(
            subnet.contains(&addr),
            "container {} got {addr}, outside its host's subnet {subnet}",
            names[i]
        );
    }
    let (a, b) = (&runtimes[0].0, &runtimes[1].0);
    if dual {
        let addrs6: Vec<String> = runtimes
            .iter()
            .zip(names)
            .map(|((p, _), n)| p.address6(n))
            .collect();
        for (i, host) in lab.hosts.iter().enumerate() {
            let addr: std::net::Ipv6Addr = addrs6[i].parse().unwrap();
            assert!(
                host.subnet6().contains(&addr),
                "{addr} outside {}",
                host.subnet6()
            );
        }
        // The first IPv6 packets on fresh links wait for neighbour discovery on three
        // links (container, bridge, container); give that a few seconds once.
        let first = wait_for(std::time::Duration::from_secs(5), || {
            a.ping(names[0], &addrs6[1]).then_some(())
        });
        assert!(
            first.is_some(),
            "{} cannot reach {} over IPv6",
            names[0],
            addrs6[1]
        );
        assert!(
            a.ping(names[0], &addrs6[1]),
            "{} cannot reach {} over IPv6",
            names[0],
            addrs6[1]
        );
        assert!(
            b.ping(names[1], &addrs6[0]),
            "{} cannot reach {} over IPv6",
            names[1],
            addrs6[0]
        );
    }
    let per_container = if dual { 2 } else { 1 };
    assert!(
        a.ping(names[0], &addrs[1]),
        "{} cannot reach {} at {}",
        names[0],
        names[1],
        addrs[1]
    );
    assert!(
        b.ping(names[1], &addrs[0]),
        "{} cannot reach {} at {}",
        names[1],
        names[0],
        addrs[0]
    );

    for ((podman, store), name) in runtimes.iter().zip(names) {
        assert_eq!(
            reservations(store).len(),
            per_container,
            "one address per family reserved for {name}"
        );
        podman.rm(name);
        assert!(
            reservations(store).is_empty(),
            "addresses left reserved after podman rm {name}: {:?}",
            reservations(store)
        );
    }
}
