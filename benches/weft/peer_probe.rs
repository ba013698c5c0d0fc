//! Peer probes: what weft's prober costs a host that probes n peers, at 1 s and 5 s intervals:
//! echo requests sent and replies received per second (the host namespace's own ICMP
//! counters) and the CPU time of the thread the prober runs on, next to fping probing the same
//! peers at the same pace in the same run.
//!
//! The peers are simulated: one peer namespace answers for a whole /16 (a `local` route on
//! its loopback), reached from the host namespace over a veth, so every probe is a real echo
//! request and reply through the kernel.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft::probe::{PeerState, ProbeConfig, Prober, Target};

use crate::report::{num, Table, Target as Goal};
use testkit::netns::{veth_pair, Netns};

pub struct Sizes {
    pub peers: usize,
    /// How long each measurement runs, after a warm-up of one interval.
    pub secs: u64,
    pub intervals: Vec<Duration>,
}

/// The n-th simulated peer's address: 198.19.(n / 250).(n % 250 + 1).
fn peer_addr(n: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(198, 19, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// The host namespace's ICMP counters: (echo requests sent, echo replies received), read on a
/// thread inside it (/proc/thread-self/net is the reading thread's namespace).
fn icmp_counters(ns: &Netns) -> (u64, u64) {
    weft::netlink::run_in_netns(&ns.path(), read_icmp_counters).expect("entering the host")
}

fn read_icmp_counters() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("reading snmp");
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap_or(""), icmp.next().unwrap_or(""));
    let field = |name: &str| -> u64 {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or_else(|| panic!("no Icmp {name} in /proc/net/snmp"))
    };
    (field("OutEchos"), field("InEchoReps"))
}

/// CPU time of the calling thread: (user, system).
fn thread_cpu() -> (Duration, Duration) {
    rusage_cpu(libc::RUSAGE_THREAD)
}

fn rusage_cpu(who: libc::c_int) -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// One measured run: rates per second and CPU as a share of one core.
struct Run {
    sent: f64,
    received: f64,
    cpu_pct: f64,
    /// The user-space share of cpu_pct.
    user_pct: f64,
    us_per_probe: f64,
    reachable: usize,
}

/// Counters at one moment: ICMP (sent, received), CPU (user, system), and when.
struct Sample {
    icmp: (u64, u64),
    cpu: (Duration, Duration),
    at: Instant,
}

impl Run {
    fn between(a: &Sample, b: &Sample, reachable: usize) -> Run {
        let wall = (b.at - a.at).as_secs_f64();
        let user = (b.cpu.0 - a.cpu.0).as_secs_f64();
        let cpu = user + (b.cpu.1 - a.cpu.1).as_secs_f64();
        let sent = (b.icmp.0 - a.icmp.0) as f64;
        Run {
            sent: sent / wall,
            received: (b.icmp.1 - a.icmp.1) as f64 / wall,
            cpu_pct: 100.0 * cpu / wall,
            user_pct: 100.0 * user / wall,
            us_per_probe: cpu * 1e6 / sent,
            reachable,
        }
    }
}

fn measure_weft(host: &Netns, n: usize, interval: Duration, secs: u64) -> Run {
    let targets: Vec<Target> = (0..n)
        .map(|i| Target {
            id: format!("peer-{i}"),
            addr: peer_addr(i).into(),
            host: ipnet::Ipv4Net::new(peer_addr(i), 32).expect("a /32"),
            public_ip: peer_addr(i).into(),
        })
        .collect();
    let cfg = ProbeConfig {
        interval,
        timeout: Duration::from_secs(1).min(interval / 2),
        down_after: 3,
        window: 20,
        // No cap: this section measures what a probe costs at fping's pace.
        max_rate: u32::MAX,
    };
    weft::netlink::run_in_netns(&host.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let prober = Prober::start(cfg).expect("prober starts in the host namespace");
            prober.set_peers(targets);
            // One interval plus a timeout: every peer probed once and the pace steady.
            tokio::time::sleep(interval + cfg.timeout).await;
            let sample = || Sample {
                icmp: read_icmp_counters(),
                cpu: thread_cpu(),
                at: Instant::now(),
            };
            let a = sample();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let b = sample();
            let reachable = prober
                .snapshot()
                .iter()
                .filter(|s| s.state == PeerState::Reachable)
                .count();
            Run::between(&a, &b, reachable)
        })
    })
    .expect("entering the host namespace")
}

/// fping probing the same peers, each every `interval`, one request every interval/n (its
/// `-i`), for `secs`. Its CPU is its own rusage as a child of the bench.
fn measure_fping(host: &Netns, n: usize, interval: Duration, secs: u64) -> Run {
    let list = std::env::temp_dir().join(format!("weft-bench-fping-{}", std::process::id()));
    let addrs: String = (0..n).map(|i| format!("{}\n", peer_addr(i))).collect();
    std::fs::write(&list, addrs).expect("writing fping's target list");
    let count = (secs as f64 / interval.as_secs_f64()).round().max(1.0) as u64;
    let gap_ms = (interval.as_secs_f64() * 1000.0 / n as f64).max(1.0);
    let sample = || Sample {
        icmp: icmp_counters(host),
        cpu: rusage_cpu(libc::RUSAGE_CHILDREN),
        at: Instant::now(),
    };
    let a = sample();
    let status = Command::new("ip")
        .args(["netns", "exec", host.name(), "fping", "-q"])
        .args(["-c", &count.to_string()])
        .args(["-p", &interval.as_millis().to_string()])
        .args(["-i", &format!("{gap_ms:.0}")])
        .args(["-t", "1000", "-f"])
        .arg(&list)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let b = sample();
    let _ = std::fs::remove_file(&list);
    match status {
        // fping exits 1 when some target missed a reply: still a measurement.
        Ok(s) if s.code() == Some(0) || s.code() == Some(1) => {}
        Ok(s) => panic!("fping failed ({s}); is it installed? apt-get install fping"),
        Err(e) => panic!("cannot run ip netns exec fping: {e}"),
    }
    Run::between(&a, &b, 0)
}

pub fn run(s: &Sizes) -> Vec<Table> {
    let host = Netns::new("probehst");
    let peers = Netns::new("probepr");
    veth_pair(
        &host,
        "eth0",
        "198.18.0.1/24",
        &peers,
        "eth0",
        "198.18.0.2/24",
    );
    // The peer namespace owns the whole /16, so it answers echo to every simulated peer.
    peers.ip(&["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
    host.ip(&["route", "add", "198.19.0.0/16", "via", "198.18.0.2"]);
    assert!(host.ping(&peer_addr(s.peers - 1).to_string()));

    let n = s.peers;
    let mut t = Table::comparison(&format!(
        "Peer probes: one host probing {n} peers (weft's prober vs fping at the same pace, {} s each)",
        s.secs
    ));
    for &interval in &s.intervals {
        let iv = humantime::format_duration(interval).to_string();
        eprintln!("probes: {n} peers every {iv}: weft");
        let w = measure_weft(&host, n, interval, s.secs);
        eprintln!("probes: {n} peers every {iv}: fping");
        let f = measure_fping(&host, n, interval, s.secs);
        let pace = n as f64 / interval.as_secs_f64();
        t.compare(
            &format!(
                "every {iv}: echo requests sent per s (n / interval = {})",
                num(pace)
            ),
            w.sent,
            Some(f.sent),
            "",
            Goal::AtLeast(0.95 * pace),
            false,
        );
        t.compare(
            &format!("every {iv}: echo replies received per s"),
            w.received,
            Some(f.received),
            "",
            Goal::AtLeast(0.95 * pace),
            false,
        );
        t.compare(
            &format!("every {iv}: CPU, % of one core"),
            w.cpu_pct,
            Some(f.cpu_pct),
            " %",
            Goal::AtMost(5.0),
            false,
        );
        t.compare(
            &format!("every {iv}: of which user space"),
            w.user_pct,
            Some(f.user_pct),
            " %",
            Goal::None,
            false,
        );
        t.compare(
            &format!("every {iv}: CPU per probe"),
            w.us_per_probe,
            Some(f.us_per_probe),
            " µs",
            Goal::None,
            false,
        );
        t.note(format!(
            "every {iv}: {} of {n} peers Reachable at the end of weft's run",
            w.reachable
        ));
    }
    t.note(format!(
        "Peers: {n} addresses in 198.19.0.0/16 held by one peer namespace (a `local` route on its loopback) behind a veth; every probe is a real ICMP echo request and reply through the kernel. Rates: the host namespace's own ICMP counters (OutEchos, InEchoReps) over the measured window, after a warm-up of one interval plus a timeout."
    ));
    t.note(
        "weft: `Prober` on a current-thread tokio runtime on one thread inside the host namespace (timeout min(1 s, interval/2), down-after 3); CPU = user + system time of that thread (getrusage RUSAGE_THREAD), which includes the kernel work done on it: sending, and the veth delivering the request to the peer namespace and the reply back in softirq context.",
    );
    t.note(
        "fping (Debian's 5.1): `fping -q -c COUNT -p INTERVAL -i INTERVAL/n -t 1000 -f LIST` in the host namespace, COUNT = duration / interval; CPU = its user + system time (getrusage RUSAGE_CHILDREN), over its whole run including start-up and its last timeout.",
    );
    vec![t]
}
