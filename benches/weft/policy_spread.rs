//! Network policy across a lab of hosts running weftd: a policy written to etcd (the key and
//! document `weftctl policy apply` writes) until every host's nftables hold it, next to etcd
//! delivering the same write to a bare watcher; and weftd's memory with 100 policies and
//! 1,000 workloads in etcd next to the same lab before they came.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::lab::{Lab, VXLAN_CONFIG};
use testkit::netns::Netns;
use weft::firewall::policy::rules::counter_name;
use weft::firewall::policy::Policy;

use crate::policy::{policy, workload};
use crate::report::{max, median, percentile, Table, Target};
use crate::rig::{etcd_client, ms, start_lab, watch_puts, NsRuntime, Put, PREFIX};

pub struct Sizes {
    pub hosts: usize,
    pub policies: usize,
    pub workloads: usize,
    pub runs: usize,
}

/// `nft monitor` in a host's namespace: every line it prints, timestamped, to `tx`.
struct Monitor(Child);

impl Monitor {
    fn start(ns: &Netns, host: usize, tx: mpsc::Sender<(usize, String, Instant)>) -> Monitor {
        // Line-buffered: a pipe would otherwise hold nft's lines back.
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "stdbuf",
                "-oL",
                "nft",
                "monitor",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nft monitor");
        let out = child.stdout.take().expect("nft monitor's stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((host, line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Monitor(child)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `p` as `weftctl policy apply` does; returns when etcd acknowledged, and when the
/// write was started.
fn put_policy(rt: &NsRuntime, c: &etcd_client::Client, p: &Policy) -> Instant {
    let key = format!("{PREFIX}/weft/policy/policies/{}", p.id());
    let (mut c, doc) = (c.clone(), p.to_document().to_string());
    rt.run(async move {
        let t0 = Instant::now();
        c.put(key, doc, None).await.expect("writing a policy");
        t0
    })
}

/// Waits until every host's monitor printed a line naming `p`'s chains (its tag); when each did.
fn held_by_all(
    rx: &mpsc::Receiver<(usize, String, Instant)>,
    hosts: usize,
    p: &Policy,
) -> Vec<Instant> {
    let name = counter_name(p);
    let tag = name.trim_start_matches("drop_");
    let mut seen: Vec<Option<Instant>> = vec![None; hosts];
    while seen.iter().any(Option::is_none) {
        let (h, line, t) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{} is not in every host's tables after 10 s", p.id()));
        if line.contains(tag) && seen[h].is_none() {
            seen[h] = Some(t);
        }
    }
    seen.into_iter().flatten().collect()
}

/// Waits until the bare watcher saw a PUT of `key`.
fn delivered(rx: &mpsc::Receiver<Put>, key: &str) -> Instant {
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(p) if p.key == key => return p.at,
            Ok(_) => continue,
            Err(_) => panic!("the baseline watcher never saw {key}"),
        }
    }
}

/// A bare watcher of the policies' prefix: each PUT's key, when it was delivered.
fn watcher(rt: &NsRuntime, c: &etcd_client::Client) -> mpsc::Receiver<Put> {
    let (tx, rx) = mpsc::channel();
    watch_puts(rt, c, &format!("{PREFIX}/weft/policy/policies/"), true, tx);
    rx
}

pub fn run(z: &Sizes) -> Vec<Table> {
    eprintln!("policy spread: starting {} hosts", z.hosts);
    let lab = Lab::new(z.hosts, VXLAN_CONFIG);
    let weftds = start_lab(&lab, &[]);
    let rt = NsRuntime::new(Some(&lab.underlay.path()), 2);
    let url = lab.etcd.client_url();
    let client = rt.run(async move { etcd_client(&url).await });
    let rss = |ds: &[crate::rig::Weftd]| {
        median(&ds.iter().map(|d| d.status_kb("VmRSS")).collect::<Vec<_>>()) / 1024.0
    };
    let rss_before = rss(&weftds);
    let (tx, rx) = mpsc::channel();
    let _monitors: Vec<Monitor> = (lab.hosts.iter().enumerate())
        .map(|(i, h)| Monitor::start(&h.ns, i, tx.clone()))
        .collect();

    // The load: workloads on no host of the lab (remote to all), then the policies.
    let mut c = client.clone();
    let (n, w) = (z.policies, z.workloads);
    rt.run(async move {
        for i in 0..w {
            let wl = workload(i, n);
            let key = format!(
                "{PREFIX}/weft/policy/workloads/{}",
                wl.key_address().unwrap()
            );
            c.put(key, wl.encode(), None)
                .await
                .expect("writing a workload");
        }
    });
    let load: Vec<Policy> = (0..n).map(|i| policy(i, n, 80)).collect();
    for p in &load {
        put_policy(&rt, &client, p);
    }
    held_by_all(&rx, z.hosts, &load[n - 1]);
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss(&weftds);

    let seen_by = watcher(&rt, &client);
    let (mut one, mut all, mut etcd) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..z.runs {
        while rx.try_recv().is_ok() {}
        let p = policy(10_000 + r, n, 90);
        let t0 = put_policy(&rt, &client, &p);
        let held = held_by_all(&rx, z.hosts, &p);
        let key = format!("{PREFIX}/weft/policy/policies/{}", p.id());
        etcd.push(ms(delivered(&seen_by, &key) - t0));
        let each: Vec<f64> = held.iter().map(|t| ms(*t - t0)).collect();
        all.push(max(&each));
        one.extend(each);
    }
    vec![table(z, [&one, &all, &etcd], rss_before, rss_after)]
}

fn table(z: &Sizes, [one, all, etcd]: [&Vec<f64>; 3], before: f64, after: f64) -> Table {
    let mut t = Table::comparison(&format!(
        "Network policy across {} hosts: a policy applied until every host enforces it (× {} policies)",
        z.hosts, z.runs
    ));
    let (e50, e99) = (percentile(etcd, 50.0), percentile(etcd, 99.0));
    t.compare(
        "one host enforces (p50)",
        percentile(one, 50.0),
        Some(e50),
        " ms",
        Target::None,
        false,
    );
    t.compare(
        "one host enforces (p99)",
        percentile(one, 99.0),
        Some(e99),
        " ms",
        Target::None,
        false,
    );
    t.compare(
        "every host enforces (p50)",
        percentile(all, 50.0),
        Some(e50),
        " ms",
        Target::None,
        false,
    );
    t.compare(
        "every host enforces (p99)",
        percentile(all, 99.0),
        Some(e99),
        " ms",
        Target::None,
        false,
    );
    t.compare(
        &format!(
            "weftd RSS with {} policies and {} workloads in etcd (median host)",
            z.policies, z.workloads
        ),
        after,
        Some(before),
        " MiB",
        Target::None,
        false,
    );
    t.note("Enforced: the host's `nft monitor` printed the policy's chain (weftd writes a policy's chains, counter and rules in one transaction). From the etcd PUT being sent, as `weftctl policy apply` writes it; baseline: the same PUT delivered to a bare etcd watcher in the same run.");
    t.note(format!("Measured with {} policies and {} remote workloads already in etcd (the workloads on no host of the lab); each new policy selects no workload here. RSS baseline: the same weftds before any policy or workload.", z.policies, z.workloads));
    t
}
