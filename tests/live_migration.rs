//! Moving a running network to another backend (issue 23): real etcd, hosts in namespaces
//! (WireGuard on wireguard-go, each host in its own mount namespace), containers pinging the
//! next host's every 10 ms. VXLAN → WireGuard host by host (one restarted midway) and then all
//! at once, WireGuard → VXLAN back, a host that cannot move, and a flannel host in the fleet
//! throughout: no packet lost, and the underlay carries UDP 8472 only between pairs that have
//! not both moved, 51820 only between pairs that have.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::capture::{self, Capture};
use testkit::lab::{flannel_vxlan_host, udp_exchange, Host, Lab, VXLAN_CONFIG, VXLAN_DEVICE};
use testkit::live::{config_set, text, until, weftctl};
use testkit::ping::Pinger;
use testkit::wg::{WG_CONFIG, WG_DEVICE};

/// How long hosts may take to move and report it (status records every 5 s at most).
const MOVED: Duration = Duration::from_secs(15);

fn ok(lab: &Lab, args: &[&str]) -> String {
    let o = weftctl(lab, args);
    assert!(o.status.success(), "weftctl {args:?}: {}", text(&o));
    text(&o)
}

/// `weftctl config set` that must succeed; its output.
fn set_ok(lab: &Lab, doc: &str, extra: &[&str]) -> String {
    let o = config_set(lab, doc, extra);
    assert!(o.status.success(), "weftctl config set: {}", text(&o));
    text(&o)
}

/// Waits until every host speaks only `backend`, has no `old_dev`, and runs the newest
/// config; then the underlay carries only `port`. Says how long that took from `started`.
fn all_on(lab: &Lab, backend: &str, old_dev: &str, port: u16, started: Instant) {
    let logs = || {
        lab.hosts
            .iter()
            .map(Host::logs)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(until(MOVED, || all_speak_only(lab, backend)), "{}", logs());
    assert!(until(MOVED, || lab
        .hosts
        .iter()
        .all(|h| !has_link(h, old_dev))));
    let status = || text(&weftctl(lab, &["status"]));
    assert!(until(MOVED, || behind(lab).0), "{}", status());
    eprintln!(
        "every host on {backend} only {:?} after the change",
        started.elapsed()
    );
    let flows = underlay_flows(lab);
    assert!(flows.iter().all(|f| f.2 == port), "{flows:?}");
}

/// `weftctl status -o json`: whether it exited 0, and the hosts not on the newest config.
fn behind(lab: &Lab) -> (bool, Vec<Value>) {
    let o = weftctl(lab, &["-o", "json", "status"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let b = v["config"]["behind"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (o.status.success(), b)
}

/// The backends host `h`'s lease speaks: `BackendType`, then `WeftBackends`' names.
fn speaks(lab: &Lab, h: &Host) -> Vec<String> {
    let l = lab.lease_value(h.subnet()).unwrap_or(Value::Null);
    let mut out = vec![l["BackendType"].as_str().unwrap_or("").to_string()];
    if let Some(m) = l["WeftBackends"].as_object() {
        out.extend(m.keys().cloned());
    }
    out
}

fn all_speak_only(lab: &Lab, backend: &str) -> bool {
    (lab.hosts.iter()).all(|h| speaks(lab, h) == [backend])
}

fn has_link(h: &Host, dev: &str) -> bool {
    h.ns.exec(&["ip", "link", "show", dev]).status.success()
}

/// The device `a` sends to `b`'s container through.
fn via(a: &Host, b: &Host) -> String {
    let route = a.ns.ip(&["route", "get", &b.container_ip().to_string()]);
    let dev = route.split_whitespace().skip_while(|w| *w != "dev").nth(1);
    dev.unwrap_or("").to_string()
}

/// Each of `hosts`' containers pings every other's every 10 ms; each pinger named by the
/// pair.
fn ping_all(hosts: &[Host]) -> Vec<(String, Pinger)> {
    let mut out = Vec::new();
    for a in hosts {
        for b in hosts.iter().filter(|b| b.ip != a.ip) {
            let name = format!("host {} → host {}", octet(a), octet(b));
            out.push((name, a.start_pinging(b.container_ip())));
        }
    }
    out
}

/// Stops the pingers and prints what they measured (each lossy pair named); fails on any
/// loss.
fn no_loss(pingers: Vec<(String, Pinger)>, what: &str) {
    let totals = measure(pingers, what);
    assert!(
        totals.iter().all(|(_, l)| *l == 0),
        "{what}: pings lost: {totals:?}"
    );
}

/// Where pairs switch backend: none lost, and every pair of `hosts` reaches the other
/// afterwards.
fn switch_loss(hosts: &[Host], pingers: Vec<(String, Pinger)>, what: &str) {
    no_loss(pingers, what);
    testkit::lab::assert_mesh(hosts);
}

/// Stops the pingers and prints what they measured; gives each pinger's (sent, lost).
fn measure(pingers: Vec<(String, Pinger)>, what: &str) -> Vec<(u64, u64)> {
    let (mut sent, mut lost) = (0, 0);
    let n = pingers.len();
    let mut out = Vec::new();
    for (name, p) in pingers {
        let t = p.finish();
        (sent, lost) = (sent + t.transmitted, lost + t.lost());
        if t.lost() > 0 {
            let runs = t.lossy_runs.join("; ");
            eprintln!(
                "{what}: {name}: {} of {} lost: {runs}",
                t.lost(),
                t.transmitted
            );
        }
        assert!(
            t.transmitted >= 50,
            "{what}: {name}: the pings did not cover it: {t:?}"
        );
        out.push((t.transmitted, t.lost()));
    }
    eprintln!("{what}: {n} pingers, {sent} pings sent, {lost} lost");
    out
}

/// The UDP flows the underlay carries for a second: (sender's last octet, receiver's last
/// octet, the overlay port 8472 or 51820).
fn underlay_flows(lab: &Lab) -> BTreeSet<(u8, u8, u16)> {
    let c = Capture::start(&lab.underlay, "");
    std::thread::sleep(Duration::from_secs(1));
    let mut out = BTreeSet::new();
    for f in c.finish() {
        let Some(s) = capture::ipv4(&f) else { continue };
        let Some((sp, dp)) = s.ports else { continue };
        let port = [8472, 51820].into_iter().find(|p| *p == sp || *p == dp);
        if let Some(p) = port {
            out.insert((s.src.octets()[3], s.dst.octets()[3], p));
        }
    }
    out
}

/// The underlay carries the pair `moved` over WireGuard only, and `moved[0]` with `other`
/// over VXLAN only.
fn assert_split(lab: &Lab, moved: [&Host; 2], other: &Host) {
    let flows = underlay_flows(lab);
    let (a, b, c) = (octet(moved[0]), octet(moved[1]), octet(other));
    let only = |x, y, port, not| flows.contains(&(x, y, port)) && !flows.contains(&(x, y, not));
    assert!(only(a, b, 51820, 8472), "{flows:?}");
    assert!(only(a, c, 8472, 51820), "{flows:?}");
}

/// Whether a marker sent by UDP between `a`'s and `b`'s containers (both ways, each
/// delivered) crossed the underlay in clear.
fn marker_in_clear(lab: &Lab, a: &Host, b: &Host) -> bool {
    let marker = b"weft-live-marker-5b1e-never-in-clear-once-moved";
    let c = Capture::start(&lab.underlay, "");
    for (x, y) in [(a, b), (b, a)] {
        let (src, dst) = (x.container_ip().into(), y.container_ip().into());
        let got = udp_exchange(&x.ns, src, &y.ns, dst, marker);
        assert!(
            got.is_some_and(|(_, p)| p == marker),
            "{} → {}: not delivered",
            x.ip,
            y.ip
        );
    }
    // The capture reads what the socket queued meanwhile before it stops.
    std::thread::sleep(Duration::from_millis(300));
    c.finish().iter().any(|f| capture::contains(f, marker))
}

fn octet(h: &Host) -> u8 {
    h.ip.parse::<Ipv4Addr>().unwrap().octets()[3]
}

/// A lab of `n` hosts able to run WireGuard, on `config`, started with containers.
fn lab(n: usize, config: &str) -> Lab {
    testkit::wg::say_mode();
    let mut lab = Lab::new(n, config);
    testkit::wg::start_wireguard(&mut lab, n, &[]);
    match config.contains("wireguard") {
        true => testkit::wg::wait_wg_converged(&lab.hosts),
        false => lab.wait_converged(),
    }
    // Every pair's first WireGuard handshake before the pingers start, one end at a time:
    // both ends of a pair sending their first packets at one instant lost up to 2.4 s while
    // wireguard-go sorted out two handshakes, which has nothing to do with a migration.
    for (i, a) in lab.hosts.iter().enumerate() {
        for b in &lab.hosts[i + 1..] {
            a.reach_within(b, testkit::wg::FIRST_CONTACT, "before the migration");
        }
    }
    lab
}

/// Waits until host `a` sends to `b` through `dev` and back.
fn pair_on(a: &Host, b: &Host, dev: &str) -> bool {
    until(MOVED, || via(a, b) == dev && via(b, a) == dev)
}

#[test]
fn vxlan_to_wireguard_host_by_host_then_all_with_no_packet_lost() {
    let mut lab = lab(5, VXLAN_CONFIG);
    let pingers = ping_all(&lab.hosts);
    std::thread::sleep(Duration::from_millis(300));
    let [s0, s1] = [0, 1].map(|i| lab.hosts[i].subnet().to_string());

    // Host 0 is told to move: it runs WireGuard beside VXLAN and keeps VXLAN for every peer.
    let out = set_ok(&lab, WG_CONFIG, &["--yes", "--hosts", &s0]);
    assert!(
        out.contains("Backend.Type: vxlan → wireguard: applied live"),
        "{out}"
    );
    let started = Instant::now();
    assert!(until(MOVED, || speaks(&lab, &lab.hosts[0])
        == ["vxlan", "wireguard"]));
    // The others wait to be told, and say so; host 0 runs all it can.
    let waiting = until(MOVED, || {
        let (ok, b) = behind(&lab);
        let waits = |h: &Value| h["config"]["newer"]["state"] == "waiting";
        !ok && b.len() == lab.hosts.len() - 1 && b.iter().all(waits)
    });
    assert!(waiting, "{}", text(&weftctl(&lab, &["status"])));
    assert_eq!(via(&lab.hosts[0], &lab.hosts[1]), VXLAN_DEVICE);
    assert!(
        marker_in_clear(&lab, &lab.hosts[0], &lab.hosts[1]),
        "VXLAN carries it in clear"
    );
    no_loss(pingers, "host 0 told to move");
    let pingers = ping_all(&lab.hosts);

    // Host 1 too: the pair 0–1 moves to WireGuard, their other pairs stay on VXLAN.
    assert!(ok(&lab, &["migrate", "--hosts", &s1]).contains("198.19."));
    let [h0, h1, h2] = [0, 1, 2].map(|i| &lab.hosts[i]);
    assert!(pair_on(h0, h1, WG_DEVICE), "{}", h0.logs());
    assert_eq!(via(h0, h2), VXLAN_DEVICE);
    assert_split(&lab, [h0, h1], h2);
    assert!(
        !marker_in_clear(&lab, h0, h1),
        "the moved pair is not encrypted"
    );
    assert!(marker_in_clear(&lab, h0, h2), "the pair still on VXLAN");
    eprintln!(
        "pair 0–1 on WireGuard {:?} after the first config set",
        started.elapsed()
    );

    // weftd restarted mid-migration: host 1 comes back running both, the pair stays moved.
    lab.hosts[1].stop();
    lab.hosts[1].start(&[]);
    lab.hosts[1].wait_ready();
    assert!(pair_on(&lab.hosts[0], &lab.hosts[1], WG_DEVICE));
    switch_loss(
        &lab.hosts,
        pingers,
        "host 1 told to move, then its weftd restarted",
    );
    let pingers = ping_all(&lab.hosts);

    // The next batch of one: the host of the lowest subnet not told yet.
    let told = [0, 1].map(|i| lab.hosts[i].subnet());
    let next = (lab.hosts.iter())
        .filter(|h| !told.contains(&h.subnet()))
        .min_by_key(|h| h.subnet());
    let next = next.expect("a host not told yet");
    let out = ok(&lab, &["migrate", "--batch", "1"]);
    assert!(out.contains(&next.subnet().to_string()), "{out}");
    assert!(
        until(MOVED, || speaks(&lab, next) == ["vxlan", "wireguard"]),
        "{out}"
    );

    // Everyone: each pair moves, VXLAN goes from every host, only 51820 crosses.
    ok(&lab, &["migrate", "--all"]);
    all_on(&lab, "wireguard", VXLAN_DEVICE, 51820, Instant::now());
    for (a, b) in [(0, 2), (2, 3), (3, 4), (4, 1)] {
        assert!(
            !marker_in_clear(&lab, &lab.hosts[a], &lab.hosts[b]),
            "{a}–{b} in clear"
        );
    }
    switch_loss(&lab.hosts, pingers, "every host told to move");
}

#[test]
fn wireguard_back_to_vxlan_all_at_once_with_no_packet_lost() {
    let lab = lab(3, WG_CONFIG);
    let pingers = ping_all(&lab.hosts);
    std::thread::sleep(Duration::from_millis(300));
    // VXLAN's MTU is larger: nothing to confirm.
    let out = set_ok(&lab, VXLAN_CONFIG, &[]);
    assert!(
        out.contains("Backend.Type: wireguard → vxlan: applied live"),
        "{out}"
    );
    all_on(&lab, "vxlan", WG_DEVICE, 8472, Instant::now());
    switch_loss(&lab.hosts, pingers, "WireGuard to VXLAN all at once");
}

#[test]
fn a_host_that_cannot_move_stays_on_vxlan_says_why_and_keeps_its_pairs() {
    let lab = lab(3, VXLAN_CONFIG);
    // Host 3's WireGuard key file cannot be read or written: a directory stands there.
    let stuck = &lab.hosts[2];
    std::fs::create_dir_all(stuck.wg_key_file()).unwrap();
    let pingers = ping_all(&lab.hosts);
    std::thread::sleep(Duration::from_millis(300));
    set_ok(&lab, WG_CONFIG, &["--yes"]);
    let [h0, h1] = [0, 1].map(|i| &lab.hosts[i]);
    assert!(pair_on(h0, h1, WG_DEVICE), "{}", h0.logs());
    let failed = until(MOVED, || {
        let (ok, b) = behind(&lab);
        !ok && b.len() == 1
            && b[0]["subnet"] == stuck.subnet().to_string()
            && b[0]["config"]["newer"]["state"] == "failed"
    });
    assert!(failed, "{}", text(&weftctl(&lab, &["status"])));
    let status = text(&weftctl(&lab, &["status"]));
    assert!(
        status.contains("failed: cannot run wireguard: "),
        "{status}"
    );
    assert_eq!(speaks(&lab, stuck), ["vxlan"]);
    // The others keep VXLAN for it, and their pair with it runs over VXLAN.
    assert_eq!(speaks(&lab, h0), ["vxlan", "wireguard"]);
    assert_eq!(via(h0, stuck), VXLAN_DEVICE);
    assert_eq!(via(stuck, h1), VXLAN_DEVICE);
    assert_split(&lab, [h0, h1], stuck);
    std::thread::sleep(Duration::from_secs(5));
    switch_loss(&lab.hosts, pingers, "a host that cannot move");
}

/// Host `fl` of `lab` set up as flanneld sets up a VXLAN host and programmed, as flanneld
/// would from their leases, towards the weft hosts; gives its container address.
fn flannel_host(lab: &Lab, fl: &Host, subnet: &str) -> Ipv4Addr {
    let (container, _) = flannel_vxlan_host(&lab.etcd, fl, subnet.parse().unwrap());
    for h in lab.hosts.iter().filter(|h| h.ip != fl.ip) {
        let s = h.subnet();
        let gw = s.network().to_string();
        fl.flannel_programs(
            VXLAN_DEVICE,
            &s.to_string(),
            &gw,
            &flannel_view(lab, h),
            &h.ip,
        );
    }
    container
}

/// The VTEP MAC a flannel host reads in `h`'s lease (flannel's fields only).
fn flannel_view(lab: &Lab, h: &Host) -> String {
    let l = lab.lease_value(h.subnet()).unwrap_or(Value::Null);
    assert_eq!(l["BackendType"], "vxlan", "{l}");
    l["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_flannel_host_keeps_vxlan_with_every_weft_host_throughout() {
    let mut lab = Lab::new(4, VXLAN_CONFIG);
    testkit::wg::start_wireguard(&mut lab, 3, &[]);
    let weft = &lab.hosts[..3];
    let meshed = until(MOVED, || {
        (weft.iter()).all(|a| {
            weft.iter()
                .all(|b| a.ip == b.ip || a.ping_from_container(b.container_ip()))
        })
    });
    assert!(meshed, "{}", weft[0].logs());
    let fl = &lab.hosts[3];
    let fl_container = flannel_host(&lab, fl, "198.19.250.0/24");
    let macs: Vec<String> = lab.hosts[..3]
        .iter()
        .map(|h| flannel_view(&lab, h))
        .collect();
    let mut pingers = ping_all(&lab.hosts[..3]);
    for h in &lab.hosts[..3] {
        assert!(
            until(MOVED, || h.ping_from_container(fl_container)),
            "{}",
            h.logs()
        );
        let o = octet(h);
        let from_fl = Pinger::in_netns(&fl.ns, fl_container, h.container_ip());
        pingers.push((format!("flannel host → host {o}"), from_fl));
        pingers.push((
            format!("host {o} → flannel host"),
            h.start_pinging(fl_container),
        ));
    }
    std::thread::sleep(Duration::from_millis(300));

    set_ok(&lab, WG_CONFIG, &["--yes"]);
    let [h0, h1] = [0, 1].map(|i| &lab.hosts[i]);
    assert!(pair_on(h0, h1, WG_DEVICE), "{}", h0.logs());
    std::thread::sleep(Duration::from_secs(5));
    // The weft hosts speak both and keep VXLAN for the flannel host: flannel's fields of
    // their leases are as the flannel host read them before.
    for (h, mac) in lab.hosts[..3].iter().zip(&macs) {
        assert_eq!(speaks(&lab, h), ["vxlan", "wireguard"]);
        assert_eq!(&flannel_view(&lab, h), mac);
        assert!(has_link(h, VXLAN_DEVICE));
    }
    assert_split(&lab, [h0, h1], fl);
    switch_loss(
        &lab.hosts[..3],
        pingers,
        "a migration with a flannel host in the fleet",
    );
}

const HOST_GW_CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// The underlay carries VXLAN between the pair `moved` and none between `moved[0]` and
/// `other`, whose containers' packets host-gw routes unwrapped.
fn assert_vxlan_between(lab: &Lab, moved: [&Host; 2], other: &Host) {
    let flows = underlay_flows(lab);
    let (a, b, c) = (octet(moved[0]), octet(moved[1]), octet(other));
    assert!(flows.contains(&(a, b, 8472)), "{flows:?}");
    let with_other = |f: &&(u8, u8, u16)| f.0 == c || f.1 == c;
    assert!(!flows.iter().any(|f| with_other(&f)), "{flows:?}");
}

/// A lab of `n` hosts on host-gw, started with containers.
fn host_gw_lab(n: usize) -> Lab {
    let mut lab = Lab::new(n, HOST_GW_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    lab.wait_converged();
    lab
}

#[test]
fn host_gw_to_vxlan_host_by_host_and_back_at_once_with_no_packet_lost() {
    let lab = host_gw_lab(3);
    let pingers = ping_all(&lab.hosts);
    std::thread::sleep(Duration::from_millis(300));
    let [s0, s1] = [0, 1].map(|i| lab.hosts[i].subnet().to_string());

    // VXLAN's MTU is smaller than host-gw's, hence --yes. Host 0 runs both, host-gw for all.
    let out = set_ok(&lab, VXLAN_CONFIG, &["--yes", "--hosts", &s0]);
    assert!(out.contains("host-gw → vxlan"), "{out}");
    assert!(until(MOVED, || speaks(&lab, &lab.hosts[0])
        == ["host-gw", "vxlan"]));
    assert_eq!(via(&lab.hosts[0], &lab.hosts[1]), "eth0");
    no_loss(pingers, "host 0 told to move to VXLAN");
    let pingers = ping_all(&lab.hosts);

    // Host 1 too: the pair 0–1 moves to VXLAN, each keeps host-gw with host 2.
    ok(&lab, &["migrate", "--hosts", &s1]);
    let [h0, h1, h2] = [0, 1, 2].map(|i| &lab.hosts[i]);
    assert!(pair_on(h0, h1, VXLAN_DEVICE), "{}", h0.logs());
    assert_eq!((via(h0, h2), via(h2, h1)), ("eth0".into(), "eth0".into()));
    assert_vxlan_between(&lab, [h0, h1], h2);
    switch_loss(
        &lab.hosts,
        pingers,
        "hosts 0 and 1 on VXLAN, host 2 on host-gw",
    );
    let pingers = ping_all(&lab.hosts);

    ok(&lab, &["migrate", "--all"]);
    all_on(&lab, "vxlan", "no-such-device", 8472, Instant::now());
    switch_loss(&lab.hosts, pingers, "host-gw to VXLAN, the last host");
    let pingers = ping_all(&lab.hosts);

    // Back at once: no VXLAN device nor UDP 8472 left.
    set_ok(&lab, HOST_GW_CONFIG, &[]);
    all_on(&lab, "host-gw", VXLAN_DEVICE, 0, Instant::now());
    assert!(underlay_flows(&lab).is_empty());
    switch_loss(&lab.hosts, pingers, "VXLAN to host-gw all at once");
}

#[test]
fn a_migration_finishes_once_every_host_moved_and_a_host_joining_later_runs_only_the_new_backend() {
    let mut lab = host_gw_lab(2);
    let s0 = lab.hosts[0].subnet().to_string();
    set_ok(&lab, VXLAN_CONFIG, &["--yes", "--hosts", &s0]);
    assert!(until(MOVED, || speaks(&lab, &lab.hosts[0])
        == ["host-gw", "vxlan"]));

    // Both still speak host-gw (host 0 for host 1): refused, naming them.
    let o = weftctl(&lab, &["migrate", "--finish"]);
    assert!(!o.status.success(), "{}", text(&o));
    for h in &lab.hosts {
        assert!(text(&o).contains(&h.subnet().to_string()), "{}", text(&o));
    }

    ok(&lab, &["migrate", "--all"]);
    all_on(&lab, "vxlan", "no-such-device", 8472, Instant::now());
    let out = ok(&lab, &["migrate", "--finish"]);
    assert!(out.contains("finished"), "{out}");
    let o = weftctl(&lab, &["migrate"]);
    assert!(
        text(&o).contains("no backend migration under way"),
        "{}",
        text(&o)
    );
    assert!(behind(&lab).0, "{}", text(&weftctl(&lab, &["status"])));

    // A host joining now starts on VXLAN alone, never host-gw beside it.
    let i = lab.add_host();
    lab.hosts[i].start(&[]);
    lab.hosts[i].wait_ready();
    lab.hosts[i].add_container();
    lab.wait_converged();
    assert_eq!(speaks(&lab, &lab.hosts[i]), ["vxlan"]);
    assert!(
        !lab.hosts[i].logs().contains("\"host-gw\""),
        "{}",
        lab.hosts[i].logs()
    );
    testkit::lab::assert_mesh(&lab.hosts);
    assert!(all_speak_only(&lab, "vxlan"));
}
