//! Scale and memory: one host, thousands of remote leases in etcd. A cold weftd start in a
//! fresh namespace programs every route, neighbour and FDB entry; the baseline is iproute2
//! (`ip -batch` then `bridge -batch`) applying the same objects to an equal fresh device.
//! Then one lease added at 10 and at N leases (it must not grow with N), weftd's CPU while
//! idle, and its memory.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use ipnet::Ipv4Net;

use crate::probe::{wait_absent, wait_present, Probe};
use crate::report::{median, percentile, Table, Target};
use crate::rig::{
    etcd_client, free_subnets, leased_subnets, ms, poll, put_leases, FakeLease, NsRuntime, Weftd,
    PREFIX,
};
use testkit::lab::{make_flannel_device, Host, Lab};
use testkit::netns::Netns;

pub struct Sizes {
    pub leases: usize,
    pub singles: usize,
    pub cold_runs: usize,
    pub idle: Duration,
    /// Runs of each weftctl command timed.
    pub ctl_runs: usize,
}

/// /29 subnets: room for 8,191 hosts in 198.19.0.0/16.
const CONFIG: &str = r#"{"Network":"198.19.0.0/16","SubnetLen":29,"Backend":{"Type":"vxlan"}}"#;
const SMALL: usize = 10;

fn metric(h: &Host, name: &str) -> f64 {
    h.metric(name).unwrap_or(f64::NAN)
}

struct Single {
    e2e: Vec<f64>,
    internal: Vec<f64>,
}

/// Adds one lease `n` times (each removed again before the next) and times it from the etcd
/// put to the three objects being in the kernel, and inside weftd (its fast-path duration).
fn singles(
    rt: &NsRuntime,
    client: &etcd_client::Client,
    host: &Host,
    probe: &mut Probe,
    d: &mut Weftd,
    n: usize,
    tag: u8,
) -> Single {
    let c = client.clone();
    let taken = rt.run(async move { leased_subnets(&c).await });
    let free = free_subnets(29, &taken, n + 1);
    let mut out = Single {
        e2e: Vec::new(),
        internal: Vec::new(),
    };
    // The first add is a warm-up, not a sample: it pays one-time costs (the watch's first
    // event, the first fast path after a full reconciliation); the steady state is measured.
    for (j, s) in free.iter().enumerate() {
        let l = FakeLease::nth(*s, 10_000 + j as u32, tag);
        let mut c = client.clone();
        let id = rt.run(async move { c.lease_grant(86_400, None).await.expect("grant").id() });
        std::thread::sleep(Duration::from_millis(50));
        probe.reset();
        let runs0 = metric(host, "weft_reconcile_runs_total");
        let (mut c, key, value) = (client.clone(), l.key(), l.value());
        let put = rt.spawn(async move {
            let t0 = Instant::now();
            c.put(key, value, Some(PutOptions::new().with_lease(id)))
                .await
                .expect("writing the lease");
            t0
        });
        let seen = wait_present(std::slice::from_mut(probe), &l, Duration::from_secs(10));
        let t0 = rt.wait(put);
        let Some(t) = seen[0] else {
            d.assert_running();
            panic!("{} was not programmed within 10 s:\n{}", l.subnet, d.logs());
        };
        if j > 0 {
            out.e2e.push(ms(t - t0));
        }
        // The fast path's own duration, unless a full resync ran in between.
        let got = poll(Duration::from_secs(2), Duration::from_millis(5), || {
            (metric(host, "weft_reconcile_runs_total") > runs0).then_some(())
        });
        if j > 0 && got.is_some() && metric(host, "weft_reconcile_runs_total") == runs0 + 1.0 {
            out.internal
                .push(metric(host, "weft_reconcile_last_duration_seconds") * 1000.0);
        }
        let mut c = client.clone();
        rt.run(async move { c.lease_revoke(id).await.expect("revoke") });
        assert!(
            wait_absent(std::slice::from_mut(probe), &l, Duration::from_secs(10)),
            "{} not removed",
            l.subnet
        );
    }
    out
}

/// Removes every lease that is not one of the fake ones (a finished host's own).
fn forget_own_leases(rt: &NsRuntime, client: &etcd_client::Client, fake: &[FakeLease]) {
    let c = client.clone();
    let fake: Vec<_> = fake.iter().map(|l| l.subnet).collect();
    rt.run(async move {
        for s in leased_subnets(&c).await {
            if !fake.contains(&s) {
                let key = format!("{PREFIX}/subnets/{}", weft::subnet::lease_key_name(s, None));
                c.clone().delete(key, None).await.expect("deleting a lease");
            }
        }
    });
}

/// iproute2 applying the same objects to a fresh namespace with the same device.
fn baseline(ip_batch: &std::path::Path, bridge_batch: &std::path::Path) -> f64 {
    let ns = Netns::new("bl");
    // No dummy driver on these kernels: a veth pair inside the namespace stands in.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.ip(&["link", "set", "eth0p", "up"]);
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    make_flannel_device(&ns, "198.18.0.1", "198.19.0.0/24".parse().unwrap());
    let t0 = Instant::now();
    for (tool, file) in [("ip", ip_batch), ("bridge", bridge_batch)] {
        let out = Command::new(tool)
            .args(["-n", ns.name(), "-batch"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} -batch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ms(t0.elapsed())
}

pub fn run(z: &Sizes) -> Vec<Table> {
    eprintln!("scale: etcd and underlay");
    let mut lab = Lab::new(0, CONFIG);
    let rt = NsRuntime::new(Some(&lab.underlay.path()), 2);
    let url = lab.etcd.client_url();
    let u = url.clone();
    let client = rt.run(async move { etcd_client(&u).await });
    let subnets = free_subnets(29, &[], z.leases + 200);
    // Leave gaps for the hosts' own leases and the single adds: every 1.03th subnet.
    let fake: Vec<FakeLease> = subnets
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 33 != 32)
        .take(z.leases)
        .enumerate()
        .map(|(n, (_, s))| FakeLease::nth(*s, n as u32, 0x50))
        .collect();
    assert_eq!(fake.len(), z.leases);
    let dir = lab.dir.path().to_path_buf();
    let log = |name: &str| dir.join(name);
    let subnet_file = |i: usize| dir.join(format!("subnet{i}.env"));

    // ---- 10 leases
    let c = client.clone();
    let small = fake[..SMALL - 1].to_vec();
    rt.run(async move {
        put_leases(&c, &small, 86_400).await;
    });
    lab.add_host();
    let mut d = Weftd::spawn(&lab.hosts[0].ns, &url, &subnet_file(0), &log("w0.log"), &[]);
    let ok = poll(Duration::from_secs(30), Duration::from_millis(10), || {
        (metric(&lab.hosts[0], "weft_ready") == 1.0
            && metric(&lab.hosts[0], "weft_peers_programmed") == (SMALL - 1) as f64)
            .then_some(())
    });
    if ok.is_none() {
        d.assert_running();
        panic!("weftd with {SMALL} leases not ready in 30 s:\n{}", d.logs());
    }
    let mut probe = Probe::new(&lab.hosts[0].ns.path(), "flannel.1");
    eprintln!("scale: single adds with {SMALL} leases");
    let small_add = singles(
        &rt,
        &client,
        &lab.hosts[0],
        &mut probe,
        &mut d,
        z.singles,
        0x61,
    );
    std::thread::sleep(Duration::from_secs(3));
    let rss_small = d.status_kb("VmRSS") / 1024.0;
    let cpu0 = d.cpu();
    let idle_small = z.idle.min(Duration::from_secs(20));
    std::thread::sleep(idle_small);
    let cpu_small = (d.cpu() - cpu0).as_secs_f64() / idle_small.as_secs_f64() * 100.0;
    d.stop();
    drop(probe);
    // The stopped host stays (a name is never reused while the kernel still tears the old
    // namespace down); only its lease goes.
    forget_own_leases(&rt, &client, &fake[..SMALL - 1]);

    // ---- N leases
    eprintln!("scale: writing {} leases", z.leases);
    let c = client.clone();
    let rest = fake[SMALL - 1..].to_vec();
    let t = Instant::now();
    rt.run(async move {
        put_leases(&c, &rest, 86_400).await;
    });
    eprintln!("scale: written in {:.1} s", t.elapsed().as_secs_f64());

    let (ip_batch, bridge_batch) = (dir.join("ip.batch"), dir.join("bridge.batch"));
    let (mut ipb, mut brb) = (String::new(), String::new());
    for l in &fake {
        let mac = weft::netlink::format_mac(&l.mac);
        let gw = l.gateway();
        let _ = writeln!(
            ipb,
            "route replace {} via {gw} dev flannel.1 onlink",
            l.subnet
        );
        let _ = writeln!(
            ipb,
            "neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent"
        );
        let _ = writeln!(
            brb,
            "fdb replace {mac} dev flannel.1 dst {} self permanent",
            l.public_ip
        );
    }
    std::fs::write(&ip_batch, ipb).expect("writing the ip batch");
    std::fs::write(&bridge_batch, brb).expect("writing the bridge batch");

    let n = z.leases as f64;
    let (mut cold, mut prog, mut base, mut hwm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut apply = Vec::new();
    let mut running: Option<(Weftd, Probe)> = None;
    for run in 0..z.cold_runs {
        if run % 2 == 0 {
            base.push(baseline(&ip_batch, &bridge_batch));
        }
        lab.add_host();
        let h = lab.hosts.last().expect("just added");
        let mut d = Weftd::spawn(
            &h.ns,
            &url,
            &h.subnet_file,
            &log(&format!("w{}.log", run + 1)),
            &[],
        );
        let done = poll(Duration::from_secs(180), Duration::from_millis(5), || {
            (metric(h, "weft_peers_programmed") >= n).then(Instant::now)
        });
        let Some(done) = done else {
            d.assert_running();
            panic!(
                "weftd did not program {n} peers within 180 s:\n{}",
                d.logs()
            );
        };
        cold.push(ms(done - d.started));
        poll(Duration::from_secs(10), Duration::from_millis(5), || {
            (metric(h, "weft_reconcile_runs_total") >= 1.0).then_some(())
        });
        prog.push(metric(h, "weft_reconcile_last_duration_seconds") * 1000.0);
        let stage = |f: &str| {
            d.log_field("kernel state reconciled", f)
                .unwrap_or(f64::NAN)
                / 1000.0
        };
        apply.push(stage("before_apply_us") + stage("apply_us"));
        hwm.push(d.status_kb("VmHWM") / 1024.0);
        let mut probe = Probe::new(&h.ns.path(), "flannel.1");
        let counts = probe.counts();
        assert_eq!(
            counts,
            (z.leases, z.leases, z.leases),
            "kernel objects (routes, neighbours, fdb) after the cold start"
        );
        if run % 2 == 1 {
            base.push(baseline(&ip_batch, &bridge_batch));
        }
        eprintln!(
            "scale cold start {}: {:.0} ms to {} peers (dump+diff+apply {:.0} ms, first reconcile {:.0} ms), baseline {:.0} ms, VmHWM {:.1} MB",
            run + 1,
            cold[run],
            z.leases,
            apply[run],
            prog[run],
            base[run],
            hwm[run]
        );
        if run + 1 < z.cold_runs {
            d.stop();
            drop(probe);
            forget_own_leases(&rt, &client, &fake);
        } else {
            running = Some((d, probe));
        }
    }
    let (mut d, mut probe) = running.expect("at least one cold run");
    let h = lab.hosts.last().expect("host");
    eprintln!("scale: single adds with {} leases", z.leases);
    let big_add = singles(&rt, &client, h, &mut probe, &mut d, z.singles, 0x62);
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("scale: idle for {} s, no peer answering", z.idle.as_secs());
    let cpu_big = idle_cpu(&mut d, z.idle);
    let rss_big = d.status_kb("VmRSS") / 1024.0;
    eprintln!("scale: peers answer through a responder on the underlay");
    let responder = Responder::start(&lab.underlay, h);
    let answered = poll(Duration::from_secs(180), Duration::from_millis(500), || {
        (metric(h, "weft_peers_reachable") >= n).then_some(())
    });
    let reachable = metric(h, "weft_peers_reachable");
    assert!(
        answered.is_some(),
        "{reachable} of {n} peers reachable after 180 s"
    );
    eprintln!(
        "scale: idle for {} s, every peer answering",
        z.idle.as_secs()
    );
    let cpu_answered = idle_cpu(&mut d, z.idle);
    let rss_answered = d.status_kb("VmRSS") / 1024.0;
    let rss_parts = ["RssAnon", "RssFile"].map(|f| d.status_kb(f) / 1024.0);
    let hwm_big = d.status_kb("VmHWM") / 1024.0;
    let ctl = weftctl_times(h, &url, z.ctl_runs);
    drop(responder);
    drop(probe);
    drop(d);

    let objects = z.leases * 3;
    let mut t = Table::comparison(&format!(
        "2. Scale: one host, {} remote leases ({} kernel objects)",
        z.leases, objects
    ));
    t.compare(
        &format!("cold start → {objects} objects programmed"),
        median(&cold),
        Some(median(&base)),
        " ms",
        Target::AtMost(1.0),
        true,
    );
    t.compare(
        &format!("datapath: dump, diff and pipelined apply of {objects} objects"),
        median(&apply),
        Some(median(&base)),
        " ms",
        Target::AtMost(1.0),
        true,
    );
    t.compare(
        "datapath: whole first reconciliation (also device, address, nftables)",
        median(&prog),
        Some(median(&base)),
        " ms",
        Target::None,
        true,
    );
    let p50 = |v: &[f64]| percentile(v, 50.0);
    t.compare(
        &format!(
            "one lease added, etcd put → kernel, p50 ({} vs {SMALL} leases)",
            z.leases
        ),
        p50(&big_add.e2e),
        Some(p50(&small_add.e2e)),
        " ms",
        Target::AtMost(5.0),
        false,
    );
    t.compare(
        &format!(
            "one lease added, etcd put → kernel, p99 ({} vs {SMALL} leases)",
            z.leases
        ),
        percentile(&big_add.e2e, 99.0),
        Some(percentile(&small_add.e2e, 99.0)),
        " ms",
        Target::None,
        false,
    );
    t.compare(
        &format!(
            "one lease added, inside weftd (fast path), p50 ({} vs {SMALL} leases)",
            z.leases
        ),
        p50(&big_add.internal),
        Some(p50(&small_add.internal)),
        " ms",
        Target::AtMost(5.0),
        false,
    );
    t.compare(
        &format!(
            "weftd CPU while idle, {} leases, no peer answering, {} s (vs {SMALL} leases, {} s)",
            z.leases,
            z.idle.as_secs(),
            idle_small.as_secs()
        ),
        cpu_big,
        Some(cpu_small),
        " % of a core",
        Target::Below(1.0),
        false,
    );
    t.compare(
        &format!(
            "weftd CPU while idle, {} leases, every peer answering, {} s (vs {SMALL} leases)",
            z.leases,
            z.idle.as_secs(),
        ),
        cpu_answered,
        Some(cpu_small),
        " % of a core",
        Target::Below(1.0),
        false,
    );
    for (what, took) in &ctl.weft {
        t.compare(
            &format!("`{what}` over {} leases", z.leases),
            *took,
            Some(ctl.etcdctl),
            " ms",
            Target::AtMost(3.0),
            true,
        );
    }
    t.note(format!(
        "Cold start: from spawning weftd (spawned from a thread inside a fresh host namespace) until its `weft_peers_programmed` metric, polled every 5 ms, reaches {}; then the bench dumps the kernel and checks {} routes, {} neighbours and {} FDB entries are there. It includes connecting to etcd, reading the config, listing {} leases, creating the VXLAN device, acquiring the host's own lease, and programming. Median of {} runs, each in a fresh namespace.",
        z.leases, z.leases, z.leases, z.leases, z.leases, z.cold_runs
    ));
    t.note(format!(
        "Baseline: `ip -n NS -batch` ({} `route replace … onlink` and {} `neigh replace … nud permanent` lines) then `bridge -n NS -batch` ({} `fdb replace … self permanent`), wall time of both processes, into a fresh namespace holding the same VXLAN device; median of {} runs interleaved with weft's.",
        z.leases, z.leases, z.leases, base.len()
    ));
    t.note("Datapath, dump/diff/apply: from weftd's own log line for its first reconciliation (`kernel state reconciled before_apply_us=… apply_us=…`): computing the desired state, dumping routes, neighbours and FDB, diffing, and applying the operations pipelined (many requests per sendmsg, acks collected by sequence number), which is the work iproute2's batches do. Whole first reconciliation: weftd's `weft_reconcile_last_duration_seconds`, which adds making sure of the device and its address and writing the nftables rules with `nft -f` (about 20 ms for the process).");
    t.note(format!(
        "One lease added: {} adds per size (after one unmeasured warm-up add), each removed before the next; start right before the etcd put, end when the host's netlink notifications have shown the route and two neighbour-table adds on the device (ARP entry and FDB entry), confirmed by an untimed dump. Inside weftd: `weft_reconcile_last_duration_seconds` after the fast path ran (samples where a resync interleaved are dropped). The baseline column is the same measurement with {SMALL} leases present: the ratio shows growth with the number of leases.",
        z.singles
    ));
    t.note("Idle CPU: utime+stime from /proc/PID/stat over the window, weftd with its default 30 s resync (so the window holds full reconciliations) and default probes (every 5 s, at most 50 a second: every peer probed every 100 s at 5,000 peers). No peer answering: the fake peers' public addresses lead nowhere, every probe times out. Every peer answering: a responder in the underlay namespace holds every fake peer's public and tunnel address behind one VXLAN device (an nftables ingress rule makes it take frames for any VTEP MAC), and the window starts once weftd reports all peers reachable.");
    t.note(format!(
        "weftctl: run inside the host's namespace against the same etcd, median of {} runs each, process start included; `weftctl check` compares this host's kernel (5,000 peers programmed) with the plan. Baseline: `etcdctl get --prefix {PREFIX}/ -w json`, one request for the same keys, in the same namespace.",
        z.ctl_runs
    ));

    let mut m = Table::comparison("6. Memory: weftd resident set");
    m.compare(
        &format!(
            "RSS idle, {} leases, no peer answering (vs {SMALL} leases)",
            z.leases
        ),
        rss_big,
        Some(rss_small),
        " MB",
        Target::AtMost(30.0),
        false,
    );
    m.compare(
        &format!("RSS idle, {} leases, every peer answering", z.leases),
        rss_answered,
        Some(rss_small),
        " MB",
        Target::AtMost(30.0),
        false,
    );
    m.compare(
        "… of it anonymous (heap, stacks) / file-backed (weftd's code and libraries)",
        rss_parts[0],
        Some(rss_parts[1]),
        " MB",
        Target::None,
        false,
    );
    m.compare(
        &format!("peak RSS (VmHWM), cold start with {} leases", z.leases),
        median(&hwm),
        None,
        " MB",
        Target::AtMost(30.0),
        false,
    );
    m.compare(
        &format!("peak RSS (VmHWM) after adds and idle, {} leases", z.leases),
        hwm_big,
        None,
        " MB",
        Target::AtMost(30.0),
        false,
    );
    m.note("VmRSS, VmHWM, RssAnon and RssFile from /proc/PID/status (MB = 1024 kB × 1024); in the anonymous/file-backed row the baseline column is the file-backed part. No other overlay agent is installed on this machine to measure next to weftd; the baseline column is weftd itself with 10 leases, which shows the cost per lease.");
    vec![t, m]
}

/// weftd's CPU over `window`, in percent of a core.
fn idle_cpu(d: &mut Weftd, window: Duration) -> f64 {
    let cpu0 = d.cpu();
    std::thread::sleep(window);
    d.assert_running();
    (d.cpu() - cpu0).as_secs_f64() / window.as_secs_f64() * 100.0
}

/// Answers every fake peer's probes: in the underlay namespace, the fake peers' public
/// addresses (198.18.64.0/18) and tunnel addresses (198.19.0.0/16) are local, one VXLAN
/// device takes their frames (nftables sets every frame's type to "for this host", since
/// each fake peer has a VTEP MAC of its own), and the replies go back to the weft host
/// through the same device. The host routes the fake public addresses to the underlay.
/// `network` without `own` (a subnet inside it), as the fewest prefixes.
fn network_less(network: Ipv4Net, own: Ipv4Net) -> Vec<Ipv4Net> {
    let base = u32::from(own.network());
    (network.prefix_len() + 1..=own.prefix_len())
        .map(|len| {
            let sibling = (base & (u32::MAX << (32 - len))) ^ (1 << (32 - len));
            Ipv4Net::new(sibling.into(), len).expect("a prefix length of at most 32")
        })
        .collect()
}

struct Responder<'a> {
    underlay: &'a Netns,
}

impl<'a> Responder<'a> {
    fn start(underlay: &'a Netns, h: &Host) -> Responder<'a> {
        let own = h.subnet();
        let tunnel = own.network().to_string();
        let u = |args: &[&str]| {
            underlay.ip(args);
        };
        u(&[
            "route",
            "add",
            "local",
            "198.18.64.0/18",
            "dev",
            "lo",
            "table",
            "main",
        ]);
        u(&[
            "link",
            "add",
            "vxr",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "nolearning",
        ]);
        u(&["link", "set", "vxr", "up"]);
        // Every fake peer's tunnel address is local here; the host's own subnet is not
        // (replies go back to it through vxr): the network less the own subnet, as the
        // sibling of each of the own subnet's supernets.
        let network = "198.19.0.0/16".parse().expect("the bench's network");
        for net in network_less(network, own) {
            u(&["route", "add", "local", &net.to_string(), "dev", "lo"]);
        }
        u(&[
            "route",
            "add",
            &own.to_string(),
            "via",
            &tunnel,
            "dev",
            "vxr",
            "onlink",
        ]);
        let mac = h.vtep_mac();
        u(&[
            "neigh",
            "add",
            &tunnel,
            "lladdr",
            &mac,
            "dev",
            "vxr",
            "nud",
            "permanent",
        ]);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                underlay.name(),
                "bridge",
                "fdb",
                "append",
                &mac,
            ])
            .args(["dev", "vxr", "dst", &h.ip, "self", "permanent"])
            .output()
            .expect("running bridge");
        assert!(
            out.status.success(),
            "bridge fdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = "table netdev weft_bench_responder {\n\
             chain in { type filter hook ingress device \"vxr\" priority 0; meta pkttype set host; }\n}\n";
        let mut nft = Command::new("ip");
        nft.args(["netns", "exec", underlay.name(), "nft", "-f", "-"]);
        let out = testkit::cmd::with_stdin(&mut nft, rules.as_bytes());
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        h.ns.ip(&[
            "route",
            "add",
            "198.18.64.0/18",
            "via",
            testkit::lab::ETCD_IP,
        ]);
        Responder { underlay }
    }
}

impl Drop for Responder<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.underlay.name(),
                "nft",
                "delete",
                "table",
                "netdev",
            ])
            .arg("weft_bench_responder")
            .output();
        let _ = Command::new("ip")
            .args(["-n", self.underlay.name(), "link", "del", "vxr"])
            .output();
    }
}

/// How long weftctl's leases, status and check take over the leases, next to etcdctl
/// reading the same keys.
struct CtlTimes {
    weft: Vec<(&'static str, f64)>,
    etcdctl: f64,
}

fn weftctl_times(h: &Host, url: &str, runs: usize) -> CtlTimes {
    let weftctl = crate::rig::weftd_bin().with_file_name("weftctl");
    let in_ns = |program: &std::path::Path| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", h.ns.name()]).arg(program);
        c
    };
    let mut weft = Vec::new();
    for (what, args) in [
        ("weftctl leases", &["leases"][..]),
        ("weftctl status", &["status", "--pool-warn-below", "0"][..]),
        (
            "weftctl check",
            &["check", "--iface", "eth0", "--subnet-file"][..],
        ),
    ] {
        let took = crate::rig::time_runs(runs, || {
            let mut c = in_ns(&weftctl);
            c.args(["--etcd-endpoints", url]).args(args);
            if what == "weftctl check" {
                c.arg(&h.subnet_file);
            }
            c
        });
        weft.push((what, took));
    }
    let etcdctl = crate::rig::time_runs(runs, || {
        let mut c = in_ns(std::path::Path::new("/usr/bin/etcdctl"));
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={url}"))
            .args(["get", "--prefix", &format!("{PREFIX}/"), "-w", "json"]);
        c
    });
    CtlTimes { weft, etcdctl }
}
