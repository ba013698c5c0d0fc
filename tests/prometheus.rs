//! The Prometheus rules weft ships (dist/prometheus/, installed in /usr/share/weft/prometheus):
//! promtool finds them valid and their unit tests pass (every alert fires on its series and
//! stays silent on a near miss), and a real Prometheus scraping a three-host lab raises the
//! pair alert when a pair is cut and clears it when the path is back, as its HTTP API shows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::lab::{Lab, HEALTHZ_PORT, VXLAN_CONFIG};
use testkit::prometheus::{Alert, Prometheus};
use testkit::wait::poll;

const ALERT: &str = "WeftPeerUnreachable";
/// Prometheus' scrape and evaluation interval in the lab.
const EVERY: Duration = Duration::from_secs(1);

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool (Debian's prometheus package; scripts/setup): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn shipped_rules_are_valid_and_every_alert_passes_its_unit_test() {
    let checked = promtool(&["check", "rules", "weft-rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "weft-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alerting rule has a test that expects it to fire.
    let rules = std::fs::read_to_string(rules_dir().join("weft-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("weft-rules.test.yml")).unwrap();
    let alerts: Vec<&str> = (rules.lines())
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("exp_labels: {{alertname: {a},")),
            "no test expects {a} to fire"
        );
    }
}

/// The pair alert for `instance`, when Prometheus lists it in `state`.
fn alert_in(p: &Prometheus, instance: &str, state: &str) -> Option<Alert> {
    (p.alerts().into_iter()).find(|a| a.name == ALERT && a.instance == instance && a.state == state)
}

#[test]
fn a_cut_pair_fires_the_shipped_alert_within_its_for_and_it_resolves_when_the_path_is_back() {
    let mut lab = Lab::new(3, VXLAN_CONFIG);
    // A 1 s probe interval alone: the timeout follows it (500 ms).
    lab.start_all(&["--probe-interval", "1s", "--probe-down-after", "3"]);
    // Prometheus sits on the underlay, as a monitoring server on the hosts' network would,
    // and scrapes each host's --healthz-ip (0.0.0.0 by default) at its --healthz-port.
    let targets: Vec<String> = (lab.hosts.iter())
        .map(|h| format!("{}:{HEALTHZ_PORT}", h.ip))
        .collect();
    let p = Prometheus::start(
        &lab.underlay,
        &targets,
        &rules_dir().join("weft-rules.yml"),
        EVERY,
    );
    let up = poll(Duration::from_secs(20), Duration::from_millis(250), || {
        let health = p.target_health();
        (health.len() == 3 && health.iter().all(|(_, h)| h == "up")).then_some(())
    });
    assert!(
        up.is_some(),
        "targets: {:?}\n{}",
        p.target_health(),
        p.log()
    );
    let hold = p.rule_for(ALERT).expect("Prometheus loaded the pair alert");
    assert!(
        p.alerts().iter().all(|a| a.name != ALERT),
        "{:?}",
        p.alerts()
    );

    let (h1, h3) = (&lab.hosts[0], &lab.hosts[2]);
    let instance = format!("{}:{HEALTHZ_PORT}", h1.ip);
    lab.cut_vxlan(&h1.ip, &h3.ip);
    let cut = Instant::now();
    let cut_unix = unix_now();
    // weftd decides first (three lost probes); the alert's clock starts at the scrape that
    // sees it.
    let seen = poll(Duration::from_secs(15), Duration::from_millis(100), || {
        (h1.metric("weft_peers_unreachable") == Some(1.0)).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("h1 never reported h3 unreachable:\n{}", h1.logs()));
    let patience = hold + EVERY * 2 + Duration::from_secs(10);
    let firing = poll(patience, Duration::from_millis(200), || {
        alert_in(&p, &instance, "firing").map(|a| (a, Instant::now()))
    });
    let (alert, fired_at) = firing.unwrap_or_else(|| {
        panic!(
            "{ALERT} not firing {patience:?} after h1 saw the cut: {:?}",
            p.alerts()
        )
    });
    let took = fired_at - seen;
    eprintln!(
        "cut → weftd saw it {:?}; firing {:?} after that (for: {hold:?}, scrape and \
         evaluation every {EVERY:?}); API: activeAt {}, value {}",
        seen - cut,
        took,
        alert.active_at,
        alert.value
    );
    // Within its for: plus one scrape and one evaluation (and the API poll's 200 ms).
    assert!(
        took <= hold + EVERY * 2 + Duration::from_millis(500),
        "took {took:?}"
    );
    assert!(
        took >= hold - EVERY,
        "fired before its for: ({took:?} < {hold:?})"
    );
    assert_eq!(alert.value, "1e+00", "{alert:?}");

    lab.uncut_vxlan();
    let back = Instant::now();
    let resolved = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        let left: Vec<Alert> = p.alerts().into_iter().filter(|a| a.name == ALERT).collect();
        left.is_empty().then(Instant::now)
    });
    let resolved = resolved.unwrap_or_else(|| panic!("{ALERT} still listed: {:?}", p.alerts()));
    eprintln!(
        "path back → {ALERT} gone from /api/v1/alerts after {:?}",
        resolved - back
    );
    assert!(
        resolved - back <= Duration::from_secs(10),
        "{:?}",
        resolved - back
    );
    // Prometheus' own record of it: the ALERTS series, firing from its for: on until the
    // evaluation after the path came back.
    let (first, last) = p
        .firing_span(ALERT, &instance, cut_unix - 5.0, unix_now())
        .unwrap_or_else(|| panic!("no firing ALERTS series for {instance}"));
    eprintln!(
        "ALERTS{{alertname=\"{ALERT}\",alertstate=\"firing\"}}: cut at {cut_unix:.3}, first firing \
         sample {first:.3} (+{:.1} s), last {last:.3} (+{:.1} s; path back at +{:.1} s)",
        first - cut_unix,
        last - cut_unix,
        (back - cut).as_secs_f64()
    );
    assert!(
        first - cut_unix >= hold.as_secs_f64(),
        "fired {first} before for: after {cut_unix}"
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}
