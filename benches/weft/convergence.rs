//! Convergence: a lab of hosts running weftd; a new host's lease is written to etcd and the
//! bench times, on every other host, how long until its route, neighbour and FDB entry are
//! in the kernel. Baseline: how long etcd takes to deliver the same write to a bare watcher
//! in the same run, the floor any etcd-driven agent sits on.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, PutOptions, WatchOptions};

use crate::probe::{wait_absent, wait_present, Probe};
use crate::report::{max, median, percentile, Table, Target};
use crate::rig::{
    etcd_client, free_subnets, leased_subnets, ms, start_lab, FakeLease, NsRuntime, Weftd, PREFIX,
};
use testkit::lab::{Lab, VXLAN_CONFIG};

pub struct Sizes {
    pub hosts: usize,
    pub joins: usize,
    pub runs: usize,
    /// After the joins, count the requests etcd receives from the idle lab for this long.
    pub idle: Option<Duration>,
}

/// How long the hosts' idle CPU is measured before the joins.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// weftd's CPU over one run, per lease event per host (ms): all of it, and what it spent
/// above its idle rate.
struct Cpu {
    all: f64,
    above_idle: f64,
}

/// Cores (CPU seconds a second) that `cpu` grows by over `window`.
fn cores_used(cpu: &dyn Fn() -> Duration, window: Duration) -> f64 {
    let (c0, t0) = (cpu(), Instant::now());
    std::thread::sleep(window);
    (cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

struct RunStats {
    one: [f64; 3],
    all: [f64; 3],
    etcd: [f64; 3],
}

fn stats(v: &[f64]) -> [f64; 3] {
    [percentile(v, 50.0), percentile(v, 99.0), max(v)]
}

pub fn run(z: &Sizes) -> Vec<Table> {
    eprintln!("convergence: starting {} hosts", z.hosts);
    let lab = Lab::new(z.hosts, VXLAN_CONFIG);
    let weftds = start_lab(&lab, &[]);
    let weftd_cpu = || -> Duration { weftds.iter().map(Weftd::cpu).sum() };
    let rt = NsRuntime::new(Some(&lab.underlay.path()), 2);
    let url = lab.etcd.client_url();
    let client = rt.run(async move { etcd_client(&url).await });

    // The baseline: a plain watcher timestamps each PUT it is told about.
    let (wtx, wrx) = mpsc::channel::<(String, Instant)>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut wc = client.clone();
    rt.spawn(async move {
        let mut stream = wc
            .watch(
                format!("{PREFIX}/subnets/"),
                Some(WatchOptions::new().with_prefix()),
            )
            .await
            .expect("watching leases");
        let _ = ready_tx.send(());
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            for ev in resp.events() {
                if ev.event_type() == EventType::Put {
                    if let Some(kv) = ev.kv() {
                        let _ = wtx.send((String::from_utf8_lossy(kv.key()).into_owned(), now));
                    }
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the baseline watch did not start");

    let mut probes: Vec<Probe> = lab
        .hosts
        .iter()
        .map(|h| Probe::new(&h.ns.path(), "flannel.1"))
        .collect();
    let c = client.clone();
    let taken = rt.run(async move { leased_subnets(&c).await });
    let free = free_subnets(24, &taken, z.joins);
    assert_eq!(free.len(), z.joins, "not enough free subnets");

    // What the hosts cost with nothing changing (probes, resyncs, keep-alives): the share of
    // the joins' CPU that is not the joins'.
    let idle_cores = cores_used(&weftd_cpu, IDLE_WINDOW);
    let mut runs = Vec::new();
    let mut cpu_per_event = Vec::new();
    for run in 0..z.runs {
        let (mut one, mut all, mut etcd) = (Vec::new(), Vec::new(), Vec::new());
        let (cpu0, wall0) = (weftd_cpu(), Instant::now());
        for (j, subnet) in free.iter().enumerate() {
            let l = FakeLease::nth(*subnet, j as u32, 0x70 + run as u8);
            let (key, value) = (l.key(), l.value());
            // The joining host has its etcd lease before it writes the key, as weftd does.
            let mut c = client.clone();
            let id = rt.run(async move {
                c.lease_grant(86_400, None)
                    .await
                    .expect("granting an etcd lease")
                    .id()
            });
            for p in probes.iter_mut() {
                p.reset();
            }
            while wrx.try_recv().is_ok() {}
            let mut c = client.clone();
            let k = key.clone();
            let put = rt.spawn(async move {
                let t0 = Instant::now();
                c.put(k, value, Some(PutOptions::new().with_lease(id)))
                    .await
                    .expect("writing the new lease");
                t0
            });
            let seen = wait_present(&mut probes, &l, Duration::from_secs(10));
            let t0 = rt.wait(put);
            let delivered = loop {
                match wrx.recv_timeout(Duration::from_secs(5)) {
                    Ok((k, t)) if k == key => break t,
                    Ok(_) => continue,
                    Err(_) => panic!("the baseline watcher never saw {key}"),
                }
            };
            etcd.push(ms(delivered - t0));
            let mut worst: f64 = 0.0;
            for (i, s) in seen.iter().enumerate() {
                let Some(t) = s else {
                    panic!(
                        "host {} did not program {} within 10 s:\n{}",
                        i + 1,
                        l.subnet,
                        lab.hosts[i].logs()
                    );
                };
                let d = ms(*t - t0);
                one.push(d);
                worst = worst.max(d);
            }
            all.push(worst);
            // The host leaves again, so every join meets the same lab.
            let mut c = client.clone();
            rt.run(async move {
                c.lease_revoke(id).await.expect("revoking the etcd lease");
            });
            assert!(
                wait_absent(&mut probes, &l, Duration::from_secs(10)),
                "{} was not removed within 10 s",
                l.subnet
            );
        }
        // Every join is two lease events (the put, then the revoke) on every host.
        let events = (2 * z.joins * z.hosts) as f64;
        let idle = idle_cores * wall0.elapsed().as_secs_f64();
        let spent = (weftd_cpu() - cpu0).as_secs_f64();
        cpu_per_event.push(Cpu {
            all: spent * 1000.0 / events,
            above_idle: (spent - idle).max(0.0) * 1000.0 / events,
        });
        eprintln!(
            "convergence run {}: one host p50 {:.2} p99 {:.2} max {:.2} ms; all hosts p99 {:.2} ms; etcd p99 {:.2} ms; weftd CPU {:.3} ms per lease event per host ({:.3} above idle)",
            run + 1,
            percentile(&one, 50.0),
            percentile(&one, 99.0),
            max(&one),
            percentile(&all, 99.0),
            percentile(&etcd, 99.0),
            cpu_per_event[run].all,
            cpu_per_event[run].above_idle
        );
        runs.push(RunStats {
            one: stats(&one),
            all: stats(&all),
            etcd: stats(&etcd),
        });
    }
    drop(probes);
    let idle = z.idle.map(|d| idle_requests(&lab, d));

    let med = |f: &dyn Fn(&RunStats) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let mut t = Table::comparison(&format!(
        "1. Convergence: {} hosts, a new lease appears {} times (× {} runs)",
        z.hosts, z.joins, z.runs
    ));
    let names = ["p50", "p99", "max"];
    for (i, name) in names.iter().enumerate() {
        let target = if i == 1 {
            Target::AtMost(50.0)
        } else {
            Target::None
        };
        t.compare(
            &format!("{name}, etcd write → objects on one other host"),
            med(&|r| r.one[i]),
            Some(med(&|r| r.etcd[i])),
            " ms",
            target,
            false,
        );
    }
    // The same p99 against etcd's own delivery: what weft adds to it, whatever the machine.
    t.compare(
        "p99, etcd write → objects on one other host, against etcd's delivery",
        med(&|r| r.one[1]),
        Some(med(&|r| r.etcd[1])),
        " ms",
        Target::AtMost(2.0),
        true,
    );
    for (i, name) in names.iter().enumerate() {
        t.compare(
            &format!("{name}, etcd write → objects on all {} hosts", z.hosts),
            med(&|r| r.all[i]),
            Some(med(&|r| r.etcd[i])),
            " ms",
            Target::None,
            false,
        );
    }
    t.note(format!(
        "Start: an `Instant` taken right before the etcd put of the lease key (the joining host's etcd lease is granted before). End: the moment the bench reads the host's own netlink notifications of the route and of both neighbour-table entries (the ARP and the FDB entry) for the new subnet, confirmed by one dump of that host's kernel that is not timed (a dump after every notification of every host made the bench itself the largest user of the cores at 100 hosts). One-host figures pool every host of every join ({} samples per run); all-host figures take the slowest host per join ({} per run).",
        z.hosts * z.joins,
        z.joins
    ));
    t.note("Baseline: a bare etcd watch (etcd-client, same etcd, same run) timestamping the same PUT: the time etcd itself needs to deliver the write, which weftd cannot beat.");
    t.note(format!(
        "Each figure is the median over {} runs of that run's percentile. Percentiles are nearest-rank.",
        z.runs
    ));
    let all = median(&cpu_per_event.iter().map(|c| c.all).collect::<Vec<_>>());
    let above = median(
        &cpu_per_event
            .iter()
            .map(|c| c.above_idle)
            .collect::<Vec<_>>(),
    );
    t.note(format!(
        "Where the time goes: idle, the {} weftds (probes, resyncs, keep-alives) used {:.1} % of a core together ({:.3} % each; utime+stime over {} s before the joins). Over the joins, weftd's CPU (utime+stime of every weftd over the run, divided by its lease events: each join is a put and a revoke, seen by every host) is {all:.3} ms per lease event per host, of which {above:.3} ms is above the idle rate: one event costs the hosts {:.0} ms of CPU together beyond idling, on this machine's {} cores.",
        z.hosts,
        idle_cores * 100.0,
        idle_cores * 100.0 / z.hosts as f64,
        IDLE_WINDOW.as_secs(),
        above * z.hosts as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    let mut tables = vec![t];
    if let Some((messages, took)) = idle {
        let mut t = Table::new(
            &format!("1b. etcd requests from {} idle hosts", z.hosts),
            &["figure", "weft", "target"],
        );
        let per_hour = messages / z.hosts as f64 * 3600.0 / took.as_secs_f64();
        t.row(vec![
            "gRPC messages etcd received, per host per hour".into(),
            format!("{per_hour:.1}"),
            "–".into(),
        ]);
        t.note(format!(
            "etcd's own counter `grpc_server_msg_received_total` (every unary request and every message on a stream: lease keep-alives, watch requests) read before and after {} s in which nothing changed, {} weftd hosts running with the default 24 h lease TTL; {messages} messages in all.",
            took.as_secs(),
            z.hosts
        ));
        tables.push(t);
    }
    tables
}

/// What etcd received while the lab sat idle for `d`: (messages, the window measured).
pub fn idle_requests(lab: &Lab, d: Duration) -> (f64, Duration) {
    let read = || -> f64 {
        let url = format!("{}/metrics", lab.etcd.client_url());
        let out = lab.underlay.exec(&["curl", "-sf", &url]);
        assert!(out.status.success(), "cannot read etcd's metrics at {url}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let counts: Vec<f64> = (text.lines())
            .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        // No such counter would read as "no requests": refuse to report that.
        assert!(
            !counts.is_empty(),
            "etcd's metrics at {url} have no grpc_server_msg_received_total"
        );
        counts.iter().sum()
    };
    eprintln!("counting etcd requests for {} s of quiet", d.as_secs());
    let (before, t0) = (read(), Instant::now());
    std::thread::sleep(d);
    let after = read();
    (after - before, t0.elapsed())
}
