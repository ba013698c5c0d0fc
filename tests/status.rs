//! Host status records and the cluster view against a real etcd and weftd hosts in network
//! namespaces: records and their fields, a SIGKILLed host shown gone and its subnet reclaimed
//! for a new host, a flannel host without status, exact pool figures, no writes when quiet.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;
use testkit::lab::{make_flannel_device, Host, Lab, ETCD_IP};
use testkit::leases;
use testkit::wait::wait_for;

/// 198.19.0.0/26 in /29s: SubnetMin 198.19.0.8, SubnetMax 198.19.0.56, seven subnets.
const SMALL_CONFIG: &str =
    r#"{"Network":"198.19.0.0/26","SubnetLen":29,"Backend":{"Type":"vxlan"}}"#;
const POOL_TOTAL: u64 = 64 / 8 - 1;
const STATUS_PREFIX: &str = "/coreos.com/network/weft/status/";
const GONE_PREFIX: &str = "/coreos.com/network/weft/gone/";

fn key_name(subnet: Ipv4Net) -> String {
    weft::subnet::lease_key_name(subnet, None)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `weftctl status -o json` with `extra`: its exit code and its JSON.
fn status(host: &Host, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["-o", "json", "status"];
    args.extend(extra);
    let out = host.weftctl(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("weftctl status -o json is not JSON ({e}): {}", text(&out)));
    (out.status.code().unwrap_or(-1), v)
}

/// The state `weftctl status` gives the host of `subnet`.
fn state_of(v: &Value, subnet: Ipv4Net) -> String {
    let hosts = v["hosts"].as_array().expect("hosts in status JSON");
    let h = hosts
        .iter()
        .find(|h| h["subnet"] == subnet.to_string())
        .unwrap_or_else(|| panic!("{subnet} not in {v}"));
    h["state"].as_str().unwrap_or_default().to_string()
}

/// Waits (20 s) until `weftctl status` shows every host in `subnets` in `state`.
fn wait_states(host: &Host, subnets: &[Ipv4Net], state: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(Duration::from_secs(20), || {
        last = status(host, &["--pool-warn-below", "0"]).1;
        subnets
            .iter()
            .all(|s| state_of(&last, *s) == state)
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "not all of {subnets:?} {state} within 20 s: {last:#}"
    );
    last
}

#[test]
fn records_show_each_host_and_a_killed_host_is_gone_then_reclaimed_for_a_new_host() {
    let mut lab = Lab::new(3, SMALL_CONFIG);
    lab.start_all(&["--status-ttl", "3s"]);
    let subnets: Vec<Ipv4Net> = lab.hosts.iter().map(|h| h.subnet()).collect();
    wait_states(&lab.hosts[0], &subnets, "ready");

    // Each record names its host, under the lease's key name, on an etcd lease of its own.
    for (h, s) in lab.hosts.iter().zip(&subnets) {
        let key = format!("{STATUS_PREFIX}{}", key_name(*s));
        let raw = lab.etcd.get(&key).unwrap_or_else(|| panic!("no {key}"));
        let r: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(r["v"], 1, "{r}");
        assert_eq!(r["version"], env!("CARGO_PKG_VERSION"), "{r}");
        assert_eq!(r["backend"], "vxlan", "{r}");
        assert_eq!(r["ready"], true, "{r}");
        assert_eq!(r["public_ip"], h.ip.as_str(), "{r}");
        assert_eq!(r["unreachable"], serde_json::json!([]), "{r}");
        let lease = lab.etcd.key_lease(&key).unwrap();
        assert!(
            lease != 0 && Some(lease) != lab.lease_id(*s),
            "{key} on etcd lease {lease:x}"
        );
    }
    let (code, v) = status(&lab.hosts[0], &["--pool-warn-below", "0"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["recent_drift_repairs"], serde_json::json!([]), "{v:#}");

    // A route deleted by hand is put back, and the record says so.
    lab.hosts[0]
        .ns
        .ip(&["route", "del", &subnets[1].to_string()]);
    let repaired = wait_for(Duration::from_secs(15), || {
        let v = status(&lab.hosts[1], &["--pool-warn-below", "0"]).1;
        let r = v["recent_drift_repairs"].as_array()?.first()?.clone();
        (r["subnet"] == subnets[0].to_string()).then_some(r)
    });
    let r =
        repaired.unwrap_or_else(|| panic!("no drift repair reported:\n{}", lab.hosts[0].logs()));
    assert!(
        r["count"].as_u64() >= Some(1) && r["last"].is_string(),
        "{r}"
    );
    let table = text(&lab.hosts[1].weftctl(&["status", "--pool-warn-below", "0"]));
    assert!(
        table.contains("repairs:   1 host repaired drift within 1h"),
        "{table}"
    );
    let list = lab.hosts[0].weftctl(&["leases"]);
    assert!(text(&list).contains("ALIVE"), "{}", text(&list));
    assert_eq!(text(&list).matches(" yes").count(), 3, "{}", text(&list));

    // SIGKILL: nothing is cleaned up; the record expires with its etcd lease.
    let dead = subnets[2];
    let pid = lab.hosts[2].pid().expect("weftd runs on host 3") as i32;
    let killed = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    lab.hosts[2]
        .wait_exit(Duration::from_secs(5))
        .expect("weftd killed");
    let v = wait_states(&lab.hosts[0], &[dead], "gone");
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "gone only after {took:?}");
    assert!(v["problems"].to_string().contains("is gone since"), "{v:#}");
    assert_eq!(status(&lab.hosts[0], &["--pool-warn-below", "0"]).0, 1);
    assert!(lab
        .etcd
        .get(&format!("{GONE_PREFIX}{}", key_name(dead)))
        .is_some());
    let list = text(&lab.hosts[0].weftctl(&["leases"]));
    assert!(list.contains("no since"), "{list}");

    // Shown, not removed: too recent, then not confirmed.
    let out = text(&lab.hosts[0].weftctl(&["leases", "reclaim", "--gone-for", "1h"]));
    assert!(out.contains("kept: gone for less than 1h"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let out = text(&lab.hosts[0].weftctl(&["leases", "reclaim", "--gone-for", "1s"]));
    assert!(
        out.contains(&dead.to_string()) && out.contains("will be removed"),
        "{out}"
    );
    assert!(out.contains("nothing removed"), "{out}");
    assert!(lab.lease_value(dead).is_some());
    let out = lab.hosts[0].weftctl(&["leases", "reclaim", "--gone-for", "1s", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("reclaimed {dead}")),
        "{}",
        text(&out)
    );
    assert!(lab.lease_value(dead).is_none());
    assert!(lab
        .etcd
        .get(&format!("{GONE_PREFIX}{}", key_name(dead)))
        .is_none());

    // A new host that asks for the freed subnet (through a subnet.env naming it) gets it.
    let i = lab.add_host();
    let file = lab.hosts[i].subnet_file.clone();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(&lab.hosts[2].subnet_file, &file).unwrap();
    lab.hosts[i].start(&["--status-ttl", "3s"]);
    lab.hosts[i].wait_ready();
    assert_eq!(lab.hosts[i].subnet(), dead);
    wait_states(&lab.hosts[0], &[subnets[0], subnets[1], dead], "ready");
    let (code, v) = status(&lab.hosts[0], &["--pool-warn-below", "0"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["hosts"].as_array().unwrap().len(), 3, "{v:#}");
}

/// Each status record's (mod_revision, version), sorted.
fn status_revisions(lab: &Lab) -> Vec<(i64, i64)> {
    let out = lab
        .etcd
        .etcdctl_ok(&["get", "--prefix", STATUS_PREFIX, "-w", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut revs: Vec<(i64, i64)> = v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        kv["mod_revision"].as_i64().unwrap(),
                        kv["version"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    revs.sort();
    revs
}

#[test]
fn a_flannel_host_has_no_status_the_pool_is_counted_exactly_and_a_quiet_cluster_writes_nothing() {
    let mut lab = Lab::new(3, SMALL_CONFIG);
    lab.start_first(2, &[]);
    let weft: Vec<Ipv4Net> = lab.hosts[..2].iter().map(|h| h.subnet()).collect();
    // Host 3 is a flannel host: device by iproute2, lease by etcdctl on an etcd lease.
    let taken = |s: &Ipv4Net| weft.contains(s);
    let free: Vec<Ipv4Net> = (1..8u32)
        .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(0xc613_0000 + i * 8), 29).unwrap())
        .filter(|s| !taken(s))
        .collect();
    let (fl_subnet, reserved) = (free[0], free[1]);
    let fl = &lab.hosts[2];
    let fl_mac = make_flannel_device(&fl.ns, &fl.ip, fl_subnet);
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{fl_mac}"}}}}"#,
        fl.ip
    );
    let fl_key = leases::key(fl_subnet, None);
    lab.etcd.put_on_lease(&fl_key, &value, 3600);
    let out = lab.hosts[0].weftctl(&["reservations", "add", &reserved.to_string(), "198.18.0.200"]);
    assert!(out.status.success(), "{}", text(&out));

    // flanneld on host 3 programs the weft hosts, so they reach it and it answers probes.
    for h in &lab.hosts[..2] {
        let s = h.subnet();
        let gw = s.network().to_string();
        fl.flannel_programs("flannel.1", &s.to_string(), &gw, &h.vtep_mac(), &h.ip);
    }
    let probed = wait_for(Duration::from_secs(12), || {
        let (_, body) = lab.hosts[0].http_get("/peers");
        let peers: Value = serde_json::from_str(&body).ok()?;
        let fl = peers
            .as_array()?
            .iter()
            .find(|p| p["id"] == fl_subnet.to_string())?;
        (fl["state"] == "reachable").then_some(())
    });
    assert!(
        probed.is_some(),
        "probes to the flannel host fail: {:?}",
        lab.hosts[0].http_get("/peers")
    );
    let v = wait_states(&lab.hosts[0], &weft, "ready");
    assert_eq!(state_of(&v, fl_subnet), "no status", "{v:#}");
    assert_eq!(state_of(&v, reserved), "no status", "{v:#}");
    let list = text(&lab.hosts[0].weftctl(&["leases"]));
    let fl_line = list
        .lines()
        .find(|l| l.starts_with(&fl_subnet.to_string()))
        .unwrap();
    assert!(fl_line.trim_end().ends_with(" -"), "{list}");

    // By hand: 7 subnets; 2 weft hosts and 1 flannel host use 3, 1 is reserved, 3 are free.
    let pool = &v["pool"];
    assert_eq!(pool["total"], POOL_TOTAL, "{v:#}");
    assert_eq!(pool["used"], 3, "{v:#}");
    assert_eq!(pool["reserved"], 1, "{v:#}");
    assert_eq!(pool["free"], 3, "{v:#}");
    // 3/7 = 42.9% free: healthy above a 40% threshold, a warning below 50%.
    let (code, v) = status(&lab.hosts[0], &["--pool-warn-below", "40"]);
    assert_eq!(code, 0, "{v:#}");
    let (code, v) = status(&lab.hosts[0], &["--pool-warn-below", "50"]);
    assert_eq!(code, 1, "{v:#}");
    assert!(
        v["problems"]
            .to_string()
            .contains("subnet pool low: 3 of 7 free"),
        "{v:#}"
    );
    let table = text(&lab.hosts[0].weftctl(&["status", "--pool-warn-below", "50", "--matrix"]));
    assert!(
        table.contains("7 subnets: 3 used, 1 reserved, 3 free (42.9% free)  WARNING: below 50%"),
        "{table}"
    );
    assert!(
        table.contains("1 no status") || table.contains("2 no status"),
        "{table}"
    );

    // Quiet: the records are kept alive without being written again. The minute is what
    // is measured; the weftds are seen at work through it (reconciling every 5 s, and
    // keeping their records, on 15 s etcd leases, alive), so the quiet is theirs and not
    // that of stalled processes.
    let before = status_revisions(&lab);
    assert_eq!(before.len(), 2, "{before:?}");
    let revision = lab.etcd.revision();
    let runs: Vec<f64> = lab.hosts[..2].iter().map(Host::reconcile_runs).collect();
    std::thread::sleep(Duration::from_secs(60));
    for (h, runs) in lab.hosts[..2].iter().zip(runs) {
        let now = h.reconcile_runs();
        assert!(
            now >= runs + 10.0,
            "{} reconciled {} times in a quiet minute, resyncing every 5 s:\n{}",
            h.ns.name(),
            now - runs,
            h.logs()
        );
    }
    assert_eq!(
        status_revisions(&lab),
        before,
        "status records written in a quiet minute"
    );
    assert_eq!(
        lab.etcd.revision(),
        revision,
        "etcd written in a quiet minute"
    );

    // etcd unreachable: its own exit code, naming the endpoint.
    lab.etcd.stop();
    let out = lab.hosts[0].weftctl(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("198.18.0.254:2379"), "{}", text(&out));
}

#[test]
fn a_host_cut_off_from_etcd_longer_than_its_ttl_is_shown_gone_and_comes_back_by_itself() {
    let mut lab = Lab::new(2, SMALL_CONFIG);
    lab.start_all(&["--status-ttl", "3s"]);
    let subnets: Vec<Ipv4Net> = lab.hosts.iter().map(|h| h.subnet()).collect();
    let key = format!("{STATUS_PREFIX}{}", key_name(subnets[1]));
    let record = |lab: &Lab| -> Option<Value> {
        let raw = lab.etcd.get(&key)?;
        Some(serde_json::from_str(&raw).unwrap())
    };
    wait_states(&lab.hosts[0], &subnets, "ready");
    let before = record(&lab).expect("host 2's record");

    // Host 2 loses etcd (a blackhole route to it); its containers' network stays as it is.
    let etcd_route = format!("{ETCD_IP}/32");
    lab.hosts[1]
        .ns
        .ip(&["route", "add", "blackhole", &etcd_route]);
    wait_states(&lab.hosts[0], &subnets[1..], "gone");
    std::thread::sleep(Duration::from_secs(2));
    lab.hosts[1]
        .ns
        .ip(&["route", "del", "blackhole", &etcd_route]);

    // Back: a new liveness lease, the record written anew, the gone mark removed with it.
    let deadline = Duration::from_secs(45);
    let back = wait_for(deadline, || {
        let r = record(&lab)?;
        (r["alive_since"] != before["alive_since"] && r["ready"] == true).then_some(r)
    });
    assert!(
        back.is_some(),
        "host 2's record not back within {deadline:?}:\n{}",
        lab.hosts[1].logs()
    );
    assert!(lab
        .etcd
        .get(&format!("{GONE_PREFIX}{}", key_name(subnets[1])))
        .is_none());
    for h in &mut lab.hosts {
        assert!(h.is_running(), "weftd exited while cut off:\n{}", h.logs());
    }
    let (code, v) = status(&lab.hosts[0], &["--pool-warn-below", "0"]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn a_status_ttl_under_3s_is_refused_naming_the_value() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weftd"))
        .args(["--status-ttl", "1s"])
        .output()
        .expect("running weftd");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--status-ttl") && err.contains("\"1s\": must be at least 3s"),
        "{err}"
    );
}
