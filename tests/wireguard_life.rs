//! The wireguard backend's life cycle across hosts in network namespaces, against a real etcd
//! and the userspace WireGuard these kernels fall back to: a restart or a crash of weftd costs
//! no packet and leaves wireguard-go and its device alone, peers and routes changed by hand
//! are mended within seconds, and the MTU, PSK, keepalive, key file and lease are flannel's.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::cmd::with_stdin;
use testkit::lab::{Host, Lab};
use testkit::wait::{pace_until, wait_for};
use testkit::wg::{
    exec, ifindex, wg_lab, wireguard_go_pids, WgDumpPeer, FIRST_CONTACT, WG_CONFIG, WG_DEVICE,
};

/// How fast a hand edit of the device's peers or routes must be mended (`--tunnel-poll 1s`).
const REPAIR_BOUND: Duration = Duration::from_secs(3);
/// How fast a deleted device must be back with its peers and carrying traffic.
const DEVICE_BOUND: Duration = Duration::from_secs(10);
/// How long to keep polling past a bound, so a failure says how late it was.
const PATIENCE: Duration = Duration::from_secs(15);

fn assert_pings(from: &Host, to: &Host, what: &str) {
    from.reach_within(to, Duration::from_secs(5), what);
}

/// Waits (FIRST_CONTACT) until every host's container reaches every other's, and says which
/// first contacts were slow: weftd makes crossed handshakes rare (the first probes wait a
/// random moment, keepalives are set by the read-back after a peer is added).
fn wait_mesh(hosts: &[Host]) {
    for a in hosts {
        for b in hosts.iter().filter(|b| b.ip != a.ip) {
            let took = a.reach_within(b, FIRST_CONTACT, "once the lab is ready");
            if took > Duration::from_secs(2) {
                eprintln!(
                    "first contact {} -> {} took {took:?}",
                    a.ns.name(),
                    b.ns.name()
                );
            }
        }
    }
}

/// The one wireguard-go process of a host (the kernel has no WireGuard here).
fn the_wireguard_go(host: &Host) -> i32 {
    let pids = wireguard_go_pids(host);
    assert_eq!(
        pids.len(),
        1,
        "{} runs {} wireguard-go processes: {pids:?}",
        host.ns.name(),
        pids.len()
    );
    pids[0]
}

/// The FLANNEL_MTU line of the host's subnet.env.
fn flannel_mtu(host: &Host) -> String {
    let text = std::fs::read_to_string(&host.subnet_file).expect("reading subnet.env");
    text.lines()
        .find(|l| l.starts_with("FLANNEL_MTU="))
        .unwrap_or_else(|| panic!("no FLANNEL_MTU in subnet.env:\n{text}"))
        .to_string()
}

/// Runs a `wg` subcommand that needs no device (genkey, genpsk, pubkey), feeding `input`.
fn wg_tool(args: &[&str], input: &str) -> String {
    let out = with_stdin(Command::new("wg").args(args), input.as_bytes());
    assert!(
        out.status.success(),
        "wg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lease of a host as etcd holds it, byte for byte.
fn raw_lease(lab: &Lab, host: &Host) -> String {
    let key = testkit::leases::key(host.subnet(), None);
    lab.etcd
        .get(&key)
        .unwrap_or_else(|| panic!("no lease at {key}"))
}

/// What weftd logged after byte `from` of its log.
fn log_since(host: &Host, from: usize) -> String {
    host.logs().get(from..).unwrap_or_default().to_string()
}

/// After a restart: the log says nothing was (re)created or mended, so wireguard-go, the
/// device and its peers were adopted as they were.
fn assert_adopted(host: &Host, log_from: usize, what: &str) {
    let log = log_since(host, log_from);
    assert!(
        log.contains("WireGuard key ready"),
        "{what}: weftd's log since the restart does not show it started:\n{log}"
    );
    let ready = log
        .lines()
        .find(|l| l.contains("device ready") && l.contains(WG_DEVICE))
        .unwrap_or_else(|| panic!("{what}: weftd did not say the device is ready:\n{log}"));
    assert!(
        ready.contains("created=false"),
        "{what}: weftd created the device instead of adopting it: {ready}"
    );
    for bad in [
        "recreated",
        "started wireguard-go",
        "drift repaired",
        "programmed",
        "peer removed",
    ] {
        assert!(
            !log.contains(bad),
            "{what}: weftd's log since the restart says {bad:?}: it did not adopt the device \
             and its peers as they were:\n{log}"
        );
    }
}

/// What host 1's WireGuard side is before weftd goes away, which must all be as it was after.
struct Kept {
    wg_pid: i32,
    index: u32,
    peers: Vec<WgDumpPeer>,
    public: String,
    their_peers: Vec<WgDumpPeer>,
}

impl Kept {
    fn of(lab: &Lab) -> Kept {
        let a = &lab.hosts[0];
        let peers = a.wg_peers(WG_DEVICE);
        assert_eq!(peers.len(), 1, "{peers:?}");
        Kept {
            wg_pid: the_wireguard_go(a),
            index: ifindex(a, WG_DEVICE).expect("host 1 has flannel-wg"),
            peers,
            public: a.wg_public_key(WG_DEVICE),
            their_peers: lab.hosts[1].wg_peers(WG_DEVICE),
        }
    }

    /// wireguard-go, the device, its peers and key on host 1, and host 2's peers.
    fn assert_same(&self, lab: &Lab, what: &str) {
        let a = &lab.hosts[0];
        assert_eq!(
            wireguard_go_pids(a),
            vec![self.wg_pid],
            "{what}: wireguard-go"
        );
        assert_eq!(
            ifindex(a, WG_DEVICE),
            Some(self.index),
            "{what}: the device"
        );
        assert_eq!(a.wg_peers(WG_DEVICE), self.peers, "{what}: host 1's peers");
        assert_eq!(
            a.wg_public_key(WG_DEVICE),
            self.public,
            "{what}: host 1's key"
        );
        assert_eq!(
            lab.hosts[1].wg_peers(WG_DEVICE),
            self.their_peers,
            "{what}: host 2's peers"
        );
    }
}

/// Pings both ways every 10 ms while `down` takes host 1's weftd away, checks that
/// everything is kept while it is gone, starts it again and checks that no ping was lost
/// (at least `min` each way) and that the device was adopted as it was.
fn across(lab: &mut Lab, kept: &Kept, what: &str, min: u64, down: impl FnOnce(&mut Host)) {
    let there = lab.hosts[0].start_pinging(lab.hosts[1].container_ip());
    let back = lab.hosts[1].start_pinging(lab.hosts[0].container_ip());
    std::thread::sleep(Duration::from_millis(500));
    down(&mut lab.hosts[0]);
    for _ in 0..5 {
        kept.assert_same(lab, &format!("while weftd is down ({what})"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = &mut lab.hosts[0];
    let log_from = a.logs().len();
    a.start(&[]);
    a.wait_ready();
    let ready = Instant::now();
    // A full pass begun after the start has looked at the device, its peers and
    // wireguard-go: had weftd meant to make or mend any of them, its log says so by now.
    a.wait_next_reconcile(&format!("after {what}"));
    // The pings keep going a while after the restart, whatever that took.
    pace_until(ready + Duration::from_millis(1500));
    let (there, back) = (there.finish(), back.finish());
    there.assert_no_loss(&format!("host 1 -> host 2 across {what}"), min);
    back.assert_no_loss(&format!("host 2 -> host 1 across {what}"), min);
    eprintln!(
        "{what}: {} + {} pings, none lost",
        there.transmitted, back.transmitted
    );
    kept.assert_same(lab, &format!("after {what}"));
    assert_adopted(&lab.hosts[0], log_from, &format!("after {what}"));
    assert_eq!(lab.hosts[0].http_get("/readyz").0, 200);
}

#[test]
fn restart_and_sigkill_lose_no_packet() {
    let mut lab = wg_lab(2, WG_CONFIG, &[]);
    wait_mesh(&lab.hosts);
    let kept = Kept::of(&lab);
    across(&mut lab, &kept, "weftd's restart", 60, |a| {
        let status = a.stop();
        assert!(
            status.success(),
            "weftd exited with {status}:\n{}",
            a.logs()
        );
    });
    // A crash: nothing runs weftd's shutdown.
    across(&mut lab, &kept, "weftd's SIGKILL and restart", 100, |a| {
        let pid = a.pid().expect("weftd runs") as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        assert!(
            a.wait_exit(Duration::from_secs(5)).is_some(),
            "weftd did not die of SIGKILL"
        );
    });
}

#[test]
fn drift_is_repaired() {
    let lab = wg_lab(2, WG_CONFIG, &["--tunnel-poll", "1s"]);
    wait_mesh(&lab.hosts);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let wanted = a.wg_peers(WG_DEVICE);
    assert_eq!(wanted.len(), 1, "{wanted:?}");
    let peer = wanted[0].clone();
    assert_eq!(peer.endpoint, format!("{}:51820", b.ip));
    assert_eq!(peer.allowed_ips, b.subnet().to_string());
    assert_eq!(peer.public_key, b.wg_public_key(WG_DEVICE));

    // (a) The peer removed by hand.
    a.assert_mends(
        "a removed peer",
        REPAIR_BOUND,
        PATIENCE,
        || {
            a.wg(&["set", WG_DEVICE, "peer", &peer.public_key, "remove"]);
            assert!(a.wg_peers(WG_DEVICE).is_empty(), "the peer is still there");
        },
        || a.wg_peers(WG_DEVICE) == wanted,
    );
    assert_pings(a, b, "after the peer came back");

    // (b) The peer's endpoint moved by hand. No traffic flows meanwhile, so wireguard-go's
    // roaming cannot put it back by itself (and the counter shows weftd did).
    a.assert_mends(
        "a moved endpoint",
        REPAIR_BOUND,
        PATIENCE,
        || {
            a.wg(&[
                "set",
                WG_DEVICE,
                "peer",
                &peer.public_key,
                "endpoint",
                "198.18.0.99:51820",
            ]);
            assert_eq!(a.wg_peers(WG_DEVICE)[0].endpoint, "198.18.0.99:51820");
        },
        || a.wg_peers(WG_DEVICE) == wanted,
    );
    assert_pings(a, b, "after the endpoint came back");

    // (c) A foreign peer added by hand.
    let foreign = wg_tool(&["genkey"], "");
    a.assert_mends(
        "a foreign peer",
        REPAIR_BOUND,
        PATIENCE,
        || {
            a.wg(&[
                "set",
                WG_DEVICE,
                "peer",
                &foreign,
                "allowed-ips",
                "198.19.250.0/24",
            ]);
            assert_eq!(a.wg_peers(WG_DEVICE).len(), 2);
        },
        || a.wg_peers(WG_DEVICE) == wanted,
    );

    // (d) The network's route on the device deleted: a kernel event.
    let network_route = || {
        a.ns.ip(&["route", "show", "198.19.0.0/16", "dev", WG_DEVICE])
    };
    assert!(
        !network_route().trim().is_empty(),
        "no route to the network"
    );
    a.assert_mends(
        "the network's route deleted",
        REPAIR_BOUND,
        PATIENCE,
        || {
            a.ns.ip(&["route", "del", "198.19.0.0/16", "dev", WG_DEVICE]);
        },
        || !network_route().trim().is_empty(),
    );
    assert_pings(a, b, "after the route came back");

    // (e) The device deleted: wireguard-go goes with it; weftd makes a new one with every
    // peer, and traffic crosses again.
    // The device is back with its peers, route and MTU, and traffic crosses it.
    let device_back = || {
        ifindex(a, WG_DEVICE).is_some()
            && succeeds(a, &["wg", "show", WG_DEVICE, "dump"])
            && a.wg_peers(WG_DEVICE) == wanted
            && !network_route().trim().is_empty()
            && a.ping_from_container(b.container_ip())
    };
    a.assert_mends(
        "the deleted device, with its peers and traffic crossing",
        DEVICE_BOUND,
        PATIENCE,
        || {
            a.ns.ip(&["link", "del", WG_DEVICE]);
        },
        device_back,
    );
    assert_eq!(a.ns.mtu_of(WG_DEVICE), 1420);
    let addr = a.ns.ip(&["-o", "-4", "addr", "show", "dev", WG_DEVICE]);
    assert!(
        addr.contains(&format!("{}/32", a.subnet().network())),
        "{addr}"
    );
    // One wireguard-go again, not one per attempt.
    let wg_pid = the_wireguard_go(a);
    assert_pings(b, a, "after the device was recreated");

    // (f) wireguard-go crashed (SIGKILL): its device goes with it and its control socket is
    // left behind; weftd starts a new one with every peer.
    a.assert_mends(
        "a killed wireguard-go, with its peers and traffic crossing",
        DEVICE_BOUND,
        PATIENCE,
        || assert_eq!(unsafe { libc::kill(wg_pid, libc::SIGKILL) }, 0),
        || wireguard_go_pids(a).iter().any(|p| *p != wg_pid) && device_back(),
    );
    assert_ne!(the_wireguard_go(a), wg_pid);
    assert_eq!(a.ns.mtu_of(WG_DEVICE), 1420);
    assert_pings(b, a, "after wireguard-go was replaced");

    assert_eq!(a.http_get("/readyz").0, 200, "{}", a.http_get("/readyz").1);
    assert!(a.repairs() >= 6.0, "{}", a.http_get("/metrics").1);
}

/// Whether `args` succeeds in the host's mount and network namespaces.
fn succeeds(host: &Host, args: &[&str]) -> bool {
    exec(host, args).status.success()
}

#[test]
fn exact_path_mtu_psk_and_keepalive() {
    let psk = wg_tool(&["genpsk"], "");
    let config = format!(
        r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"wireguard","PSK":"{psk}","PersistentKeepaliveInterval":25}}}}"#
    );
    let lab = wg_lab(3, &config, &[]);
    wait_mesh(&lab.hosts);
    for h in &lab.hosts {
        // A new peer's keepalive is set by the read-back after it was added (within the 1 s
        // tunnel poll), so that two hosts adding each other do not start handshakes at once.
        let all_set = wait_for(REPAIR_BOUND, || {
            let peers = h.wg_peers(WG_DEVICE);
            peers.iter().all(|p| p.keepalive == "25").then_some(())
        });
        assert!(
            all_set.is_some(),
            "{}: {:?}",
            h.ns.name(),
            h.wg_peers(WG_DEVICE)
        );
        let peers = h.wg_peers(WG_DEVICE);
        assert_eq!(peers.len(), 2, "{}: {peers:?}", h.ns.name());
        for p in &peers {
            assert_eq!(p.psk, psk, "{}: a peer without the PSK: {p:?}", h.ns.name());
            assert_eq!(p.keepalive, "25", "{}: {p:?}", h.ns.name());
        }
        assert_eq!(h.ns.mtu_of(WG_DEVICE), 1420, "{}", h.ns.name());
        assert_eq!(flannel_mtu(h), "FLANNEL_MTU=1420", "{}", h.ns.name());
    }

    // The path carries exactly 1420-byte packets: 1392 bytes of ICMP payload with DF cross,
    // 1393 do not.
    for (i, j) in [(0, 1), (1, 2), (2, 0)] {
        let (a, b) = (&lab.hosts[i], &lab.hosts[j]);
        let dst = IpAddr::V4(b.container_ip());
        assert!(
            a.ping_sized(dst, Some(1420 - 28)),
            "{} -> {}: 1392 bytes with DF do not cross",
            a.ns.name(),
            b.ns.name()
        );
        assert!(
            !a.ping_sized(dst, Some(1420 - 27)),
            "{} -> {}: 1393 bytes with DF crossed a 1420-byte path",
            a.ns.name(),
            b.ns.name()
        );
    }

    // The key file: flannel's mode and format, the device's key, the lease's key.
    for h in &lab.hosts {
        let path = h.wg_key_file();
        let meta = std::fs::metadata(&path).expect("the key file");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o400,
            "{}: mode of {}",
            h.ns.name(),
            path.display()
        );
        let private = std::fs::read_to_string(&path).unwrap();
        assert!(
            !private.ends_with('\n'),
            "{}: the key file ends with a newline",
            h.ns.name()
        );
        let public = wg_tool(&["pubkey"], &private);
        assert_eq!(public, h.wg_public_key(WG_DEVICE), "{}", h.ns.name());
        let lease = lab.lease_value(h.subnet()).expect("the host's lease");
        assert_eq!(lease["BackendType"], "wireguard");
        assert_eq!(lease["BackendData"]["PublicKey"], public.as_str());
        let raw = raw_lease(&lab, h);
        let want = format!(r#""BackendData":{{"PublicKey":"{public}","Port":51820}}"#);
        assert!(
            raw.contains(&want),
            "{}: the lease's BackendData is not flannel's {want}:\n{raw}",
            h.ns.name()
        );
        assert!(
            !raw.contains("BackendV6Data"),
            "{}: an IPv4-only lease with IPv6 data: {raw}",
            h.ns.name()
        );
        // Every other host has this host's key as a peer, at its address and port.
        for o in lab.hosts.iter().filter(|o| o.ip != h.ip) {
            let peers = o.wg_peers(WG_DEVICE);
            let p = peers
                .iter()
                .find(|p| p.public_key == public)
                .unwrap_or_else(|| panic!("{} has no peer {public}: {peers:?}", o.ns.name()));
            assert_eq!(p.endpoint, format!("{}:51820", h.ip));
            assert_eq!(p.allowed_ips, h.subnet().to_string());
        }
    }
}

#[test]
fn config_mtu_is_used() {
    let config = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard","MTU":1300}}"#;
    let lab = wg_lab(2, config, &[]);
    for h in &lab.hosts {
        assert_eq!(h.ns.mtu_of(WG_DEVICE), 1300, "{}", h.ns.name());
        assert_eq!(flannel_mtu(h), "FLANNEL_MTU=1300", "{}", h.ns.name());
    }
    wait_mesh(&lab.hosts);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let dst = IpAddr::V4(b.container_ip());
    assert!(
        a.ping_sized(dst, Some(1300 - 28)),
        "1272 bytes do not cross"
    );
    assert!(
        !a.ping_sized(dst, Some(1300 - 27)),
        "1273 bytes with DF crossed a 1300-byte path"
    );
}
