//! Changing the config of a running network (issue 23): real etcd, hosts in namespaces, a
//! container address on each pinging the next every 10 ms. Each live key is set with
//! `weftctl config set` (or behind its back with etcdctl) and reaches every host with no
//! packet lost; each refused key is refused with its reason, is not written by weftctl, and
//! leaves every host as it ran; `weftctl status` and `weftctl check` name hosts that do not
//! run the newest revision, and why.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::lab::{Host, Lab, VXLAN_CONFIG, VXLAN_DEVICE};
use testkit::lab6::DUAL_CONFIG;
use testkit::leases::CONFIG_KEY;
use testkit::live::{config_set, text, until, weftctl};
use testkit::ping::Pinger;
use testkit::wg::{WG_CONFIG, WG_DEVICE};

/// How long the fleet may take to report a new revision: a status record is written at most
/// every 5 s, plus a second for the change to be judged and applied.
const REPORTED: Duration = Duration::from_secs(12);

/// The mod revision of `<prefix>/config`.
fn config_rev(lab: &Lab) -> i64 {
    let out = lab.etcd.etcdctl(&["get", CONFIG_KEY, "-w", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("etcdctl's JSON");
    v["kvs"][0]["mod_revision"]
        .as_i64()
        .expect("a stored config")
}

/// `weftctl status -o json`: whether it exited 0, and its config section.
fn fleet_config(lab: &Lab) -> (bool, Value) {
    let o = weftctl(lab, &["-o", "json", "status"]);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("weftctl status -o json ({e}): {}", text(&o)));
    (o.status.success(), v["config"].clone())
}

/// Waits until `weftctl status` says every host runs the newest revision (and exits 0);
/// gives how long that took from `since`.
fn wait_fleet_on_newest(lab: &Lab, since: Instant, what: &str) -> Duration {
    let rev = config_rev(lab);
    let done = until(REPORTED, || {
        let (ok, c) = fleet_config(lab);
        ok && c["revision"] == rev && c["behind"].as_array().is_some_and(|b| b.is_empty())
    });
    if !done {
        let o = weftctl(lab, &["status"]);
        let logs: Vec<String> = lab.hosts.iter().map(Host::logs).collect();
        panic!(
            "{what}: the fleet is not on revision {rev}: {}\n{logs:#?}",
            text(&o)
        );
    }
    since.elapsed()
}

/// Every host's container pings the next host's every 10 ms.
fn ping_ring(lab: &Lab) -> Vec<Pinger> {
    let n = lab.hosts.len();
    (0..n)
        .map(|i| lab.hosts[i].start_pinging(lab.hosts[(i + 1) % n].container_ip()))
        .collect()
}

/// Stops the pingers; fails on any loss, after printing what was measured.
fn no_loss(pingers: Vec<Pinger>, what: &str) {
    for (i, p) in pingers.into_iter().enumerate() {
        let t = p.finish();
        eprintln!(
            "{what}: pinger {i}: {} sent, {} lost",
            t.transmitted,
            t.lost()
        );
        t.assert_no_loss(what, 100);
    }
}

fn vxlan(backend: &str) -> String {
    format!(r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"vxlan"{backend}}}}}"#)
}

fn device_mtu(h: &Host) -> String {
    h.ns.ip(&["-o", "link", "show", VXLAN_DEVICE])
}

/// `lab`'s hosts started, on the fleet's revision, their containers pinging around.
fn pinging(mut lab: Lab) -> (Lab, Vec<Pinger>) {
    lab.start_all(&[]);
    lab.add_containers();
    lab.wait_converged();
    wait_fleet_on_newest(&lab, Instant::now(), "at start");
    let pingers = ping_ring(&lab);
    std::thread::sleep(Duration::from_millis(300));
    (lab, pingers)
}

fn three_hosts_pinging() -> (Lab, Vec<Pinger>) {
    pinging(Lab::new(3, VXLAN_CONFIG))
}

#[test]
fn live_keys_reach_every_host_with_no_packet_lost() {
    let (lab, pingers) = three_hosts_pinging();
    // DirectRouting: hosts on one segment route to each other over the underlay.
    let doc = vxlan(r#","DirectRouting":true"#);
    let started = Instant::now();
    let o = config_set(&lab, &doc, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Backend.DirectRouting: false → true: applied live"),
        "{}",
        text(&o)
    );
    let took = wait_fleet_on_newest(&lab, started, "DirectRouting");
    eprintln!("DirectRouting on every host's record after {took:?}");
    let peer = lab.hosts[1].subnet().to_string();
    assert!(lab.hosts[0]
        .ns
        .ip(&["route", "show", &peer])
        .contains("dev eth0"));

    // A smaller MTU disturbs running containers: weftctl wants --yes and writes nothing
    // without it.
    let doc_mtu = vxlan(r#","DirectRouting":true,"MTU":1400"#);
    let rev = config_rev(&lab);
    let o = config_set(&lab, &doc_mtu, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    assert_eq!(config_rev(&lab), rev, "nothing written without --yes");
    let started = Instant::now();
    let o = config_set(&lab, &doc_mtu, &["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    let took = wait_fleet_on_newest(&lab, started, "MTU");
    eprintln!("MTU on every host's record after {took:?}");
    for h in &lab.hosts {
        assert!(device_mtu(h).contains("mtu 1400 "), "{}", device_mtu(h));
        let env = std::fs::read_to_string(&h.subnet_file).unwrap();
        assert!(env.contains("FLANNEL_MTU=1400\n"), "{env}");
    }

    // Behind weftctl's back: etcdctl writes a live change; the first host to see it judges
    // it for all, and every host runs it.
    let started = Instant::now();
    lab.etcd.put(CONFIG_KEY, &vxlan(r#","MTU":1400"#));
    let took = wait_fleet_on_newest(&lab, started, "DirectRouting off via etcdctl");
    eprintln!("etcdctl's change on every host's record after {took:?}");
    assert!(lab.hosts[0]
        .ns
        .ip(&["route", "show", &peer])
        .contains("dev flannel.1"));
    no_loss(pingers, "while live keys changed");
}

#[test]
fn refused_keys_are_refused_with_their_reason_and_disturb_nothing() {
    let (lab, pingers) = three_hosts_pinging();
    let rev = config_rev(&lab);
    for (doc, says) in [
        (vxlan(r#","VNI":2"#), "Backend.VNI: 1 → 2: refused: "),
        (
            vxlan(r#","Port":4789"#),
            "Backend.Port: 0 → 4789: refused: hosts on UDP port 8472 and on 4789",
        ),
        (
            r#"{"Network":"198.19.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#.into(),
            "SubnetLen: 24 → 25: refused: the leases of ",
        ),
    ] {
        let o = config_set(&lab, &doc, &["--yes"]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(says), "wanted {says:?} in: {}", text(&o));
        assert!(text(&o).contains("nothing written"), "{}", text(&o));
        assert_eq!(config_rev(&lab), rev, "a refused change is not written");
    }

    // Written behind weftctl's back, it is refused by the fleet: every host keeps VNI 1 and
    // says why in its status record; weftctl status and check fail naming it.
    lab.etcd.put(CONFIG_KEY, &vxlan(r#","VNI":2"#));
    let refused = until(REPORTED, || {
        let (ok, c) = fleet_config(&lab);
        let behind = c["behind"].as_array().cloned().unwrap_or_default();
        !ok && behind.len() == 3
            && behind.iter().all(|b| {
                b["why"]
                    .as_str()
                    .is_some_and(|w| w.contains("refused: Backend.VNI 1 → 2"))
            })
    });
    assert!(refused, "{}", text(&weftctl(&lab, &["status"])));
    let o = weftctl(&lab, &["status"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("3 hosts not on it"), "{}", text(&o));
    let o = lab.hosts[0].weftctl_check(&[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("config: this host runs revision"),
        "{}",
        text(&o)
    );
    for h in &lab.hosts {
        assert!(h
            .ns
            .ip(&["-d", "link", "show", VXLAN_DEVICE])
            .contains("vxlan id 1 "));
        assert!(h.logs().contains("Backend.VNI 1 → 2"), "{}", h.logs());
    }

    // The network's own config back: nothing to judge, the fleet agrees again.
    let started = Instant::now();
    lab.etcd.put(CONFIG_KEY, VXLAN_CONFIG);
    wait_fleet_on_newest(&lab, started, "the running config written back");
    no_loss(pingers, "while refused keys were written");
}

#[test]
fn wireguard_psk_and_keepalive_reach_every_peer_with_no_packet_lost() {
    let lab = testkit::wg::wg_lab(3, WG_CONFIG, &[]);
    wait_fleet_on_newest(&lab, Instant::now(), "at start");
    let pingers = ping_ring(&lab);
    std::thread::sleep(Duration::from_millis(300));
    // A fixed test key (genpsk's format): the PSK is a secret weftctl never prints.
    let psk = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let doc = format!(
        r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"wireguard","PSK":"{psk}","PersistentKeepaliveInterval":25}}}}"#
    );
    let started = Instant::now();
    let o = config_set(&lab, &doc, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("Backend.PSK: - → (hidden): applied live"),
        "{out}"
    );
    assert!(!out.contains(psk), "the PSK was printed: {out}");
    assert!(
        out.contains("Backend.PersistentKeepaliveInterval: 0 → 25: applied live"),
        "{out}"
    );
    let all_set = until(REPORTED, || {
        lab.hosts.iter().all(|h| {
            let peers = h.wg_peers(WG_DEVICE);
            peers.len() == 2 && peers.iter().all(|p| p.psk == psk && p.keepalive == "25")
        })
    });
    let peers: Vec<_> = lab.hosts.iter().map(|h| h.wg_peers(WG_DEVICE)).collect();
    assert!(all_set, "{peers:?}");
    eprintln!(
        "PSK and keepalive on every peer after {:?}",
        started.elapsed()
    );
    wait_fleet_on_newest(&lab, started, "PSK and keepalive");
    // A running session keeps its keys until its next handshake (within 2 minutes), which
    // both ends then make with the PSK; the pings run on a while to cover the peers' update.
    std::thread::sleep(Duration::from_secs(2));
    no_loss(pingers, "while the PSK and keepalive changed");
}

#[test]
fn a_narrower_range_and_ipv6_turned_on_reach_every_host_with_no_packet_lost() {
    let (lab, pingers) = pinging(Lab::dual(3, VXLAN_CONFIG));

    // SubnetMax down to the highest subnet leased: new leases come from the new range.
    let max = lab.hosts.iter().map(|h| h.subnet()).max().unwrap().addr();
    let doc = format!(
        r#"{{"Network":"198.19.0.0/16","SubnetMax":"{max}","Backend":{{"Type":"vxlan"}}}}"#
    );
    let started = Instant::now();
    let o = config_set(&lab, &doc, &[]);
    assert!(
        text(&o).contains("SubnetMax: 198.19.255.0 → "),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("new leases come from the new range"),
        "{}",
        text(&o)
    );
    wait_fleet_on_newest(&lab, started, "SubnetMax");

    // IPv6 on: every host takes an IPv6 subnet beside its IPv4 one.
    let v4: Vec<_> = lab.hosts.iter().map(Host::subnet).collect();
    let started = Instant::now();
    let o = config_set(&lab, DUAL_CONFIG, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("EnableIPv6: false → true: applied live"),
        "{}",
        text(&o)
    );
    let dual = until(REPORTED, || {
        (lab.hosts.iter()).all(|h| {
            std::fs::read_to_string(&h.subnet_file)
                .is_ok_and(|t| t.contains("FLANNEL_IPV6_SUBNET="))
        })
    });
    assert!(
        dual,
        "{:#?}",
        lab.hosts.iter().map(Host::logs).collect::<Vec<_>>()
    );
    eprintln!("IPv6 subnets on every host after {:?}", started.elapsed());
    wait_fleet_on_newest(&lab, started, "EnableIPv6");
    assert_eq!(
        lab.hosts.iter().map(Host::subnet).collect::<Vec<_>>(),
        v4,
        "IPv4 subnets kept"
    );
    lab.hosts.iter().for_each(Host::add_container6);
    for (i, a) in lab.hosts.iter().enumerate() {
        let b = &lab.hosts[(i + 1) % lab.hosts.len()];
        let ok = until(Duration::from_secs(5), || {
            a.ping6_from_container(b.container_ip6())
        });
        assert!(
            ok,
            "{} cannot reach {} over IPv6:\n{}",
            a.ns.name(),
            b.ns.name(),
            a.logs()
        );
    }
    no_loss(pingers, "while the range narrowed and IPv6 was turned on");
}
