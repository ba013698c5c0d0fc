//! weftd and an invalid network config: it waits for a valid one and logs every problem, each
//! on a line of its own and once, however often it reads the config again.

use std::time::Duration;

use testkit::bare_weftd::BareWeftd;
use testkit::etcd::Etcd;
use testkit::leases::CONFIG_KEY;
use testkit::wait::wait_for;

#[test]
fn weftd_logs_every_problem_of_an_invalid_config_once() {
    let etcd = Etcd::new();
    etcd.put(CONFIG_KEY, r#"{"Network":"198.19.0.0/16","SubnetLen":31}"#);
    // Safe outside a namespace of its own: with no valid config it never gets past waiting.
    let mut d = BareWeftd::start_serving(&["--etcd-endpoints", &etcd.client_url()]);
    // weftd reads the config again about every second while it waits; etcd counts the
    // requests (one or two a read). Eight more after the problems were logged are at least
    // four more reads: three chances to log them again.
    let reads = || {
        ["Range", "Txn"]
            .iter()
            .map(|m| etcd.metric_sum("grpc_server_handled_total", &[("grpc_method", m)]))
            .sum::<f64>()
    };
    let logged = d.wait_line(
        Duration::from_secs(15),
        &["cannot use the network config", "Backend.Type udp"],
    );
    let reads = logged.map(|_| reads()).and_then(|first| {
        wait_for(Duration::from_secs(15), || {
            let now = reads();
            (now >= first + 8.0).then_some(now)
        })
    });
    let still_waiting = d.is_running();
    d.stop();
    let log = d.log.join("\n");
    assert!(
        reads.is_some(),
        "weftd did not log the problems and read the config 4 more times within 30 s:\n{log}"
    );
    assert!(still_waiting, "weftd exited:\n{log}");

    let key = "cannot use the network config: ";
    for problem in [
        "SubnetLen 31: must be at most 30",
        "Backend.Type udp: Backend is absent",
    ] {
        let found: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("{key}{problem}")))
            .filter(|l| l.contains("key=/coreos.com/network/config"))
            .collect();
        assert_eq!(found.len(), 1, "{problem}:\n{log}");
        assert!(found[0].contains("WARN"), "{}", found[0]);
    }
}

/// Flags whose defaults derive from another flag: the one flag a user sets alone is accepted
/// (the default follows it), and a set value that cannot fit the other's default is refused
/// with a message naming both and the flag to add.
#[test]
fn weftd_defaults_fit_the_one_flag_a_user_sets() {
    let etcd = Etcd::new();
    // No config in etcd: weftd gets as far as waiting for it, which is past flag checking,
    // and never touches the network.
    for flags in [
        &["--probe-interval", "1s"][..],
        &["--probe-interval", "300ms"][..],
        &["--subnet-lease-ttl", "30m"][..],
    ] {
        let mut args = vec!["--etcd-endpoints".to_string(), etcd.client_url()];
        args.extend(flags.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = BareWeftd::start_serving(&args);
        let up = wait_for(Duration::from_secs(10), || {
            d.metric("weft_ready").map(|_| ())
        });
        let running = d.is_running();
        d.stop();
        assert!(
            up.is_some() && running,
            "weftd {flags:?} alone was refused or did not serve:\n{}",
            d.log.join("\n")
        );
    }

    let mut d = BareWeftd::start(&[
        "--etcd-endpoints",
        &etcd.client_url(),
        "--probe-timeout",
        "6s",
    ]);
    let status = d.wait_exit(Duration::from_secs(10));
    d.read_to_end(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{:?}", d.log);
    assert!(
        d.log.iter().any(|l| l.contains(
            "--probe-timeout 6s: must be shorter than --probe-interval, whose default is 5s; \
             set a longer --probe-interval too"
        )),
        "{:#?}",
        d.log
    );
}
