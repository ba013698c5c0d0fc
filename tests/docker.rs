//! Docker engine hosts on the overlay: two hosts run weftd and Debian's dockerd configured from
//! `weftctl docker-opts` (`--bip`, `--mtu`, `--ip-masq`), and containers started with
//! `docker run` reach each other. With dockerd's iptables on, dockerd turns forwarding on and
//! sets iptables' FORWARD policy to DROP; the overlay's traffic must pass whichever of weftd
//! and dockerd started first, and across restarts of either.

use std::net::Ipv4Addr;
use std::time::Duration;

use testkit::bins;
use testkit::docker::{docker_opts, Dockerd};
use testkit::lab::{Host, Lab, VXLAN_CONFIG};
use testkit::podman::Podman;
use testkit::wait::wait_for;

fn dockerd_for(host: &Host, iptables: bool) -> Dockerd {
    Dockerd::start(
        &host.ns,
        docker_opts(&bins::weftctl(), &host.subnet_file),
        iptables,
    )
}

/// iptables' FORWARD policy in a host, read back from `iptables -S`.
fn forward_policy(host: &Host) -> String {
    let out = host.ns.exec(&["iptables", "-S", "FORWARD"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("-P FORWARD "))
        .unwrap_or("none")
        .to_string()
}

/// Packets from `src` to `dst` that crossed `host`'s forward hook, counted by a table of the
/// test's own: proof of the source address the receiving host saw.
fn count_forwarded(host: &Host) -> u64 {
    let out = host
        .ns
        .exec(&["nft", "-j", "list", "table", "ip", "weftprobe"]);
    let listing: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

fn probe_forwarded(host: &Host, src: Ipv4Addr, dst: Ipv4Addr) {
    let (src, dst) = (src.to_string(), dst.to_string());
    for cmd in [
        vec!["add", "table", "ip", "weftprobe"],
        vec![
            "add",
            "chain",
            "ip",
            "weftprobe",
            "seen",
            "{ type filter hook forward priority -10; }",
        ],
        vec![
            "add",
            "rule",
            "ip",
            "weftprobe",
            "seen",
            "ip",
            "saddr",
            &src,
            "ip",
            "daddr",
            &dst,
            "counter",
        ],
    ] {
        let mut args = vec!["nft"];
        args.extend(cmd);
        let out = host.ns.exec(&args);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn docker_containers_cross_the_overlay_whichever_of_weftd_and_dockerd_starts_first() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    for h in &lab.hosts {
        h.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    }
    // weft masquerades what leaves the overlay (--ip-masq), so dockerd is told not to
    // (--ip-masq=false): inside the overlay containers keep their addresses.
    let masq = ["--ip-masq"];
    // Host 1: weftd first, then dockerd (which finds forwarding off and sets FORWARD to DROP).
    lab.hosts[0].start(&masq);
    lab.hosts[0].wait_ready();
    let d1 = dockerd_for(&lab.hosts[0], true);
    // Host 2: dockerd first, as after a boot where dockerd comes up before weftd: weftd has
    // written subnet.env once, then stops; its iptables rules are gone and forwarding is off.
    lab.hosts[1].start(&masq);
    lab.hosts[1].wait_ready();
    lab.hosts[1].stop();
    lab.hosts[1].ns.exec(&["iptables", "-F", "FORWARD"]);
    lab.hosts[1]
        .ns
        .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let mut d2 = dockerd_for(&lab.hosts[1], true);
    lab.hosts[1].start(&masq);
    lab.hosts[1].wait_ready();
    for h in &lab.hosts {
        assert_eq!(
            forward_policy(h),
            "DROP",
            "dockerd did not set FORWARD to DROP in {}",
            h.ns.name()
        );
    }

    let a = d1.run_container("ctr-a");
    let b = d2.run_container("ctr-b");
    assert!(
        lab.hosts[0].subnet().contains(&a),
        "{a} is not in host 1's subnet"
    );
    assert!(
        lab.hosts[1].subnet().contains(&b),
        "{b} is not in host 2's subnet"
    );
    probe_forwarded(&lab.hosts[1], a, b);
    let reached = wait_for(Duration::from_secs(10), || {
        d1.ping_once("ctr-a", b).then_some(())
    });
    assert!(
        reached.is_some(),
        "a ({a}) cannot reach b ({b}):\n{}",
        lab.hosts[0].logs()
    );
    assert!(d2.ping_once("ctr-b", a), "b ({b}) cannot reach a ({a})");
    // The receiver saw the container's own address: no NAT inside the overlay.
    assert!(
        count_forwarded(&lab.hosts[1]) > 0,
        "host 2 saw no packet from {a} to {b}"
    );

    // weftd restarted under 10 ms pings between the containers: nothing lost.
    let there = d1.start_pinging("ctr-a", b);
    let back = d2.start_pinging("ctr-b", a);
    std::thread::sleep(Duration::from_millis(500));
    lab.hosts[0].stop();
    lab.hosts[0].start(&masq);
    lab.hosts[0].wait_ready();
    std::thread::sleep(Duration::from_millis(500));
    there
        .finish()
        .assert_no_loss("docker a -> b across a weftd restart", 60);
    back.finish()
        .assert_no_loss("docker b -> a across a weftd restart", 60);

    // dockerd restarted: the container comes back in the same subnet and is reached again.
    d2.stop();
    d2.start_again();
    let back_up = wait_for(Duration::from_secs(20), || {
        let out = d2.docker(&["inspect", "-f", "{{.State.Running}}", "ctr-b"]);
        (String::from_utf8_lossy(&out.stdout).trim() == "true").then_some(())
    });
    assert!(
        back_up.is_some(),
        "container b did not come back:\n{}",
        d2.log()
    );
    let b2 = d2.address("ctr-b");
    assert!(
        lab.hosts[1].subnet().contains(&b2),
        "{b2} is not in host 2's subnet after the restart"
    );
    let reached = wait_for(Duration::from_secs(10), || {
        d1.ping_once("ctr-a", b2).then_some(())
    });
    assert!(
        reached.is_some(),
        "a cannot reach b ({b2}) after dockerd restarted"
    );
    assert_eq!(forward_policy(&lab.hosts[1]), "DROP");
}

#[test]
fn docker_with_its_iptables_off_crosses_the_overlay_and_meets_podman() {
    let mut lab = Lab::new(3, VXLAN_CONFIG);
    lab.start_all(&[]);
    let d: Vec<Dockerd> = lab.hosts[..2]
        .iter()
        .map(|h| dockerd_for(h, false))
        .collect();
    let a = d[0].run_container("ctr-a");
    let b = d[1].run_container("ctr-b");
    let reached = wait_for(Duration::from_secs(10), || {
        d[0].ping_once("ctr-a", b).then_some(())
    });
    assert!(reached.is_some(), "a ({a}) cannot reach b ({b})");
    assert!(d[1].ping_once("ctr-b", a), "b ({b}) cannot reach a ({a})");

    // Host 3 runs podman through the weft plugin: its container and Docker's share the network.
    let h3 = &lab.hosts[2];
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": testkit::cmd::unique("net"),
        "plugins": [{
            "type": "weft",
            "subnetFile": h3.subnet_file,
            "dataDir": lab.dir.path().join("h3-ipam"),
        }],
    });
    let podman = Podman::new(&h3.ns, &bins::plugin(), &conflist);
    podman.start("weft-pod");
    let p = podman.address("weft-pod");
    assert!(
        podman.ping("weft-pod", &a.to_string()),
        "podman's container cannot reach docker's {a}"
    );
    let p: Ipv4Addr = p.parse().expect("podman container address");
    assert!(
        d[0].ping_once("ctr-a", p),
        "docker's container cannot reach podman's {p}"
    );
    podman.rm("weft-pod");

    // The lease lost (revoked by hand): weftd takes the same subnet back, so docker0 and the
    // containers stay right and traffic resumes without touching dockerd.
    let subnet = lab.hosts[1].subnet();
    lab.revoke_lease(subnet);
    let back = wait_for(Duration::from_secs(10), || {
        (lab.lease_value(subnet).is_some() && d[0].ping_once("ctr-a", b)).then_some(())
    });
    assert!(
        back.is_some(),
        "traffic to {b} did not resume after host 2's lease was revoked"
    );
    assert_eq!(
        lab.hosts[1].subnet(),
        subnet,
        "host 2 came back with another subnet"
    );

    // weftctl check is content with docker0 holding the subnet's gateway, and names it when
    // it holds something else (dockerd started without weft's options).
    let host = &lab.hosts[0];
    let check = || host.weftctl_check(&[]);
    let out = check();
    assert!(
        out.status.success(),
        "weftctl check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    host.ns.ip(&["addr", "flush", "dev", "docker0"]);
    host.ns
        .ip(&["addr", "add", "198.19.250.1/24", "dev", "docker0"]);
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "weftctl check after docker0 changed: {text}"
    );
    assert!(
        text.contains("docker0 has 198.19.250.1/24, not this host's subnet gateway"),
        "{text}"
    );
}
