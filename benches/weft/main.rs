//! weft's whole-system benchmarks. Each section builds what it measures out of real parts
//! (etcd, weftd release builds, network namespaces, the kernel), measures weft next to a
//! baseline in the same run, and prints a markdown table. Run it through `scripts/bench`:
//!
//! ```text
//! scripts/bench                      # every section (about 15 minutes on 2 cores)
//! scripts/bench convergence cni      # some sections
//! scripts/bench --quick              # tiny sizes: a smoke run of the bench itself
//! ```
//!
//! Sections: convergence, fleet (100 hosts), fleet-cost (etcd's cost of a join, a death and
//! a partition at 10, 100 and 1,000 light hosts), scale (also prints memory), acquire, cni,
//! datapath, dual, probes (peer probes to 1,000 simulated peers), status, wireguard (wireguard-go
//! datapath against a hand-made pair, and join convergence on WireGuard), policy (1,000
//! workloads × 100 policies on real nftables; a policy's spread over 10 hosts and weftd's
//! memory; ADD latency and TCP throughput with them), live (`weftctl config set` until 10 hosts
//! run the new revision: a live key and a backend migration).
//! Needs root, /usr/bin/etcd, iproute2, iperf3, fping and Debian's containernetworking-plugins
//! (and for wireguard: wireguard-go, wireguard-tools).

mod acquire;
mod cni;
mod convergence;
mod datapath;
mod dual;
mod fleet_cost;
mod live;
mod peer_probe;
mod policy;
mod policy_path;
mod policy_spread;
mod probe;
mod report;
mod rig;
mod scale;
mod status;
mod wireguard;

use std::time::{Duration, Instant};

const SECTIONS: [&str; 13] = [
    "convergence",
    "fleet",
    "fleet-cost",
    "scale",
    "acquire",
    "cni",
    "datapath",
    "dual",
    "probes",
    "status",
    "wireguard",
    "policy",
    "live",
];

fn main() {
    let mut quick = false;
    let mut wanted: Vec<String> = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => quick = true,
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            "memory" => wanted.push("scale".into()),
            "all" => wanted.extend(SECTIONS.iter().map(|s| s.to_string())),
            s if SECTIONS.contains(&s) => wanted.push(s.into()),
            other => {
                eprintln!(
                    "unknown argument {other:?}; sections: {} (memory = scale), all, --quick",
                    SECTIONS.join(", ")
                );
                std::process::exit(2);
            }
        }
    }
    if wanted.is_empty() {
        wanted = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    wanted.dedup();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks build network namespaces: run them as root"
    );

    // Named before the run: the code measured is the code of this moment.
    let commit = report::commit();
    let started = Instant::now();
    let load_before = report::load();
    let mut out = Vec::new();
    for s in SECTIONS.iter().filter(|s| wanted.iter().any(|w| w == *s)) {
        let t0 = Instant::now();
        let tables = match *s {
            "convergence" => convergence::run(&if quick {
                convergence::Sizes {
                    hosts: 3,
                    joins: 10,
                    runs: 1,
                    idle: None,
                }
            } else {
                convergence::Sizes {
                    hosts: 10,
                    joins: 100,
                    runs: 3,
                    idle: None,
                }
            }),
            // The same join measured on a fleet of 100 hosts, and etcd's load from them idle.
            "fleet" => convergence::run(&if quick {
                convergence::Sizes {
                    hosts: 10,
                    joins: 10,
                    runs: 1,
                    idle: Some(Duration::from_secs(10)),
                }
            } else {
                convergence::Sizes {
                    hosts: 100,
                    joins: 30,
                    runs: 1,
                    idle: Some(Duration::from_secs(120)),
                }
            }),
            // What an event costs etcd at 10, 100 and 1,000 light hosts, weft and flannel.
            "fleet-cost" => fleet_cost::run(&fleet_cost::Sizes {
                hosts: if quick {
                    vec![10, 30]
                } else {
                    vec![10, 100, 1000]
                },
            }),
            "scale" => scale::run(&if quick {
                scale::Sizes {
                    leases: 300,
                    singles: 5,
                    cold_runs: 1,
                    idle: Duration::from_secs(5),
                    ctl_runs: 1,
                }
            } else {
                scale::Sizes {
                    leases: 5000,
                    singles: 20,
                    cold_runs: 3,
                    // WEFT_BENCH_IDLE_SECS shortens the idle window while iterating.
                    idle: Duration::from_secs(
                        std::env::var("WEFT_BENCH_IDLE_SECS")
                            .ok()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(60),
                    ),
                    ctl_runs: 5,
                }
            }),
            "acquire" => acquire::run(&if quick {
                acquire::Sizes {
                    agents: 20,
                    runs: 1,
                }
            } else {
                acquire::Sizes {
                    agents: 200,
                    runs: 3,
                }
            }),
            "cni" => cni::run(&if quick {
                cni::Sizes {
                    containers: 10,
                    rounds: 1,
                }
            } else {
                cni::Sizes {
                    containers: 200,
                    rounds: 3,
                }
            }),
            "datapath" => datapath::run(&if quick {
                datapath::Sizes {
                    secs: 1,
                    reps: 1,
                    pings: 10,
                }
            } else {
                datapath::Sizes {
                    secs: 5,
                    reps: 5,
                    pings: 100,
                }
            }),
            "dual" => dual::run(&if quick {
                dual::Sizes {
                    secs: 1,
                    reps: 1,
                    pings: 10,
                    hosts: 3,
                    joins: 5,
                }
            } else {
                dual::Sizes {
                    secs: 5,
                    reps: 5,
                    pings: 100,
                    hosts: 5,
                    joins: 50,
                }
            }),
            // One host probing 1,000 simulated peers, at the interval weftd would use in a
            // small cluster (1 s) and its default (5 s).
            "probes" => peer_probe::run(&if quick {
                peer_probe::Sizes {
                    peers: 100,
                    secs: 3,
                    intervals: vec![Duration::from_secs(1)],
                }
            } else {
                peer_probe::Sizes {
                    peers: 1000,
                    secs: 20,
                    intervals: vec![Duration::from_secs(1), Duration::from_secs(5)],
                }
            }),
            "status" => status::run(&if quick {
                status::Sizes {
                    hosts: 3,
                    idle: Duration::from_secs(20),
                    records: 100,
                    runs: 1,
                }
            } else {
                status::Sizes {
                    hosts: 5,
                    idle: Duration::from_secs(300),
                    records: 5000,
                    runs: 5,
                }
            }),
            "wireguard" => wireguard::run(&if quick {
                wireguard::Sizes {
                    secs: 1,
                    reps: 1,
                    pings: 10,
                    hosts: 3,
                    joins: 3,
                }
            } else {
                wireguard::Sizes {
                    secs: 5,
                    reps: 5,
                    pings: 100,
                    hosts: 5,
                    // WEFT_BENCH_WG_JOINS measures more joins (rare slow first contacts).
                    joins: std::env::var("WEFT_BENCH_WG_JOINS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(20),
                }
            }),
            "policy" => {
                let mut tables = policy::run(&if quick {
                    policy::Sizes {
                        workloads: 100,
                        policies: 10,
                        runs: 3,
                    }
                } else {
                    policy::Sizes {
                        workloads: 1000,
                        policies: 100,
                        runs: 20,
                    }
                });
                tables.extend(policy_spread::run(&policy_spread::Sizes {
                    hosts: if quick { 3 } else { 10 },
                    policies: if quick { 10 } else { 100 },
                    workloads: if quick { 100 } else { 1000 },
                    runs: if quick { 3 } else { 20 },
                }));
                tables.extend(policy_path::run(&policy_path::Sizes {
                    policies: if quick { 10 } else { 100 },
                    workloads: if quick { 100 } else { 1000 },
                    containers: if quick { 4 } else { 20 },
                    rounds: if quick { 2 } else { 10 },
                    iperf_secs: if quick { 1 } else { 3 },
                }));
                tables
            }
            // A live key and a backend migration, each changed `runs` times on the fleet.
            "live" => live::run(&if quick {
                live::Sizes { hosts: 3, runs: 2 }
            } else {
                live::Sizes {
                    hosts: 10,
                    runs: 10,
                }
            }),
            _ => unreachable!("filtered above"),
        };
        eprintln!("{s}: {:.0} s", t0.elapsed().as_secs_f64());
        for t in &tables {
            t.print();
        }
        out.extend(tables);
    }
    let summary = report::summary(&out, &commit);
    if !summary.is_empty() {
        summary.print();
    }
    println!(
        "Machine: {}. Date: {}. Load average before: {load_before}; after: {}. Took {:.0} s{}.",
        report::machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        report::load(),
        started.elapsed().as_secs_f64(),
        if quick { " (--quick sizes)" } else { "" }
    );
}
