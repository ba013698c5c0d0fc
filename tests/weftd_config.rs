//! weftd and an invalid network config: it waits for a valid one and logs every problem, each
//! on a line of its own and once, however often it reads the config again.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::etcd::Etcd;

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

#[test]
fn weftd_logs_every_problem_of_an_invalid_config_once() {
    let etcd = Etcd::new();
    etcd.put(
        "/coreos.com/network/config",
        r#"{"Network":"198.19.0.0/16","SubnetLen":31}"#,
    );
    // Safe outside a namespace of its own: with no valid config it never gets past waiting.
    let mut child = Command::new(WEFTD)
        .env_clear()
        .args(["--etcd-endpoints", &etcd.client_url()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weftd");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Long enough for weftd to read the config a few times.
    let until = Instant::now() + Duration::from_secs(4);
    let mut log = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => break,
        }
    }
    let still_waiting = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
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
