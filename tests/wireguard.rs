//! The wireguard backend in a lab of real hosts (namespaces, a real etcd, the userspace
//! WireGuard these kernels fall back to): containers reach each other encrypted, and the
//! underlay carries nothing but WireGuard's UDP between hosts.

use std::net::Ipv4Addr;
use std::time::Duration;

use testkit::capture::{self, Capture};
use testkit::lab::{assert_mesh, udp_exchange, Host};
use testkit::wait::wait_for;
use testkit::wg::{exec, wait_wg_converged, wg_lab, wg_lab_dual, WG_CONFIG, WG_DEVICE, WG_DEVICE6};

/// Sends `payload` by UDP from `from`'s container address to `to`'s and says whether it
/// arrived intact (within 3 s, resending).
fn udp_crosses(from: &Host, to: &Host, payload: &[u8]) -> bool {
    let (src, dst) = (from.container_ip().into(), to.container_ip().into());
    udp_exchange(&from.ns, src, &to.ns, dst, payload).is_some_and(|(_, got)| got == payload)
}

fn host_ip(h: &Host) -> Ipv4Addr {
    h.ip.parse().unwrap()
}

#[test]
fn three_hosts_reach_each_other_and_the_underlay_carries_only_wireguard() {
    let lab = wg_lab(3, WG_CONFIG, &[]);
    assert_mesh(&lab.hosts);

    // The peer probes travel the tunnel too (to each peer's device address) and see every
    // peer reachable.
    for h in &lab.hosts {
        let all = wait_for(Duration::from_secs(10), || {
            (h.metric("weft_peers_reachable") == Some(2.0)).then_some(())
        });
        assert!(all.is_some(), "{}: {:?}", h.ip, h.http_get("/peers"));
    }
    // The probes' traffic made every pair shake hands: /metrics has each peer's handshake
    // age, named by its subnet, fresh, and the host's oldest (read back every --tunnel-poll).
    for h in &lab.hosts {
        let peers: Vec<String> = (lab.hosts.iter())
            .filter(|p| p.ip != h.ip)
            .map(|p| {
                format!(
                    "weft_wireguard_handshake_age_seconds{{peer=\"{}\"}}",
                    p.subnet()
                )
            })
            .collect();
        let fresh = |body: &str, series: &str| {
            testkit::http::metric(body, series).is_some_and(|age| age < 30.0)
        };
        let seen = wait_for(Duration::from_secs(5), || {
            let body = h.http_get("/metrics").1;
            (peers.iter().all(|s| fresh(&body, s))
                && fresh(&body, "weft_wireguard_handshake_age_max_seconds"))
            .then_some(())
        });
        let body = h.http_get("/metrics").1;
        assert!(seen.is_some(), "{}: no fresh {peers:?}:\n{body}", h.ip);
    }

    let capture = Capture::start(&lab.underlay, "");
    let marker = b"weft-marker-3f9c1d2e-never-in-clear";
    assert!(udp_crosses(&lab.hosts[0], &lab.hosts[1], marker));
    assert!(udp_crosses(&lab.hosts[2], &lab.hosts[0], marker));
    for a in &lab.hosts {
        for b in &lab.hosts {
            if a.ip != b.ip {
                assert!(a.ping_from_container(b.container_ip()));
            }
        }
    }
    let frames = capture.finish();
    // Reading the peers back every second finds them as set: nothing to repair.
    for h in &lab.hosts {
        assert_eq!(
            h.metric("weft_drift_repairs_total"),
            Some(0.0),
            "{}",
            h.logs()
        );
    }
    assert!(
        !frames.iter().any(|f| capture::contains(f, marker)),
        "the marker crossed the underlay in clear"
    );
    let hosts: Vec<Ipv4Addr> = lab.hosts.iter().map(host_ip).collect();
    let between: Vec<_> = frames
        .iter()
        .filter_map(|f| capture::ipv4(f))
        .filter(|p| hosts.contains(&p.src) && hosts.contains(&p.dst))
        .collect();
    assert!(
        between.len() >= 12,
        "only {} packets between hosts were seen",
        between.len()
    );
    for p in &between {
        assert_eq!(
            p.ports,
            Some((51820, 51820)),
            "a packet between hosts that is not WireGuard's: {p:?}"
        );
    }
}

#[test]
fn weftctl_shows_public_keys_and_check_finds_a_missing_peer() {
    let mut lab = wg_lab(2, WG_CONFIG, &[]);
    let key1 = lab.hosts[0].wg_public_key(WG_DEVICE);
    let key2 = lab.hosts[1].wg_public_key(WG_DEVICE);

    let out = lab.hosts[0].weftctl(&["leases"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    eprintln!("weftctl leases:\n{table}");
    assert!(
        table.lines().next().unwrap().contains("PUBLIC KEY"),
        "{table}"
    );
    for k in [&key1, &key2] {
        assert!(
            table.contains(&format!("{}…", &k[..10])),
            "{k} not in\n{table}"
        );
    }
    let out = lab.hosts[0].weftctl(&["leases", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["public_key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&key1.as_str()) && keys.contains(&key2.as_str()),
        "{json}"
    );

    let subnet_file = lab.hosts[0].subnet_file.display().to_string();
    let check = lab.hosts[0].weftctl(&["check", "--iface", "eth0", "--subnet-file", &subnet_file]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // weftd would mend it within a second: stop it (the device and its peers stay) first.
    lab.hosts[0].stop();
    lab.hosts[0].wg(&["set", WG_DEVICE, "peer", &key2, "remove"]);
    assert!(!lab.hosts[0].ping_from_container(lab.hosts[1].container_ip()));
    let check = lab.hosts[0].weftctl(&["check", "--iface", "eth0", "--subnet-file", &subnet_file]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "missing or wrong on {WG_DEVICE}: WireGuard peer {key2}"
        )),
        "{said}"
    );
    lab.hosts[0].start(&[]);
    lab.hosts[0].wait_ready();
    wait_wg_converged(&lab.hosts);
    assert!(lab.hosts[0].ping_from_container(lab.hosts[1].container_ip()));
}

/// A dual-stack WireGuard config in `mode`.
fn dual_config(mode: &str) -> String {
    format!(
        r#"{{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#
    )
}

#[test]
fn one_tunnel_modes_carry_both_families_over_the_chosen_one() {
    // 198.18.0.0/15 is not private, so auto takes IPv4 here, as flannel's choice would.
    for (mode, underlay6) in [("ipv6", true), ("auto", false)] {
        let lab = wg_lab_dual(2, &dual_config(mode));
        let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
        let shown = exec(a, &["ip", "link", "show", WG_DEVICE6]);
        assert!(!shown.status.success(), "{mode}: a second device exists");
        let peers = a.wg_peers(WG_DEVICE);
        assert_eq!(peers.len(), 1, "{mode}: {peers:?}");
        assert_eq!(
            peers[0].allowed_ips,
            format!("{},{}", b.subnet(), b.subnet6()),
            "{mode}"
        );
        let endpoint = if underlay6 {
            format!("[{}]:51820", b.ip6())
        } else {
            format!("{}:51820", b.ip)
        };
        assert_eq!(peers[0].endpoint, endpoint, "{mode}");
        let first = wait_for(Duration::from_secs(5), || {
            a.ping_from_container(b.container_ip()).then_some(())
        });
        assert!(
            first.is_some(),
            "{mode}: IPv4\n{}\n{}",
            a.wg(&["show"]),
            a.logs()
        );
        assert!(b.ping_from_container(a.container_ip()), "{mode}: IPv4 back");
        assert!(a.ping6_from_container(b.container_ip6()), "{mode}: IPv6");
        assert!(
            b.ping6_from_container(a.container_ip6()),
            "{mode}: IPv6 back"
        );
        // Both parts of the lease name the port the one device listens on.
        let key = testkit::leases::key(a.subnet(), Some(a.subnet6()));
        let lease: serde_json::Value = serde_json::from_str(&lab.etcd.get(&key).unwrap()).unwrap();
        assert_eq!(lease["BackendData"]["Port"], 51820, "{lease}");
        assert_eq!(lease["BackendV6Data"]["Port"], 51820, "{lease}");
        assert_eq!(
            lease["BackendData"]["PublicKey"],
            lease["BackendV6Data"]["PublicKey"]
        );
    }
}
