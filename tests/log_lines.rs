//! What many peers at once write to weftd's log: one event, a few lines, whatever the number
//! of peers. Forty peers join in one etcd transaction, become unreachable together (nobody
//! answers at their addresses), and lose their routes at once: each event is
//! one line (two when a second's log window splits it), never one per peer. Counted on a real
//! weftd's log, where the counts are exact.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use testkit::lab::{Lab, VXLAN_CONFIG};
use testkit::leases;
use testkit::wait::wait_for;

const PEERS: u8 = 40;

/// weftd's log lines at INFO and above that contain `what`.
fn lines(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| !l.contains("DEBUG") && l.contains(what))
        .map(str::to_string)
        .collect()
}

/// The sum of the `count=` fields of `lines` (a line about one peer counts one).
fn counted(lines: &[String]) -> u64 {
    (lines.iter())
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("count=")?.parse().ok())
                .unwrap_or(1)
        })
        .sum()
}

#[test]
fn many_peers_at_once_are_a_few_log_lines() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    lab.hosts[0].start(&["--probe-interval", "1s", "--probe-timeout", "200ms"]);
    lab.hosts[0].wait_ready();
    let h = &lab.hosts[0];

    // Forty peers nobody answers for (their public addresses lead nowhere), in one batch.
    let kvs: Vec<(String, String)> = (1..=PEERS)
        .map(|i| {
            let subnet = Ipv4Net::new(Ipv4Addr::new(198, 19, 100 + i, 0), 24).expect("subnet");
            let mut attrs = leases::vxlan_host(9, i);
            attrs.public_ip = Ipv4Addr::new(198, 18, 200, i);
            (leases::key(subnet, None), attrs.to_json())
        })
        .collect();
    lab.etcd.put_all(&kvs);
    let programmed = wait_for(Duration::from_secs(10), || {
        (h.metric("weft_peers_programmed") == Some(f64::from(PEERS))).then_some(())
    });
    assert!(
        programmed.is_some(),
        "weftd did not program the {PEERS} peers:\n{}",
        h.logs()
    );
    let all_down = wait_for(Duration::from_secs(20), || {
        (h.metric("weft_peers_unreachable") == Some(f64::from(PEERS))).then_some(())
    });
    assert!(
        all_down.is_some(),
        "the {PEERS} peers are not all unreachable:\n{}",
        h.logs()
    );

    // Every route through the device goes: weftd puts them back in one pass.
    let repairs = h.repairs();
    h.ns.ip(&["route", "flush", "dev", "flannel.1"]);
    let mended = wait_for(Duration::from_secs(20), || {
        (h.repairs() >= repairs + f64::from(PEERS)).then_some(())
    });
    assert!(
        mended.is_some(),
        "the objects were not put back:\n{}",
        h.logs()
    );
    // The log window of the probes' changes closes a second after the first change.
    std::thread::sleep(Duration::from_millis(1500));

    let log = h.logs();
    let joined = lines(&log, "joined");
    assert_eq!(joined.len(), 1, "{joined:#?}");
    assert_eq!(counted(&joined), u64::from(PEERS), "{joined:#?}");
    let down = lines(&log, "unreachable");
    assert!((1..=2).contains(&down.len()), "{down:#?}");
    assert_eq!(counted(&down), u64::from(PEERS), "{down:#?}");
    let repaired = lines(&log, "drift repaired");
    assert_eq!(repaired.len(), 1, "{repaired:#?}");
    assert!(counted(&repaired) >= u64::from(PEERS), "{repaired:#?}");
}
