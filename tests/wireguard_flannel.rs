//! weft's wireguard backend beside flanneld's: hosts whose WireGuard devices, keys and leases
//! were made by hand exactly as flanneld's wireguard backend makes them (wireguard-go, `wg`,
//! iproute2, the lease in flannel's bytes on a TTL etcd lease) and weft hosts reach each other
//! on IPv4 and, in `separate` mode, IPv6; and a live flannel node moves to weftd without
//! losing a packet, keeping its key, subnet, device and wireguard-go.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use testkit::lab::{Host, Lab};
use testkit::leases;
use testkit::wait::{pace_until, wait_for};
use testkit::wg::{
    exec, exec_ok, ifindex, say_mode, start_wireguard, wireguard_go_pids, WgDumpPeer,
    FIRST_CONTACT, WG_CONFIG, WG_DEVICE, WG_DEVICE6,
};

/// A dual-stack wireguard network, `separate` mode by default.
const WG_DUAL_CONFIG: &str = r#"{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"wireguard"}}"#;
const NETWORK6: &str = "2001:db8:100::/48";
/// flanneld's key file (inside each WireGuard host's own mount namespace).
const FLANNEL_KEY: &str = "/run/flannel/wgkey";

/// A key pair made by `wg genkey` / `wg pubkey`, as flanneld's first start does: (private,
/// public), base64.
fn genkey(host: &Host) -> (String, String) {
    let private = exec_ok(host, &["wg", "genkey"]).trim().to_string();
    let public = exec_ok(
        host,
        &["sh", "-c", &format!("printf %s '{private}' | wg pubkey")],
    )
    .trim()
    .to_string();
    (private, public)
}

/// Writes `private` to flannel's key file as flanneld does: base64, no newline, mode 0400.
fn write_flannel_key(host: &Host, private: &str) {
    exec_ok(
        host,
        &[
            "sh",
            "-c",
            &format!("umask 377; printf %s '{private}' > {FLANNEL_KEY}"),
        ],
    );
}

/// Makes `dev` as flanneld's wireguard backend does: wireguard-go (the kernel has no
/// WireGuard), the key from flannel's key file, `port`, the address `addr` (`<subnet ip>/32`
/// or `/128`), MTU external − 80, up, and one route for the whole `network` on it, scope link.
fn make_flannel_wg(host: &Host, dev: &str, port: u16, addr: &str, network: &str) {
    let out = exec(host, &["wireguard-go", dev]);
    assert!(
        out.status.success(),
        "wireguard-go {dev} on {}: {} (apt-get install wireguard-go)",
        host.ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let up = wait_for(Duration::from_secs(5), || {
        exec(host, &["wg", "show", dev])
            .status
            .success()
            .then_some(())
    });
    assert!(up.is_some(), "wireguard-go made no {dev} within 5 s");
    host.wg(&[
        "set",
        dev,
        "private-key",
        FLANNEL_KEY,
        "listen-port",
        &port.to_string(),
    ]);
    let v6 = addr.contains(':');
    let family = if v6 { "-6" } else { "-4" };
    let mut add = vec![family, "addr", "add", addr, "dev", dev];
    if v6 {
        add.push("nodad");
    }
    host.ns.ip(&add);
    host.ns.ip(&["link", "set", dev, "mtu", "1420", "up"]);
    host.ns
        .ip(&[family, "route", "add", network, "dev", dev, "scope", "link"]);
}

/// What flanneld programs on `dev` for one remote lease.
fn flannel_add_peer(host: &Host, dev: &str, public_key: &str, endpoint: &str, allowed: &str) {
    host.wg(&[
        "set",
        dev,
        "peer",
        public_key,
        "endpoint",
        endpoint,
        "allowed-ips",
        allowed,
    ]);
}

/// subnet.env as flanneld writes it for a WireGuard host (MTU 1500 − 80).
fn write_flannel_subnet_env(host: &Host, s4: Ipv4Net, s6: Option<Ipv6Net>) {
    let mut text = format!(
        "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET={}/{}\n",
        Ipv4Addr::from(u32::from(s4.network()) + 1),
        s4.prefix_len()
    );
    if let Some(s6) = s6 {
        text.push_str(&format!(
            "FLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET={}/{}\n",
            Ipv6Addr::from(u128::from(s6.network()) + 1),
            s6.prefix_len()
        ));
    }
    text.push_str("FLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n");
    std::fs::create_dir_all(host.subnet_file.parent().unwrap()).unwrap();
    std::fs::write(&host.subnet_file, text).unwrap();
}

/// Waits (10 s) until `dev` on `host` has a peer whose allowed IPs are `allowed`.
fn wait_peer(host: &Host, dev: &str, allowed: &str) -> WgDumpPeer {
    let found = wait_for(Duration::from_secs(10), || {
        host.wg_peers(dev)
            .into_iter()
            .find(|p| p.allowed_ips == allowed)
    });
    found.unwrap_or_else(|| {
        panic!(
            "{} has no peer for {allowed} on {dev} after 10 s: {:?}\n{}",
            host.ns.name(),
            host.wg_peers(dev),
            host.logs()
        )
    })
}

/// One ping from `src` (an address of `host`) to `dst`, retried for FIRST_CONTACT (the first
/// packet waits for WireGuard's handshake, which the weft end's first probe may cross).
fn reaches(host: &Host, src: IpAddr, dst: IpAddr) -> bool {
    let (src, dst) = (src.to_string(), dst.to_string());
    wait_for(FIRST_CONTACT, || {
        host.ns
            .exec(&["ping", "-c1", "-W1", "-I", &src, &dst])
            .status
            .success()
            .then_some(())
    })
    .is_some()
}

fn assert_reach_both_ways(a: &Host, a_src: IpAddr, b: &Host, b_src: IpAddr) {
    assert!(
        reaches(a, a_src, b_src),
        "{} ({a_src}) cannot reach {b_src}:\n{}",
        a.ns.name(),
        a.logs()
    );
    assert!(
        reaches(b, b_src, a_src),
        "{} ({b_src}) cannot reach {a_src}:\n{}",
        b.ns.name(),
        b.logs()
    );
}

/// A lease value read as JSON.
fn lease_json(lab: &Lab, key: &str) -> serde_json::Value {
    let text = lab
        .etcd
        .get(key)
        .unwrap_or_else(|| panic!("no lease at {key}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("lease {key} ({e}): {text}"))
}

/// Makes `fl` an IPv4 flannel WireGuard host on `subnet` as flanneld leaves one (key file,
/// `flannel-wg` on 51820 with its address and the network's route, subnet.env, a container
/// address); gives its private and public keys. The peers and the lease are the caller's.
fn flannel_v4_host(fl: &Host, subnet: Ipv4Net) -> (String, String) {
    let (private, public) = genkey(fl);
    write_flannel_key(fl, &private);
    make_flannel_wg(
        fl,
        WG_DEVICE,
        51820,
        &format!("{}/32", subnet.network()),
        "198.19.0.0/16",
    );
    write_flannel_subnet_env(fl, subnet, None);
    fl.add_container();
    (private, public)
}

/// A lab of `n` WireGuard hosts (own mount namespaces) of which the first `weft` run weftd,
/// ready, with their containers.
fn lab_of(n: usize, weft: usize, config: &str, dual: bool) -> Lab {
    say_mode();
    let mut lab = if dual {
        Lab::dual(n, config)
    } else {
        Lab::new(n, config)
    };
    start_wireguard(&mut lab, weft, &[]);
    lab
}

#[test]
fn weft_and_a_flannel_wireguard_host_reach_each_other() {
    let lab = lab_of(4, 2, WG_CONFIG, false);
    // Host 3 runs today's flannel (Port in BackendData); host 4 an older one (no Port).
    let flannel: [(usize, Ipv4Net, bool); 2] = [
        (2, "198.19.200.0/24".parse().unwrap(), true),
        (3, "198.19.201.0/24".parse().unwrap(), false),
    ];
    let mut keys = Vec::new();
    for &(i, s4, with_port) in &flannel {
        let fl = &lab.hosts[i];
        let (_, public) = flannel_v4_host(fl, s4);
        let data = if with_port {
            format!(r#"{{"PublicKey":"{public}","Port":51820}}"#)
        } else {
            format!(r#"{{"PublicKey":"{public}"}}"#)
        };
        let value = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{data}}}"#,
            fl.ip
        );
        let key = leases::key(s4, None);
        lab.etcd.put_on_lease(&key, &value, 86400);
        // flanneld programs the weft hosts from their leases.
        for h in &lab.hosts[..2] {
            let v = lab.lease_value(h.subnet()).expect("the weft host's lease");
            assert_eq!(v["BackendType"], "wireguard", "{v}");
            let pk = v["BackendData"]["PublicKey"].as_str().unwrap();
            assert_eq!(pk, h.wg_public_key(WG_DEVICE), "{v}");
            assert_eq!(v["BackendData"]["Port"], 51820, "{v}");
            flannel_add_peer(
                fl,
                WG_DEVICE,
                pk,
                &format!("{}:51820", v["PublicIP"].as_str().unwrap()),
                &h.subnet().to_string(),
            );
        }
        keys.push(public);
    }

    // Every weft host holds both flannel hosts as peers, each at its public IP on 51820 (the
    // older one's lease says no port: the receiver's own, 51820).
    for h in &lab.hosts[..2] {
        for (&(i, s4, _), public) in flannel.iter().zip(&keys) {
            let p = wait_peer(h, WG_DEVICE, &s4.to_string());
            assert_eq!(
                (p.public_key.as_str(), p.endpoint.as_str()),
                (
                    public.as_str(),
                    format!("{}:51820", lab.hosts[i].ip).as_str()
                ),
                "{p:?}"
            );
            assert_eq!((p.psk.as_str(), p.keepalive.as_str()), ("(none)", "off"));
        }
        let n = h.wg_peers(WG_DEVICE).len();
        assert_eq!(n, 3, "{:?}", h.wg_peers(WG_DEVICE));
    }

    // Containers reach each other both ways, flannel host <-> weft host.
    for &(i, _, _) in &flannel {
        let fl = &lab.hosts[i];
        for h in &lab.hosts[..2] {
            assert_reach_both_ways(fl, fl.container_ip().into(), h, h.container_ip().into());
        }
    }
    // And the weft hosts still reach each other.
    assert_reach_both_ways(
        &lab.hosts[0],
        lab.hosts[0].container_ip().into(),
        &lab.hosts[1],
        lab.hosts[1].container_ip().into(),
    );
}

#[test]
fn dual_stack_separate_mode_with_flannel() {
    let lab = lab_of(3, 2, WG_DUAL_CONFIG, true);
    let fl = &lab.hosts[2];
    let (s4, s6): (Ipv4Net, Ipv6Net) = (
        "198.19.200.0/24".parse().unwrap(),
        "2001:db8:100:c8::/64".parse().unwrap(),
    );
    // flanneld in separate mode: two devices, one key (the key file is read for both).
    let (_, public) = flannel_v4_host(fl, s4);
    make_flannel_wg(
        fl,
        WG_DEVICE6,
        51821,
        &format!("{}/128", s6.network()),
        NETWORK6,
    );
    assert_eq!(fl.wg(&["show", WG_DEVICE6, "listen-port"]).trim(), "51821");
    write_flannel_subnet_env(fl, s4, Some(s6));
    fl.add_container6();
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}},"BackendV6Data":{{"PublicKey":"{public}","Port":51821}}}}"#,
        fl.ip,
        fl.ip6()
    );
    let key = leases::key(s4, Some(s6));
    assert!(
        key.ends_with("/198.19.200.0-24&2001:db8:100:c8::-64"),
        "{key}"
    );
    lab.etcd.put_on_lease(&key, &value, 86400);

    // weft's leases as flannel reads them; flanneld programs both families from them.
    for h in &lab.hosts[..2] {
        let hkey = leases::key(h.subnet(), Some(h.subnet6()));
        let v = lease_json(&lab, &hkey);
        let pk = h.wg_public_key(WG_DEVICE);
        assert_eq!(h.wg_public_key(WG_DEVICE6), pk);
        assert_eq!(h.wg(&["show", WG_DEVICE6, "listen-port"]).trim(), "51821");
        let addrs = h.ns.ip(&["-6", "addr", "show", "dev", WG_DEVICE6]);
        assert!(
            addrs.contains(&format!("{}/128", h.subnet6().network())),
            "{addrs}"
        );
        let route = h.ns.ip(&["-6", "route", "show", NETWORK6]);
        assert!(route.contains(&format!("dev {WG_DEVICE6}")), "{route}");
        assert_eq!(v["PublicIPv6"], h.ip6().to_string(), "{v}");
        assert_eq!(v["BackendData"]["PublicKey"], pk.as_str(), "{v}");
        assert_eq!(v["BackendData"]["Port"], 51820, "{v}");
        assert_eq!(v["BackendV6Data"]["PublicKey"], pk.as_str(), "{v}");
        assert_eq!(v["BackendV6Data"]["Port"], 51821, "{v}");
        flannel_add_peer(
            fl,
            WG_DEVICE,
            &pk,
            &format!("{}:51820", h.ip),
            &h.subnet().to_string(),
        );
        flannel_add_peer(
            fl,
            WG_DEVICE6,
            &pk,
            &format!("[{}]:51821", h.ip6()),
            &h.subnet6().to_string(),
        );
    }

    for h in &lab.hosts[..2] {
        let p4 = wait_peer(h, WG_DEVICE, &s4.to_string());
        assert_eq!(
            (p4.public_key.as_str(), p4.endpoint.as_str()),
            (public.as_str(), "198.18.0.3:51820"),
            "{p4:?}"
        );
        let p6 = wait_peer(h, WG_DEVICE6, &s6.to_string());
        assert_eq!(
            (p6.public_key.as_str(), p6.endpoint.as_str()),
            (public.as_str(), format!("[{}]:51821", fl.ip6()).as_str()),
            "{p6:?}"
        );
        // Each family's peers live on its own device only.
        assert!(
            h.wg_peers(WG_DEVICE)
                .iter()
                .all(|p| !p.allowed_ips.contains(':')),
            "{:?}",
            h.wg_peers(WG_DEVICE)
        );
        assert!(
            h.wg_peers(WG_DEVICE6)
                .iter()
                .all(|p| p.allowed_ips.contains(':')),
            "{:?}",
            h.wg_peers(WG_DEVICE6)
        );
    }

    for h in &lab.hosts[..2] {
        assert_reach_both_ways(fl, fl.container_ip().into(), h, h.container_ip().into());
        assert_reach_both_ways(fl, fl.container_ip6().into(), h, h.container_ip6().into());
    }
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    assert_reach_both_ways(a, a.container_ip6().into(), b, b.container_ip6().into());
}

#[test]
fn a_node_moves_from_flannel_wireguard_to_weftd_without_loss() {
    let mut lab = lab_of(3, 2, WG_CONFIG, false);
    // A subnet neither weft host took (they choose at random).
    let s3: Ipv4Net = (50..60)
        .map(|i| format!("198.19.{i}.0/24").parse().unwrap())
        .find(|s| lab.hosts[..2].iter().all(|h| h.subnet() != *s))
        .unwrap();
    let key = leases::key(s3, None);

    // Host 3 exactly as flanneld's wireguard backend leaves it.
    let (private, public, flannel_lease) = {
        let fl = &lab.hosts[2];
        let (private, public) = flannel_v4_host(fl, s3);
        let value = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}}}}"#,
            fl.ip
        );
        let lease_id = lab.etcd.put_on_lease(&key, &value, 86400);
        for h in &lab.hosts[..2] {
            let v = lab.lease_value(h.subnet()).expect("the weft host's lease");
            flannel_add_peer(
                fl,
                WG_DEVICE,
                v["BackendData"]["PublicKey"].as_str().unwrap(),
                &format!("{}:51820", h.ip),
                &h.subnet().to_string(),
            );
        }
        (private, public, lease_id)
    };
    for h in &lab.hosts[..2] {
        wait_peer(h, WG_DEVICE, &s3.to_string());
    }
    let c3 = lab.hosts[2].container_ip();
    for h in &lab.hosts[..2] {
        assert_reach_both_ways(&lab.hosts[2], c3.into(), h, h.container_ip().into());
    }
    let fl = &lab.hosts[2];
    let index = ifindex(fl, WG_DEVICE);
    let wg_go = wireguard_go_pids(fl);
    assert_eq!(wg_go.len(), 1, "one wireguard-go on the flannel host");
    let key_file = fl.wg_key_file();
    assert!(
        !key_file.exists(),
        "weft's key file must not exist before the move"
    );
    let peers_before = fl.wg_peers(WG_DEVICE);

    // The move, under pings every 10 ms both ways between host 3 and the others.
    let pingers = vec![
        (
            "host 3 -> host 1",
            fl.start_pinging(lab.hosts[0].container_ip()),
        ),
        (
            "host 3 -> host 2",
            fl.start_pinging(lab.hosts[1].container_ip()),
        ),
        ("host 1 -> host 3", lab.hosts[0].start_pinging(c3)),
        ("host 2 -> host 3", lab.hosts[1].start_pinging(c3)),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let fl = &mut lab.hosts[2];
    fl.start(&[]);
    let env = fl.wait_ready();
    let ready = Instant::now();
    // A full pass begun after the start has looked at the device, its peers and
    // wireguard-go, all adopted below; and the pings run on for 3 s after the move.
    fl.wait_next_reconcile("after the move");
    pace_until(ready + Duration::from_secs(3));
    for (what, p) in pingers {
        p.finish().assert_no_loss(
            &format!("{what} while host 3 moved from flanneld to weftd"),
            150,
        );
    }

    let fl = &lab.hosts[2];
    assert_eq!(env.subnet_network().unwrap(), s3, "the subnet is kept");
    assert_eq!(
        fl.wg_public_key(WG_DEVICE),
        public,
        "the public key is kept"
    );
    let v = lease_json(&lab, &key);
    assert_eq!(v["BackendData"]["PublicKey"], public.as_str(), "{v}");
    assert_eq!(v["BackendData"]["Port"], 51820, "{v}");
    assert_eq!(v["PublicIP"], fl.ip.as_str(), "{v}");
    assert!(
        lab.etcd.key_lease(&key).is_some_and(|id| id != 0),
        "the lease is still on an etcd lease (it expires if the host dies)"
    );
    let leases = lab.etcd.etcdctl_ok(&["lease", "list"]);
    assert!(
        !leases.contains(&flannel_lease),
        "flannel's etcd lease {flannel_lease} is still there: {leases}"
    );
    assert_eq!(
        ifindex(fl, WG_DEVICE),
        index,
        "the device was recreated:\n{}",
        fl.logs()
    );
    assert_eq!(
        wireguard_go_pids(fl),
        wg_go,
        "wireguard-go was replaced:\n{}",
        fl.logs()
    );
    assert_eq!(
        fl.wg_peers(WG_DEVICE),
        peers_before,
        "the peers flannel made changed"
    );
    let mode = std::fs::metadata(&key_file)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", key_file.display(), fl.logs()))
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o400, "mode of {}", key_file.display());
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        private,
        "weft's key file holds flannel's key, base64 without newline"
    );
    // The other hosts still hold host 3 at the same key and endpoint.
    for h in &lab.hosts[..2] {
        let p = wait_peer(h, WG_DEVICE, &s3.to_string());
        assert_eq!(
            (p.public_key.as_str(), p.endpoint.as_str()),
            (public.as_str(), "198.18.0.3:51820")
        );
    }
}
