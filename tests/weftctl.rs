//! The weftctl binary against a real etcd: tables, JSON, revoke, reservations, config, watch,
//! and a prompt failure when etcd is unreachable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::cmd::with_stdin;
use testkit::etcd::{with_config, Etcd};
use testkit::leases::vxlan_host;
use testkit::wait::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_weftctl");
const CFG: &str = r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const HOUR: Duration = Duration::from_secs(3600);

fn weftctl(etcd: &Etcd, args: &[&str]) -> Output {
    etcd.weftctl(args)
}

fn ok(etcd: &Etcd, args: &[&str]) -> String {
    let out = weftctl(etcd, args);
    assert!(
        out.status.success(),
        "weftctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(etcd: &Etcd, args: &[&str]) -> String {
    let out = weftctl(etcd, args);
    assert!(!out.status.success(), "weftctl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn set_config(etcd: &Etcd, cfg: &str) -> Output {
    with_stdin(
        Command::new(BIN)
            .env_clear()
            .env("WEFTD_ETCD_ENDPOINTS", etcd.client_url())
            .args(["config", "set", "-"]),
        cfg.as_bytes(),
    )
}

#[tokio::test]
async fn config_set_validates_and_get_shows_it() {
    let etcd = Etcd::new();
    let e = fails(&etcd, &["config", "get"]);
    assert!(
        e.contains("no network config at /coreos.com/network/config"),
        "{e}"
    );

    let out = set_config(
        &etcd,
        r#"{"Network": "198.19.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}"#,
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("SubnetLen 31"), "{e}");
    assert_eq!(etcd.get("/coreos.com/network/config"), None);

    let out = set_config(&etcd, CFG);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(etcd.get("/coreos.com/network/config").unwrap(), CFG);
    assert_eq!(ok(&etcd, &["config", "get"]).trim_end(), CFG);

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        r#"{"Network": "198.19.0.0/20", "Backend": {"Type": "host-gw"}}"#,
    )
    .unwrap();
    ok(&etcd, &["config", "set", file.path().to_str().unwrap()]);
    let v: Value = serde_json::from_str(&ok(&etcd, &["config", "get", "-o", "json"])).unwrap();
    assert_eq!(v["Network"], "198.19.0.0/20");
    assert_eq!(v["SubnetLen"], 24);
    assert_eq!(v["SubnetMin"], "198.19.1.0");
    assert_eq!(v["SubnetMax"], "198.19.15.0");
    assert_eq!(v["Backend"]["Type"], "host-gw");
}

/// Issue 13's example: every problem of a refused config is named once, with its field and
/// value, and nothing is stored.
#[tokio::test]
async fn config_set_names_every_problem_once() {
    let etcd = Etcd::new();
    let out = set_config(&etcd, r#"{"Network":"198.19.0.0/16","SubnetLen":31}"#);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(0));
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("SubnetLen 31: must be at most 30"), "{e}");
    assert!(e.contains("Backend.Type udp: Backend is absent"), "{e}");
    assert!(e.contains("2 problems"), "{e}");
    for line in e.lines() {
        for needle in ["SubnetLen 31", "Backend.Type udp", "Backend is absent"] {
            assert!(line.matches(needle).count() <= 1, "repeated: {line}");
        }
    }
    let mut seen = std::collections::HashSet::new();
    for line in e.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(seen.insert(line), "line repeated: {line}\n{e}");
    }
    assert_eq!(etcd.get("/coreos.com/network/config"), None);
}

#[tokio::test]
async fn leases_table_and_json() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let b = store
        .acquire_lease(
            &cfg,
            &vxlan_host(4, 2),
            Some("198.19.20.0/24".parse().unwrap()),
            HOUR,
        )
        .await
        .unwrap();
    let a = store
        .acquire_lease(
            &cfg,
            &vxlan_host(4, 1),
            Some("198.19.3.0/24".parse().unwrap()),
            HOUR,
        )
        .await
        .unwrap();
    ok(
        &etcd,
        &["reservations", "add", "198.19.9.0/24", "198.18.4.9"],
    );
    etcd.put("/coreos.com/network/subnets/198.19.7.0-24", "{broken");

    // Plain `leases` and `leases list` are the same table, sorted by subnet.
    let out = weftctl(&etcd, &["leases"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table, ok(&etcd, &["leases", "list"]));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("198.19.7.0-24"),
        "bad lease not reported: {stderr}"
    );
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "EXPIRES", "ALIVE"]
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert_eq!(
        &lines[1][..4],
        ["198.19.3.0/24", "198.18.4.1", "vxlan", "0e:2a:00:00:04:01"]
    );
    assert!(
        lines[1][4].starts_with("59m") || lines[1][4].starts_with("1h"),
        "{table}"
    );
    assert_eq!(
        &lines[2],
        &["198.19.9.0/24", "198.18.4.9", "-", "-", "reserved", "-"]
    );
    assert_eq!(&lines[3][..2], ["198.19.20.0/24", "198.18.4.2"]);

    let v: Value = serde_json::from_str(&ok(&etcd, &["leases", "list", "-o", "json"])).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    for o in arr {
        let mut keys: Vec<&String> = o.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "alive",
                "backend_data",
                "backend_type",
                "backend_v6_data",
                "expires_at",
                "gone_since",
                "ipv6_subnet",
                "public_ip",
                "public_ipv6",
                "public_key",
                "public_key_v6",
                "refused",
                "reserved",
                "subnet"
            ]
        );
    }
    assert_eq!(arr[0]["subnet"], a.subnet.to_string());
    assert_eq!(arr[0]["public_ip"], "198.18.4.1");
    assert_eq!(arr[0]["backend_type"], "vxlan");
    assert_eq!(
        arr[0]["backend_data"],
        serde_json::json!({"VNI": 1, "VtepMAC": "0e:2a:00:00:04:01"})
    );
    assert_eq!(arr[0]["reserved"], false);
    // Nothing of a plain IPv4 lease is refused.
    assert_eq!(arr[0]["refused"], serde_json::json!({}));
    // No status record: not known to be a weft host, so neither alive nor gone.
    assert!(arr[0]["alive"].is_null() && arr[0]["gone_since"].is_null());
    let at = humantime::parse_rfc3339(arr[0]["expires_at"].as_str().unwrap()).unwrap();
    let left = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500) && left <= HOUR, "{left:?}");
    assert_eq!(arr[1]["reserved"], true);
    assert!(arr[1]["expires_at"].is_null());
    assert!(arr[1]["backend_data"].is_null());
    assert_eq!(arr[2]["subnet"], b.subnet.to_string());

    // `-o json` before the subcommand works too.
    // (The two listings may straddle a second boundary, so expiry times are left out.)
    let without_expiry = |mut v: Value| {
        for l in v.as_array_mut().unwrap() {
            l.as_object_mut().unwrap().remove("expires_at");
        }
        v
    };
    let v2: Value = serde_json::from_str(&ok(&etcd, &["-o", "json", "leases"])).unwrap();
    assert_eq!(without_expiry(v2), without_expiry(v.clone()));

    // show: by subnet (either spelling), by an address in it, by PublicIP.
    for target in [
        "198.19.3.0/24",
        "198.19.3.0-24",
        "198.19.3.77",
        "198.18.4.1",
    ] {
        let o: Value =
            serde_json::from_str(&ok(&etcd, &["leases", "show", target, "-o", "json"])).unwrap();
        assert_eq!(o["subnet"], "198.19.3.0/24", "{target}");
        assert_eq!(o["public_ip"], "198.18.4.1", "{target}");
    }
    let shown = ok(&etcd, &["leases", "show", "198.19.3.0/24"]);
    assert!(
        shown.contains("198.18.4.1") && shown.contains("0e:2a:00:00:04:01"),
        "{shown}"
    );
    let e = fails(&etcd, &["leases", "show", "198.19.99.1"]);
    assert!(e.contains("no lease for 198.19.99.1"), "{e}");

    let v: Value =
        serde_json::from_str(&ok(&etcd, &["reservations", "list", "-o", "json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["subnet"], "198.19.9.0/24");
}

#[tokio::test]
async fn revoke_and_reservations() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let a = store
        .acquire_lease(&cfg, &vxlan_host(4, 1), None, HOUR)
        .await
        .unwrap();
    let key = format!("/coreos.com/network/subnets/{}", a.key_name());

    let out = ok(&etcd, &["leases", "revoke", &a.subnet.to_string()]);
    assert!(out.contains(&a.subnet.to_string()), "{out}");
    assert_eq!(etcd.get(&key), None);
    assert_eq!(etcd.lease_count().await, 0, "the etcd lease is revoked too");
    let e = fails(&etcd, &["leases", "revoke", &a.subnet.to_string()]);
    assert!(e.contains("no lease"), "{e}");

    ok(
        &etcd,
        &["reservations", "add", "198.19.5.0/24", "198.18.4.5"],
    );
    assert_eq!(
        etcd.key_lease("/coreos.com/network/subnets/198.19.5.0-24"),
        Some(0)
    );
    let e = fails(
        &etcd,
        &["reservations", "add", "198.19.5.0/24", "198.18.4.6"],
    );
    assert!(e.contains("198.18.4.5"), "{e}");
    let e = fails(
        &etcd,
        &["reservations", "add", "198.18.5.0/24", "198.18.4.6"],
    );
    assert!(e.contains("not a subnet of the network"), "{e}");
    let e = fails(&etcd, &["leases", "revoke", "198.19.5.0/24"]);
    assert!(e.contains("reservation"), "{e}");

    // The reserved host gets it; another host never does.
    let b = store
        .acquire_lease(
            &cfg,
            &vxlan_host(4, 6),
            Some("198.19.5.0/24".parse().unwrap()),
            HOUR,
        )
        .await
        .unwrap();
    assert_ne!(b.subnet.to_string(), "198.19.5.0/24");
    let e = fails(&etcd, &["reservations", "remove", &b.subnet.to_string()]);
    assert!(e.contains("not a reservation"), "{e}");
    let mine = store
        .acquire_lease(&cfg, &vxlan_host(4, 5), None, HOUR)
        .await
        .unwrap();
    assert_eq!(mine.subnet.to_string(), "198.19.5.0/24");

    ok(&etcd, &["reservations", "remove", "198.19.5.0-24"]);
    assert_eq!(etcd.get("/coreos.com/network/subnets/198.19.5.0-24"), None);
    let e = fails(&etcd, &["reservations", "remove", "198.19.5.0/24"]);
    assert!(e.contains("no reservation"), "{e}");
}

/// Two keys on one etcd lease (as a host's lease and its status record are): revoking the
/// subnet deletes exactly its key; the other key and the etcd lease stay until nothing is left.
#[tokio::test]
async fn revoke_deletes_only_that_subnet_not_the_etcd_lease_it_shares() {
    let etcd = Etcd::new();
    let store = etcd.store().await;
    store.put_config(CFG).await.unwrap();
    let id = etcd.grant(3600);
    let value = vxlan_host(4, 1).to_json();
    let one = "/coreos.com/network/subnets/198.19.1.0-24";
    let two = "/coreos.com/network/subnets/198.19.2.0-24";
    for key in [one, two] {
        etcd.etcdctl_ok(&["put", &format!("--lease={id}"), key, &value]);
    }
    let shared = etcd.key_lease(one).unwrap();
    assert_ne!(shared, 0);
    assert_eq!(etcd.key_lease(two), Some(shared));

    let out = ok(&etcd, &["leases", "revoke", "198.19.1.0/24"]);
    assert!(out.contains("198.19.1.0/24"), "{out}");
    assert_eq!(etcd.get(one), None, "the revoked key is gone");
    assert_eq!(
        etcd.get(two).as_deref(),
        Some(value.as_str()),
        "the other key stays"
    );
    assert_eq!(etcd.key_lease(two), Some(shared), "still on its etcd lease");
    let listed = ok(&etcd, &["leases", "list"]);
    assert!(listed.contains("198.19.2.0/24"), "{listed}");
    assert!(!listed.contains("198.19.1.0/24"), "{listed}");

    // The last key goes, and with it the etcd lease, which would only linger.
    ok(&etcd, &["leases", "revoke", "198.19.2.0-24"]);
    assert_eq!(etcd.get(two), None);
    assert_eq!(etcd.lease_count().await, 0);
}

#[tokio::test]
async fn watch_prints_one_line_per_event() {
    let (etcd, store, cfg) = with_config(CFG).await;
    let watchers = etcd.metric("etcd_debugging_mvcc_watcher_total");
    let mut child = Command::new(BIN)
        .env_clear()
        .args([
            "--etcd-endpoints",
            &etcd.client_url(),
            "leases",
            "watch",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("running weftctl");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // weftctl lists the leases, then watches from that listing's revision: once etcd counts
    // its watch, every change made from now on is one weftctl will print.
    let watching = wait_for(Duration::from_secs(10), || {
        (etcd.metric("etcd_debugging_mvcc_watcher_total") > watchers).then_some(())
    });
    assert!(
        watching.is_some(),
        "weftctl leases watch did not start watching within 10 s"
    );
    let a = store
        .acquire_lease(&cfg, &vxlan_host(4, 1), None, HOUR)
        .await
        .unwrap();
    store.revoke_lease(a.subnet).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no watch line within 10s")
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        got.push((
            v["event"].as_str().unwrap().to_string(),
            v["subnet"].as_str().unwrap().to_string(),
            v["public_ip"].as_str().unwrap().to_string(),
        ));
    }
    let s = a.subnet.to_string();
    assert_eq!(
        got,
        [
            ("added".to_string(), s.clone(), "198.18.4.1".to_string()),
            ("removed".to_string(), s, "198.18.4.1".to_string())
        ]
    );
}

#[test]
fn unreachable_etcd_exits_within_ten_seconds_naming_the_endpoints() {
    // A port that refuses, and one that accepts but never answers.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for endpoints in [
        format!("http://127.0.0.1:{refused}"),
        format!("http://127.0.0.1:{silent_port}"),
        format!("http://127.0.0.1:{refused},http://127.0.0.1:{silent_port}"),
    ] {
        let started = Instant::now();
        let out = Command::new(BIN)
            .env_clear()
            .env("WEFTD_ETCD_ENDPOINTS", &endpoints)
            .args(["leases", "list"])
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(!out.status.success());
        assert!(took < Duration::from_secs(10), "took {took:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(&endpoints), "{err}");
    }
}

#[tokio::test]
async fn an_etcd_that_stops_is_reported_not_waited_for() {
    let mut etcd = Etcd::new();
    set_config(&etcd, CFG);
    etcd.stop();
    let started = Instant::now();
    let e = fails(&etcd, &["config", "get"]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(e.contains(&etcd.client_url()), "{e}");
    etcd.start();
    assert_eq!(ok(&etcd, &["config", "get"]).trim_end(), CFG);
}

/// A large fleet's listing is one etcd round trip: expiries (one request per lease) are
/// looked up only when asked, and the table says which it did.
#[tokio::test]
async fn a_large_fleet_is_listed_without_an_expiry_lookup_per_lease_unless_asked() {
    let etcd = Etcd::new();
    let cfg = r#"{"Network":"198.19.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#;
    assert!(set_config(&etcd, cfg).status.success());
    let mut c = etcd_client::Client::connect([etcd.client_url()], None)
        .await
        .unwrap();
    let lease = c.lease_grant(3600, None).await.unwrap().id();
    let value = serde_json::to_string(&vxlan_host(4, 1)).unwrap();
    let on_lease = etcd_client::PutOptions::new().with_lease(lease);
    for i in 0..501u32 {
        let key = format!(
            "/coreos.com/network/subnets/198.19.{}.{}-26",
            i / 4,
            i % 4 * 64
        );
        c.put(key, value.clone(), Some(on_lease.clone()))
            .await
            .unwrap();
    }
    let before = etcd.metric_sum(
        "grpc_server_handled_total",
        &[("grpc_method", "LeaseTimeToLive")],
    );
    let out = weftctl(&etcd, &["leases"]);
    assert!(out.status.success());
    let (table, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    let after = etcd.metric_sum(
        "grpc_server_handled_total",
        &[("grpc_method", "LeaseTimeToLive")],
    );
    assert_eq!(
        after, before,
        "no expiry looked up by default for 501 leases"
    );
    assert!(
        stderr.contains("expiries not looked up for 501 leases")
            && stderr.contains("weftctl leases list --expiry"),
        "{stderr}"
    );
    assert_eq!(table.lines().count(), 502, "{table}");
    assert!(table
        .lines()
        .skip(1)
        .all(|l| l.split_whitespace().nth(4) == Some("?")));

    let asked = ok(&etcd, &["leases", "list", "--expiry"]);
    let looked_up = etcd.metric_sum(
        "grpc_server_handled_total",
        &[("grpc_method", "LeaseTimeToLive")],
    );
    assert!(looked_up > after, "--expiry looks the expiries up");
    let line = asked.lines().nth(1).unwrap();
    let expires = line.split_whitespace().nth(4).unwrap();
    assert!(
        expires.starts_with("59m") || expires.starts_with("1h"),
        "{asked}"
    );
}
