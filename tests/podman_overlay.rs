//! A real runtime on a real overlay: two hosts in namespaces run weftd, podman on each host
//! starts a container through the weft plugin, and the containers reach each other across
//! VXLAN. After `podman rm`, no address is left reserved on either host.

mod common;

use std::path::{Path, PathBuf};

use common::lab::{Lab, VXLAN_CONFIG};
use common::podman::Podman;
use serde_json::json;

/// The plugin binary, built next to weftd by `cargo build --workspace` (scripts/test does).
fn plugin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_weftd")).with_file_name("weft");
    assert!(
        path.exists(),
        "{} is missing: build the plugin first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Files in the plugin's store whose names are addresses: host-local's reservations.
fn reservations(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn podman_containers_on_two_hosts_reach_each_other_over_the_overlay() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
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
            Podman::new(&host.ns, &plugin(), &conflist),
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
            1,
            "one address reserved for {name}"
        );
        podman.rm(name);
        assert!(
            reservations(store).is_empty(),
            "addresses left reserved after podman rm {name}: {:?}",
            reservations(store)
        );
    }
}
