//! What another writer of etcd can do to a host and to an operator, and cannot: forged status
//! records and leases reach the terminal escaped (JSON stays exact), a lease with this host's
//! own VTEP MAC or WireGuard key is refused once and never "repaired" again and again, IPv6
//! lease parts the datapath refuses are refused by `weftctl` and the probes too, and the
//! WireGuard PSK is shown only when asked for.

use std::time::Duration;

use serde_json::Value;
use testkit::etcd::Etcd;
use testkit::lab::{Host, Lab, VXLAN_CONFIG};
use testkit::lab6::DUAL_CONFIG;
use testkit::leases::SUBNETS_PREFIX;
use testkit::wait::wait_for;
use testkit::wg::{wg_lab, WG_CONFIG, WG_DEVICE};

/// The status record of the hostile-input report: a window title, a cleared screen and a
/// forged line.
const FORGED_RECORD: &str = r#"{"v":1,"version":"\u001b]0;PWNED\u0007\u001b[2J\u009b2J\u202e","backend":"x\r\nhosts:     99 ready","ready":true,"since":"2026-11-28T14:14:20Z","public_ip":"198.18.0.70","alive_since":"2026-11-28T14:14:20Z","unreachable":[],"drift_repairs":{"count":0,"last":null},"last_error":null}"#;

/// Fails when `text` holds anything a terminal would act on: ESC, CR, a C1 control, a bidi
/// override, or a line a forged value started.
fn assert_inert(what: &str, text: &str) {
    for (c, name) in [
        ('\u{1b}', "ESC"),
        ('\r', "CR"),
        ('\u{7}', "BEL"),
        ('\u{9b}', "CSI (C1)"),
        ('\u{202e}', "RIGHT-TO-LEFT OVERRIDE"),
    ] {
        assert!(!text.contains(c), "{what} prints a raw {name}:\n{text}");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("hosts:     99")),
        "{what} prints a forged line:\n{text}"
    );
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn values_from_etcd_reach_the_terminal_escaped_and_json_exact() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.etcd.put(
        "/coreos.com/network/weft/status/198.19.150.0-24",
        FORGED_RECORD,
    );
    lab.etcd.put(
        &format!("{SUBNETS_PREFIX}198.19.150.0-24"),
        r#"{"PublicIP":"198.18.0.70","PublicIPv6":null,"BackendType":"vx\u001b[2J\r\nlan","BackendData":{"VNI":1,"VtepMAC":"\u009b2J\u202e"}}"#,
    );
    let h = &lab.hosts[0];
    for args in [
        &["status"][..],
        &["status", "--matrix"],
        &["leases"],
        &["leases", "show", "198.19.150.0/24"],
        &["check", "--iface", "eth0"],
    ] {
        let o = h.weftctl(args);
        assert_inert(&format!("weftctl {args:?}"), &out(&o));
    }
    let o = h.weftctl(&["status"]);
    let text = out(&o);
    assert!(
        text.contains(r"versions:  \u{1b}]0;PWNED\u{7}\u{1b}[2J\u{9b}2J\u{202e} (1), 0.1.0 (1)"),
        "{text}"
    );
    // JSON is for programs: exact.
    let o = h.weftctl(&["-o", "json", "status"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("status -o json is JSON");
    let forged = (v["hosts"].as_array().unwrap().iter())
        .find(|h| h["subnet"] == "198.19.150.0/24")
        .expect("the forged host is listed");
    assert_eq!(
        forged["status"]["version"],
        "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{9b}2J\u{202e}"
    );
    assert_eq!(forged["status"]["backend"], "x\r\nhosts:     99 ready");
    // weftd has logged the lease it refuses (its BackendType); the log is inert too.
    let seen = wait_for(Duration::from_secs(10), || {
        h.logs().contains("198.19.150.0-24").then_some(())
    });
    assert!(
        seen.is_some(),
        "weftd never logged the forged lease:\n{}",
        h.logs()
    );
    assert_inert("weftd's log", &h.logs());
}

/// A lease with this host's own identity and another host's address, then proof that the
/// datapath's passes go on: a drift made by hand is repaired and counted exactly once, so
/// the forged lease costs no repair at all.
fn forged_identity_is_refused_once(
    h: &Host,
    forged: &str,
    own: &str,
    make_drift: &dyn Fn(),
    repaired: &dyn Fn() -> bool,
) {
    let key = "198.19.181.0-24";
    let refused = wait_for(Duration::from_secs(10), || {
        let logs = h.logs();
        (logs.contains(key) && logs.contains(&format!("{own} is this host's own"))).then_some(())
    });
    assert!(
        refused.is_some(),
        "no warning about {forged}:\n{}",
        h.logs()
    );
    let before = h.repairs();
    make_drift();
    let back = wait_for(Duration::from_secs(10), || repaired().then_some(()));
    assert!(
        back.is_some(),
        "the drift made by hand was not repaired:\n{}",
        h.logs()
    );
    h.assert_repair_counted(before, "the drift made by hand");
    // The pass that repaired it would have "repaired" the forged lease too; so would the
    // next full pass (the lab resyncs every 5 s).
    h.wait_next_reconcile("after the repair");
    assert_eq!(
        h.repairs(),
        before + 1.0,
        "repairs other than the one made by hand:\n{}",
        h.logs()
    );
    let warnings = h.logs().matches("is this host's own").count();
    assert_eq!(warnings, 1, "warned {warnings} times:\n{}", h.logs());
}

#[test]
fn a_forged_vxlan_lease_with_this_hosts_mac_is_refused_and_never_programmed() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let mac = h1.vtep_mac();
    lab.etcd.put(
        &format!("{SUBNETS_PREFIX}198.19.181.0-24"),
        &format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            h2.ip,
            mac.to_uppercase()
        ),
    );
    let route = h2.subnet().to_string();
    forged_identity_is_refused_once(
        h1,
        "a lease with this host's VTEP MAC",
        &format!("VtepMAC {mac}"),
        &|| {
            h1.ns.ip(&["route", "del", &route]);
        },
        &|| !h1.route_to(h2.subnet()).is_empty(),
    );
    let fdb = h1.fdb_for(&mac);
    assert!(fdb.is_empty(), "h1 sends its own MAC away: {fdb}");
}

#[test]
fn a_forged_wireguard_lease_with_this_hosts_key_is_refused_and_never_repaired() {
    let lab = wg_lab(2, WG_CONFIG, &[]);
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let key = h1.wg_public_key(WG_DEVICE);
    lab.etcd.put(
        &format!("{SUBNETS_PREFIX}198.19.181.0-24"),
        &format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}}}}"#,
            h2.ip
        ),
    );
    let peer = h2.wg_public_key(WG_DEVICE);
    forged_identity_is_refused_once(
        h1,
        "a lease with this host's public key",
        &format!("PublicKey {key}"),
        &|| {
            h1.wg(&["set", WG_DEVICE, "peer", &peer, "remove"]);
        },
        &|| h1.wg_peers(WG_DEVICE).iter().any(|p| p.public_key == peer),
    );
    let peers = h1.wg_peers(WG_DEVICE);
    assert!(
        peers.iter().all(|p| p.public_key != key),
        "its own key is a peer: {peers:?}"
    );
}

#[test]
fn ipv6_lease_parts_the_datapath_refuses_are_refused_by_weftctl_and_the_probes() {
    let mut lab = Lab::dual(2, DUAL_CONFIG);
    lab.start_all(&[]);
    lab.wait_converged6(&[0, 1]);
    let h1 = &lab.hosts[0];
    let own6 = h1.subnet6();
    let own6_key = format!("{}-{}", own6.network(), own6.prefix_len());
    let parts = [
        ("198.19.211.0-24&::-0", "::/0"),
        (
            "198.19.212.0-24&2001:db8:100:cc::-127",
            "2001:db8:100:cc::/127",
        ),
        (
            "198.19.213.0-24&2001:db8:100:cc::-128",
            "2001:db8:100:cc::/128",
        ),
        ("198.19.214.0-24&2001:db8:200::-64", "2001:db8:200::/64"),
    ];
    let own_part = format!("198.19.215.0-24&{own6_key}");
    for (i, key) in parts
        .iter()
        .map(|(k, _)| k.to_string())
        .chain([own_part.clone()])
        .enumerate()
    {
        lab.etcd.put(
            &format!("{SUBNETS_PREFIX}{key}"),
            &format!(
                r#"{{"PublicIP":"198.18.0.{n}","PublicIPv6":"2001:db8::{n}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{n}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"0e:00:00:00:01:{n}"}}}}"#,
                n = 70 + i
            ),
        );
    }
    // weftctl names each part it refuses, by the datapath's rules.
    let o = h1.weftctl(&["leases"]);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    for (key, _) in parts {
        assert!(
            text.contains(&format!("{key}: its IPv6 part is not used by any host")),
            "weftctl leases does not say it skips {key}:\n{text}"
        );
    }
    assert!(text.contains("::/0 (refused)"), "{text}");
    // The probes follow what the datapath programs: the IPv4 parts are peers, the refused
    // IPv6 parts and this host's own IPv6 subnet are not.
    let listed = wait_for(Duration::from_secs(10), || {
        let (code, body) = h1.http_get("/peers");
        (code == 200 && body.contains("198.19.215.0/24")).then_some(body)
    });
    let body =
        listed.unwrap_or_else(|| panic!("/peers never listed the IPv4 parts:\n{}", h1.logs()));
    let ids: Vec<String> = serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    for (_, part) in parts {
        assert!(
            !ids.iter().any(|id| id == part),
            "/peers probes {part}: {ids:?}"
        );
    }
    assert!(
        !ids.contains(&own6.to_string()),
        "/peers probes this host's own IPv6 subnet: {ids:?}"
    );
}

#[test]
fn the_psk_is_shown_only_when_asked_for_and_never_echoed_in_an_error() {
    const PSK: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let etcd = Etcd::new();
    let weftctl = |args: &[&str], stdin: &str| {
        testkit::cmd::with_stdin(
            std::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
                .arg("--etcd-endpoints")
                .arg(etcd.client_url())
                .args(args),
            stdin.as_bytes(),
        )
    };
    let cfg =
        format!(r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"wireguard","PSK":"{PSK}"}}}}"#);
    let o = weftctl(&["config", "set", "-"], &cfg);
    assert!(o.status.success(), "{}", out(&o));
    for args in [&["config", "get"][..], &["-o", "json", "config", "get"]] {
        let o = weftctl(args, "");
        let text = out(&o);
        assert!(o.status.success(), "{text}");
        assert!(
            !text.contains(PSK),
            "weftctl {args:?} shows the PSK:\n{text}"
        );
        assert!(text.contains("\"PSK\": \"(hidden)\""), "{text}");
    }
    let o = weftctl(&["config", "get", "--show-secrets"], "");
    assert!(out(&o).contains(PSK), "{}", out(&o));
    for bad in ["12345678901", "\"not-a-key-12345678901\"", "[12345678901]"] {
        let o = weftctl(
            &["config", "set", "-"],
            &format!(
                r#"{{"Network":"198.19.0.0/16","Backend":{{"Type":"wireguard","PSK":{bad}}}}}"#
            ),
        );
        let text = out(&o);
        assert!(!o.status.success(), "{text}");
        assert!(text.contains("Backend.PSK (hidden)"), "{text}");
        assert!(
            !text.contains("12345678901"),
            "the error echoes the PSK: {text}"
        );
    }
}
