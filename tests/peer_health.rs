//! weftd watching its overlay: every peer probed through the tunnel, `/peers` and the probe
//! metrics naming a pair of hosts whose VXLAN traffic the underlay drops, and clean again
//! once it passes.

use std::time::{Duration, Instant};

use testkit::lab::{Host, Lab, VXLAN_CONFIG};
use testkit::wait::wait_for;
use weft::subnet::lease_key_name;

const PROBE_FLAGS: [&str; 6] = [
    "--probe-interval",
    "1s",
    "--probe-timeout",
    "500ms",
    "--probe-down-after",
    "3",
];

/// `/peers` on `h`: (id, state) for each peer.
fn peer_states(h: &Host) -> Vec<(String, String)> {
    let (code, body) = h.http_get("/peers");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn state_of(h: &Host, peer: &Host) -> Option<String> {
    let id = peer.subnet().to_string();
    peer_states(h)
        .into_iter()
        .find(|(i, _)| *i == id)
        .map(|(_, s)| s)
}

#[test]
fn a_pair_cut_in_the_underlay_is_named_by_peers_and_metrics_and_clears_when_restored() {
    let mut lab = Lab::new(4, VXLAN_CONFIG);
    lab.start_all(&PROBE_FLAGS);
    let all_reachable = |h: &Host| {
        let s = peer_states(h);
        (s.len() == 3 && s.iter().all(|(_, st)| st == "reachable")).then_some(())
    };
    for h in &lab.hosts {
        assert!(
            wait_for(Duration::from_secs(5), || all_reachable(h)).is_some(),
            "{:?}\n{}",
            peer_states(h),
            h.logs()
        );
    }
    let (h1, h3) = (&lab.hosts[0], &lab.hosts[2]);
    assert_eq!(h1.metric("weft_peers_reachable"), Some(3.0));
    let (code, body) = h1.http_get("/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("weft_probe_rtt_seconds_bucket"), "{body}");

    lab.cut_vxlan(&h1.ip, &h3.ip);
    let cut = Instant::now();
    for (a, b) in [(h1, h3), (h3, h1)] {
        let seen = wait_for(Duration::from_secs(6), || {
            (state_of(a, b).as_deref() == Some("unreachable")).then_some(())
        });
        assert!(
            seen.is_some(),
            "{} does not see {} unreachable: {:?}",
            a.ip,
            b.ip,
            peer_states(a)
        );
    }
    // Three intervals of losses plus the timeout, and a little for the scheduling.
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "took {:?}",
        cut.elapsed()
    );
    assert_eq!(h1.metric("weft_peers_unreachable"), Some(1.0));
    assert_eq!(h1.metric("weft_peers_reachable"), Some(2.0));
    // Host 2 still reaches everyone, and its `weftctl status` names the pair and fails.
    let h2 = &lab.hosts[1];
    assert!(all_reachable(h2).is_some(), "{:?}", peer_states(h2));
    // A pair is named lowest subnet first.
    let mut subnets = [h1.subnet(), h3.subnet()];
    subnets.sort();
    let subnets = subnets.map(|s| s.to_string());
    let named = wait_for(Duration::from_secs(3), || {
        let out = h2.weftctl(&["-o", "json", "status"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let pairs = v["unreachable_pairs"].as_array()?;
        let pair: Vec<String> = pairs.first().map(|p| {
            [&p["a"], &p["b"]]
                .map(|x| x.as_str().unwrap_or("").to_string())
                .to_vec()
        })?;
        (out.status.code() == Some(1) && pairs.len() == 1 && pair == subnets).then_some(())
    });
    assert!(named.is_some(), "{:?}", h2.weftctl(&["status"]));
    // Both directions: each host's own record names the other.
    for (a, b) in [(h1, h3), (h3, h1)] {
        let key = format!(
            "/coreos.com/network/weft/status/{}",
            lease_key_name(a.subnet(), None)
        );
        let record = lab
            .etcd
            .get(&key)
            .unwrap_or_else(|| panic!("no record at {key}"));
        assert!(
            record.contains(&lease_key_name(b.subnet(), None)),
            "{key} does not name {}: {record}",
            b.subnet()
        );
    }
    // The table names each host of the pair by subnet and public address, and counts in
    // the singular: "1 pair", not "1 pairs".
    let table = h2.weftctl(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let ip_of = |s: &str| {
        [h1, h3]
            .into_iter()
            .find(|h| h.subnet().to_string() == s)
            .map(|h| h.ip.clone())
            .unwrap()
    };
    let line = format!(
        "  {} ({}) <-> {} ({}) since ",
        subnets[0],
        ip_of(&subnets[0]),
        subnets[1],
        ip_of(&subnets[1])
    );
    assert!(text.contains(&line), "no line {line:?} in:\n{text}");
    assert!(
        text.contains("reach:     1 pair cannot reach each other\n"),
        "{text}"
    );
    assert!(text.contains("unhealthy: 1 problem\n"), "{text}");

    lab.uncut_vxlan();
    for h in [h1, h3] {
        assert!(
            wait_for(Duration::from_secs(4), || all_reachable(h)).is_some(),
            "{} not clean again: {:?}",
            h.ip,
            peer_states(h)
        );
    }
    assert_eq!(h1.metric("weft_peers_unreachable"), Some(0.0));
    // A record is written at most once per MIN_GAP: the one that says the pair is back may
    // wait for the gap since the one that said it was cut.
    let clean = wait_for(weft::status::MIN_GAP + Duration::from_secs(3), || {
        (lab.hosts[1].weftctl(&["status"]).status.code() == Some(0)).then_some(())
    });
    assert!(clean.is_some(), "{:?}", lab.hosts[1].weftctl(&["status"]));
}

#[test]
fn peers_is_json_with_every_field_and_unknown_paths_still_say_where_to_look() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&PROBE_FLAGS);
    let h = &lab.hosts[0];
    let ok = wait_for(Duration::from_secs(5), || {
        (state_of(h, &lab.hosts[1]).as_deref() == Some("reachable")).then_some(())
    });
    assert!(ok.is_some(), "{}", h.logs());
    let (_, body) = h.http_get("/peers");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = &v[0];
    assert_eq!(p["id"], lab.hosts[1].subnet().to_string());
    assert_eq!(p["addr"], lab.hosts[1].subnet().network().to_string());
    // The host an operator looks for: its public address from the lease.
    assert_eq!(p["public_ip"], lab.hosts[1].ip);
    assert!(p["last_rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{p}");
    for field in ["loss", "since", "sent", "lost"] {
        assert!(!p[field].is_null(), "{field} missing in {p}");
    }
    // A VXLAN host has no handshakes: no WireGuard series at all.
    let metrics = h.http_get("/metrics").1;
    assert!(!metrics.contains("weft_wireguard_handshake"), "{metrics}");
    let (code, body) = h.http_get("/nope");
    assert_eq!(code, 404);
    assert!(body.contains("/peers"));
}
