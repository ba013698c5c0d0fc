//! weftd and an invalid network config: it waits for a valid one and logs every problem, each
//! on a line of its own and once, however often it reads the config again.

use std::time::Duration;

use testkit::bare_weftd::BareWeftd;
use testkit::etcd::Etcd;

#[test]
fn weftd_logs_every_problem_of_an_invalid_config_once() {
    let etcd = Etcd::new();
    etcd.put(
        "/coreos.com/network/config",
        r#"{"Network":"198.19.0.0/16","SubnetLen":31}"#,
    );
    // Safe outside a namespace of its own: with no valid config it never gets past waiting.
    let mut d = BareWeftd::start(&["--etcd-endpoints", &etcd.client_url()]);
    // Long enough for weftd to read the config a few times.
    d.read_for(Duration::from_secs(4));
    let still_waiting = d.is_running();
    let log = d.log.join("\n");
    assert!(still_waiting, "weftd exited:\n{log}");

    let key = "cannot use the network config at /coreos.com/network/config: ";
    for problem in [
        "SubnetLen 31: must be at most 30",
        "Backend.Type udp: Backend is absent",
    ] {
        let found: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("{key}{problem}")))
            .collect();
        assert_eq!(found.len(), 1, "{problem}:\n{log}");
        assert!(found[0].contains("WARN"), "{}", found[0]);
    }
}
