//! Host status records: what they cost etcd in a quiet cluster (writes per host per hour,
//! counted as etcd revisions over an idle window), and how long `weftctl status` takes over
//! 1,000 hosts' leases and records, next to etcdctl reading the same keys in one request.

use std::process::Command;
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use weft::status::{DriftRepairs, Stamp, StatusRecord, RECORD_VERSION};

use crate::report::{Table, Target};
use crate::rig::{
    etcd_client, free_subnets, put_leases, start_lab, time_runs, weftd_bin, FakeLease, NsRuntime,
    PREFIX,
};
use testkit::etcd::Etcd;
use testkit::lab::Lab;

pub struct Sizes {
    pub hosts: usize,
    pub idle: Duration,
    pub records: usize,
    pub runs: usize,
}

const LAB_CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#;
const WIDE_CONFIG: &str =
    r#"{"Network":"198.19.0.0/16","SubnetLen":29,"Backend":{"Type":"vxlan"}}"#;

pub fn run(z: &Sizes) -> Vec<Table> {
    vec![idle_writes(z), status_time(z)]
}

/// weftd hosts at their defaults, left alone: every etcd write in the window is counted.
fn idle_writes(z: &Sizes) -> Table {
    eprintln!("status: {} hosts idle for {:?}", z.hosts, z.idle);
    let lab = Lab::new(z.hosts, LAB_CONFIG);
    let mut ds = start_lab(&lab, &[]);
    // Let the first records and any start-up rewrite settle.
    std::thread::sleep(Duration::from_secs(5));
    let records = || {
        let out = lab.etcd.etcdctl_ok(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{PREFIX}/weft/status/"),
        ]);
        out.lines().filter(|l| !l.is_empty()).count()
    };
    let before = (lab.etcd.revision(), records());
    let (messages, took) = crate::convergence::idle_requests(&lab, z.idle);
    let after = (lab.etcd.revision(), records());
    for d in &mut ds {
        d.assert_running();
    }
    let writes = (after.0 - before.0) as f64;
    let per_host_hour = |n: f64| n / z.hosts as f64 * 3600.0 / took.as_secs_f64();
    let mut t = Table::comparison("Status records: etcd writes in a quiet cluster");
    let (none, n) = (Target::None, "");
    t.compare(
        "etcd writes in the window, all hosts",
        writes,
        None,
        n,
        none,
        false,
    );
    t.compare(
        "etcd writes per host per hour",
        per_host_hour(writes),
        None,
        n,
        none,
        false,
    );
    let m = per_host_hour(messages);
    t.compare(
        "gRPC messages etcd received per host per hour",
        m,
        None,
        n,
        none,
        false,
    );
    t.note(format!(
        "{} weftd hosts (release build, default flags: --status-ttl 15s, resync 30s) idle for {} s after start-up; writes = etcd revisions gained in the window; messages = etcd's `grpc_server_msg_received_total` over the same window ({messages} in all); {} status records before, {} after.",
        z.hosts,
        took.as_secs(),
        before.1,
        after.1
    ));
    t
}

fn record(l: &FakeLease) -> String {
    StatusRecord {
        v: RECORD_VERSION,
        version: env!("CARGO_PKG_VERSION").into(),
        backend: "vxlan".into(),
        ready: true,
        since: Stamp::now(),
        public_ip: Some(l.public_ip.into()),
        alive_since: Stamp::now(),
        unreachable: Vec::new(),
        unreachable_count: None,
        drift_repairs: DriftRepairs::default(),
        last_error: None,
        policy: None,
        config: None,
    }
    .to_json()
}

/// `records` leases, each with a status record on its own etcd lease, as live hosts have.
fn fill(etcd: &Etcd, records: usize) {
    etcd.put(&format!("{PREFIX}/config"), WIDE_CONFIG);
    let leases: Vec<FakeLease> = free_subnets(26, &[], records)
        .into_iter()
        .enumerate()
        .map(|(i, s)| FakeLease::nth(s, i as u32, 7))
        .collect();
    let rt = NsRuntime::new(None, 2);
    let url = etcd.client_url();
    rt.run(async move {
        let c = etcd_client(&url).await;
        let ids = put_leases(&c, &leases, 3600).await;
        for (chunk, idc) in leases.chunks(100).zip(ids.chunks(100)) {
            let ops: Vec<TxnOp> = (chunk.iter().zip(idc))
                .map(|(l, id)| {
                    let key = format!(
                        "{PREFIX}/weft/status/{}",
                        weft::subnet::lease_key_name(l.subnet, None)
                    );
                    TxnOp::put(key, record(l), Some(PutOptions::new().with_lease(*id)))
                })
                .collect();
            c.clone()
                .txn(Txn::new().and_then(ops))
                .await
                .expect("writing status records");
        }
    });
}

fn status_time(z: &Sizes) -> Table {
    eprintln!("status: weftctl status over {} records", z.records);
    let etcd = Etcd::new();
    fill(&etcd, z.records);
    let weftctl = weftd_bin().with_file_name("weftctl");
    let url = etcd.client_url();
    let ctl = |args: &'static [&'static str]| {
        let (w, u) = (weftctl.clone(), url.clone());
        move || {
            let mut c = Command::new(&w);
            c.args(["--etcd-endpoints", &u]).args(args);
            c
        }
    };
    let etcdctl = || {
        let mut c = Command::new("/usr/bin/etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={url}"))
            .args(["get", "--prefix", &format!("{PREFIX}/"), "-w", "json"]);
        c
    };
    let status = time_runs(
        z.runs,
        ctl(&["-o", "json", "status", "--pool-warn-below", "0"]),
    );
    let table = time_runs(z.runs, ctl(&["status", "--pool-warn-below", "0"]));
    let leases = time_runs(z.runs, ctl(&["leases"]));
    let base = time_runs(z.runs, etcdctl);
    let mut t = Table::comparison(&format!("weftctl status over {} hosts", z.records));
    t.compare(
        "`weftctl -o json status`",
        status,
        Some(base),
        " ms",
        Target::AtMost(3.0),
        true,
    );
    t.compare(
        "`weftctl status` (table)",
        table,
        Some(base),
        " ms",
        Target::AtMost(3.0),
        true,
    );
    t.compare(
        "`weftctl leases` (each lease's time to live looked up)",
        leases,
        Some(base),
        " ms",
        Target::AtMost(3.0),
        true,
    );
    t.note(format!(
        "{} leases, each with a status record on its own etcd lease, in one etcd on loopback; median of {} runs each, process start included. Baseline: `etcdctl get --prefix {PREFIX}/ -w json`, one request for the same keys.",
        z.records, z.runs
    ));
    t
}
