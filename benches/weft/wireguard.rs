//! WireGuard: TCP throughput, ping latency and wireguard-go's CPU per Gbit over weft's
//! `flannel-wg` next to a `wgref` pair made by hand with `wg` in the same two hosts (same
//! userspace implementation, same MTU), and how long a joining host takes to become every
//! existing host's WireGuard peer and to answer a ping, next to the same join on VXLAN.
//!
//! This kernel has no WireGuard module, so weftd starts Debian's wireguard-go, whose control
//! socket (/run/wireguard/<dev>.sock) is one path for every network namespace: each host runs
//! weftd, wireguard-go and `wg` in a mount namespace of its own (testkit/src/wg.rs).

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{EventType, WatchOptions};
use ipnet::{IpNet, Ipv4Net};
use weft::backend::wireguard::uapi;
use weft::backend::wireguard::{parse_key, Key};
use weft::netlink::{Family, Netlink};
use weft::subnet::{lease_key_name, parse_lease_key_name};

use crate::datapath::{iperf, iperf_server, ping};
use crate::report::{median, percentile, Table, Target};
use crate::rig::{etcd_client, ms, poll, proc_cpu, weftd_bin, NsRuntime, PREFIX};
use testkit::lab::{Host, Lab, HEALTHZ_PORT, VXLAN_CONFIG};
use testkit::wg::{exec, exec_ok, kill_netns_processes, WG_CONFIG, WG_DEVICE};

pub struct Sizes {
    pub secs: u32,
    pub reps: usize,
    pub pings: u32,
    /// Hosts already running when one more joins, and joins measured per backend.
    pub hosts: usize,
    pub joins: usize,
}

/// The hand-made pair's device, port and subnets (inside 198.18.0.0/15, outside the lab's
/// underlay and overlay): `198.18.110.0/24` on the first host, `198.18.111.0/24` on the second,
/// and the pair's "network" 198.18.110.0/23 routed on the device, as flannel routes its own.
const REF_DEVICE: &str = "wgref";
const REF_PORT: &str = "51830";
const REF_SUBNETS: [&str; 2] = ["198.18.110", "198.18.111"];
const REF_NETWORK: &str = "198.18.110.0/23";

/// A weftd started inside a host through `nsenter`: the host's network namespace and, for a
/// WireGuard host, its mount namespace (nsenter execs weftd without forking, so the child is
/// weftd). Default log level and resync interval, as in [`crate::rig::Weftd`]; killed on drop.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn spawn(h: &Host, log: &Path) -> Agent {
        let out = std::fs::File::create(log).expect("creating the weftd log");
        let mut cmd = Command::new("nsenter");
        match &h.mnt {
            Some(m) => cmd.args(m.enter_args(&h.ns)),
            None => cmd.arg(format!("--net={}", h.ns.path().display())),
        };
        cmd.arg(weftd_bin())
            .args(["--etcd-endpoints", &h_url(), "--iface", "eth0"])
            .arg("--healthz-port")
            .arg(HEALTHZ_PORT.to_string())
            .arg("--subnet-file")
            .arg(&h.subnet_file)
            .env("WIREGUARD_KEY_FILE", h.wg_key_file())
            .env_remove("LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("cloning the log handle"))
            .stderr(out);
        Agent {
            child: Some(cmd.spawn().expect("starting weftd through nsenter")),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_ready(&mut self, h: &Host) {
        let ok = poll(Duration::from_secs(30), Duration::from_millis(20), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "weftd on {} exited with {st}:\n{}",
                    h.ns.name(),
                    self.logs()
                );
            }
            (h.http_get("/readyz").0 == 200).then_some(())
        });
        assert!(ok.is_some(), "weftd not ready in 30 s:\n{}", self.logs());
    }

    /// SIGTERM and wait, as systemd stops it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let done = poll(Duration::from_secs(10), Duration::from_millis(10), || {
                c.try_wait().ok().flatten()
            });
            if done.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn h_url() -> String {
    format!("http://{}:2379", testkit::lab::ETCD_IP)
}

/// The wireguard-go process running `dev` in host `h` (found among the namespace's processes
/// by its command line: wireguard-go detaches itself, so nobody holds its pid).
fn wireguard_go_pid(h: &Host, dev: &str) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "pids", h.ns.name()])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"wireguard-go"))
                && args.contains(&dev.as_bytes())
        })
        .unwrap_or_else(|| panic!("no wireguard-go for {dev} in {}", h.ns.name()))
}

/// flannel's WireGuard by hand in both hosts, with the tools flannel's users would reach
/// for: wireguard-go started as weftd starts it (detached), `wg set` for key, port and the
/// peer (endpoint, the peer's subnet as allowed IPs), the subnet's .0/32 on the device, the
/// pair's network routed on it, MTU `mtu`, and a bridge `hbrw` holding the "container"
/// address .1/24. Returns the two container addresses.
fn hand_wireguard(hosts: [&Host; 2], mtu: u32) -> (String, String) {
    let mut publics = Vec::new();
    for (h, sn) in hosts.iter().zip(REF_SUBNETS) {
        exec_ok(h, &["wireguard-go", REF_DEVICE]);
        let key = format!("/run/wireguard/{REF_DEVICE}.key");
        let public = exec_ok(
            h,
            &[
                "sh",
                "-c",
                &format!("umask 077; wg genkey >{key}; wg pubkey <{key}"),
            ],
        );
        publics.push(public.trim().to_string());
        exec_ok(
            h,
            &[
                "wg",
                "set",
                REF_DEVICE,
                "private-key",
                &key,
                "listen-port",
                REF_PORT,
            ],
        );
        h.ns.ip(&["addr", "add", &format!("{sn}.0/32"), "dev", REF_DEVICE]);
        h.ns.ip(&["link", "set", REF_DEVICE, "mtu", &mtu.to_string(), "up"]);
        h.ns.ip(&["route", "add", REF_NETWORK, "dev", REF_DEVICE]);
        h.ns.ip(&["link", "add", "hbrw", "type", "bridge"]);
        h.ns.ip(&["addr", "add", &format!("{sn}.1/24"), "dev", "hbrw"]);
        h.ns.ip(&["link", "set", "hbrw", "up"]);
    }
    for (i, h) in hosts.iter().enumerate() {
        let peer = 1 - i;
        exec_ok(
            h,
            &[
                "wg",
                "set",
                REF_DEVICE,
                "peer",
                &publics[peer],
                "endpoint",
                &format!("{}:{REF_PORT}", hosts[peer].ip),
                "allowed-ips",
                &format!("{}.0/24", REF_SUBNETS[peer]),
            ],
        );
    }
    (
        format!("{}.1", REF_SUBNETS[0]),
        format!("{}.1", REF_SUBNETS[1]),
    )
}

/// A lab of `n` WireGuard hosts, each in its own mount namespace, running weftd.
fn wg_lab(n: usize) -> Lab {
    let mut lab = Lab::new(n, WG_CONFIG);
    for h in &mut lab.hosts {
        h.use_wireguard();
    }
    lab
}

/// Starts weftd on hosts `0..n` of `lab` and waits until each is ready and every one holds
/// every other (a peer of its device for WireGuard, a route for VXLAN).
fn start_agents(lab: &Lab, n: usize, name: &str) -> Vec<Agent> {
    let mut agents: Vec<Agent> = lab.hosts[..n]
        .iter()
        .enumerate()
        .map(|(i, h)| Agent::spawn(h, &lab.dir.path().join(format!("{name}-h{}.log", i + 1))))
        .collect();
    for (a, h) in agents.iter_mut().zip(&lab.hosts) {
        a.wait_ready(h);
    }
    let subnets: Vec<Ipv4Net> = lab.hosts[..n].iter().map(|h| h.subnet()).collect();
    for (i, (a, h)) in agents.iter().zip(&lab.hosts).enumerate() {
        let mut check = Check::new(h, a);
        for (j, s) in subnets.iter().enumerate() {
            let ok = poll(Duration::from_secs(10), Duration::from_millis(20), || {
                (i == j || check.has(*s, None)).then_some(())
            });
            assert!(ok.is_some(), "host {} never got {s}:\n{}", i + 1, a.logs());
        }
    }
    agents
}

fn throughput(z: &Sizes) -> Vec<Table> {
    eprintln!("wireguard: two WireGuard hosts");
    let lab = wg_lab(2);
    let agents = start_agents(&lab, 2, "tp");
    for h in &lab.hosts {
        h.add_container();
    }
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    let mtu = h1.ns.mtu_of(WG_DEVICE);
    let eth_mtu = h1.ns.mtu_of("eth0");
    let (ref_a, ref_b) = hand_wireguard([h1, h2], mtu);
    for dev in [WG_DEVICE, REF_DEVICE] {
        eprintln!(
            "wireguard: {}",
            h1.ns.ip(&["-d", "-o", "link", "show", dev]).trim()
        );
    }
    let _server = iperf_server(&h2.ns);
    struct Path {
        name: &'static str,
        dev: &'static str,
        src: String,
        dst: String,
    }
    let paths = [
        Path {
            name: "weft `flannel-wg` (wireguard-go)",
            dev: WG_DEVICE,
            src: h1.container_ip().to_string(),
            dst: h2.container_ip().to_string(),
        },
        Path {
            name: "hand-made `wgref` (wireguard-go, `wg`)",
            dev: REF_DEVICE,
            src: ref_a,
            dst: ref_b,
        },
    ];
    let pids: Vec<[u32; 2]> = paths
        .iter()
        .map(|p| [wireguard_go_pid(h1, p.dev), wireguard_go_pid(h2, p.dev)])
        .collect();
    for p in &paths {
        let ok = poll(Duration::from_secs(10), Duration::from_millis(100), || {
            (h1.ns.exec(&["ping", "-c1", "-W1", "-I", &p.src, &p.dst]))
                .status
                .success()
                .then_some(())
        });
        assert!(ok.is_some(), "{}: {} cannot reach {}", p.name, p.src, p.dst);
    }
    let cpu = |i: usize| -> f64 {
        pids[i]
            .iter()
            .map(|p| proc_cpu(*p).as_secs_f64())
            .sum::<f64>()
    };
    // [path][1 stream, 8 streams, ping, CPU s/Gbit 1 stream, CPU s/Gbit 8 streams]
    let mut m: Vec<[Vec<f64>; 5]> = paths.iter().map(|_| Default::default()).collect();
    for rep in 0..z.reps {
        for k in 0..paths.len() {
            let i = (k + rep) % paths.len();
            let p = &paths[i];
            for (j, streams) in [(0, 1), (1, 8)] {
                let c0 = cpu(i);
                let gbps = iperf(&h1.ns, &p.src, &p.dst, streams, z.secs);
                let used = cpu(i) - c0;
                m[i][j].push(gbps * 1000.0);
                m[i][3 + j].push(used / (gbps * z.secs as f64));
            }
            m[i][2].push(ping(&h1.ns, &p.src, &p.dst, z.pings));
            eprintln!(
                "wireguard rep {} {}: {:.0} / {:.0} Mbit/s, CPU {:.2} / {:.2} s per Gbit, ping {:.3} ms",
                rep + 1,
                p.name,
                m[i][0][rep],
                m[i][1][rep],
                m[i][3][rep],
                m[i][4][rep],
                m[i][2][rep]
            );
        }
    }
    for p in &paths {
        let dump = exec_ok(h1, &["wg", "show", p.dev, "transfer"]);
        eprintln!("wireguard: {} transfer on host 1: {}", p.dev, dump.trim());
    }
    drop(agents);
    let med = |i: usize, j: usize| median(&m[i][j]);
    let mut t = Table::new(
        &format!(
            "9. WireGuard datapath: two hosts, {} s iperf3 runs and {} pings (× {} repetitions)",
            z.secs, z.pings, z.reps
        ),
        &[
            "path",
            "TCP 1 stream",
            "TCP 8 streams",
            "ping RTT",
            "wireguard-go CPU per Gbit, 1 / 8 streams",
        ],
    );
    for (i, p) in paths.iter().enumerate() {
        t.row(vec![
            p.name.into(),
            format!("{:.0} Mbit/s", med(i, 0)),
            format!("{:.0} Mbit/s", med(i, 1)),
            format!("{:.3} ms", med(i, 2)),
            format!("{:.2} s / {:.2} s", med(i, 3), med(i, 4)),
        ]);
    }
    t.note(format!(
        "Both tunnels are Debian's wireguard-go (userspace: this kernel has no WireGuard module), started the same way (detached) in the same two hosts and mount namespaces, at the same MTU ({mtu}, the underlay's {eth_mtu} less 80). weft's path: container address to container address (the subnets' .1 on cni0) over `flannel-wg`, port 51820. Hand-made: `wgref`, port {REF_PORT}, 198.18.110.0/24 and 198.18.111.0/24, configured with `wg set` as flannel configures its device. Paths alternate order each repetition; medians; iperf3's received rate."
    ));
    t.note("CPU per Gbit: user + system CPU seconds of both hosts' wireguard-go processes for that device (/proc/PID/stat) over the iperf3 run, divided by the Gbit it carried (received rate × duration). The kernel's own share (veth, TUN, TCP) is not in it; iperf3's is not either.");
    let mut c =
        Table::comparison("9. WireGuard datapath: weft against the hand-made wireguard-go pair");
    for (figure, j, unit, target) in [
        ("TCP 1 stream", 0, " Mbit/s", Target::AtLeast(0.95)),
        ("TCP 8 streams", 1, " Mbit/s", Target::AtLeast(0.95)),
        ("ping RTT", 2, " ms", Target::None),
        ("wireguard-go CPU per Gbit, 1 stream", 3, " s", Target::None),
        (
            "wireguard-go CPU per Gbit, 8 streams",
            4,
            " s",
            Target::None,
        ),
    ] {
        c.compare(figure, med(0, j), Some(med(1, j)), unit, target, true);
    }
    vec![t, c]
}

/// Whether a host holds a remote subnet: for WireGuard, a peer of its `flannel-wg` whose
/// allowed IPs hold the subnet (and whose key is `key`, when given), read over wireguard-go's
/// control socket reached through weftd's mount namespace (/proc/PID/root); for VXLAN, the
/// route to the subnet in a netlink dump of its namespace.
enum Check {
    Wg(PathBuf),
    Vx(Box<Netlink>),
}

impl Check {
    fn new(h: &Host, a: &Agent) -> Check {
        if h.mnt.is_some() {
            Check::Wg(PathBuf::from(format!(
                "/proc/{}/root/run/wireguard/{WG_DEVICE}.sock",
                a.pid()
            )))
        } else {
            let nl = weft::netlink::run_in_netns(&h.ns.path(), Netlink::new)
                .expect("entering a host")
                .expect("a netlink socket");
            Check::Vx(Box::new(nl))
        }
    }

    fn has(&mut self, subnet: Ipv4Net, key: Option<&Key>) -> bool {
        match self {
            Check::Wg(sock) => {
                let Some(text) = uapi_get(sock) else {
                    return false;
                };
                let dev = uapi::parse_get(&text).expect("wireguard-go's get answer");
                dev.peers.iter().any(|p| {
                    key.is_none_or(|k| p.public_key == *k)
                        && p.allowed_ips.contains(&IpNet::V4(subnet))
                })
            }
            Check::Vx(nl) => nl
                .routes(Family::V4)
                .expect("dumping routes")
                .iter()
                .any(|r| r.dst == IpNet::V4(subnet)),
        }
    }
}

/// wireguard-go's answer to `get=1` up to its errno line; None when the socket does not
/// answer (the device is starting).
fn uapi_get(sock: &Path) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"get=1\n\n").ok()?;
    let mut text = String::new();
    for line in BufReader::new(s).lines() {
        let line = line.ok()?;
        if line.starts_with("errno=") {
            return (line == "errno=0").then_some(text);
        }
        text += &line;
        text.push('\n');
    }
    None
}

/// Pings `dst` from `src` in namespace `ns` every 2 ms and returns when the first reply was received
/// (ping's own `-D` timestamp), or None within `timeout`; with whatever else ping printed
/// before it (errors, unreachables), for a slow join's report.
fn first_reply(
    ns: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    timeout: Duration,
) -> (Option<SystemTime>, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-D", "-i", "0.002"])
        .args(["-w", &timeout.as_secs().max(1).to_string()])
        .args(["-I", &src.to_string(), &dst.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ping");
    let out = child.stdout.take().expect("ping's stdout");
    let (mut found, mut other) = (None, String::new());
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if !line.contains("bytes from") {
            other += &line;
            other.push('\n');
            continue;
        }
        let ts = line
            .strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .and_then(|t| t.parse::<f64>().ok());
        found = ts.map(|t| UNIX_EPOCH + Duration::from_secs_f64(t));
        break;
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut other);
    }
    (found, other)
}

/// One kind of join's samples, in ms: weftd start → lease in etcd, lease → peer (route) on
/// every existing host, lease → first ping reply, weftd start → first ping reply.
#[derive(Default)]
struct Joins {
    lease: Vec<f64>,
    all: Vec<f64>,
    ping: Vec<f64>,
    start_ping: Vec<f64>,
}

/// `z.hosts` hosts run weftd with `config`; one more host joins `z.joins` times, each time
/// with no key, no subnet file and no device (a fresh mount namespace for WireGuard), and
/// leaves again: weftd stopped, its processes killed, its lease deleted and seen gone
/// everywhere before the next join.
fn joins(z: &Sizes, wireguard: bool) -> Joins {
    let kind = if wireguard { "wireguard" } else { "vxlan" };
    eprintln!("wireguard: {} {kind} hosts for joins", z.hosts);
    let mut lab = if wireguard {
        wg_lab(z.hosts)
    } else {
        Lab::new(z.hosts, VXLAN_CONFIG)
    };
    let agents = start_agents(&lab, z.hosts, kind);
    let mut checks: Vec<Check> = lab
        .hosts
        .iter()
        .zip(&agents)
        .map(|(h, a)| Check::new(h, a))
        .collect();
    let existing: HashSet<Ipv4Net> = lab.hosts.iter().map(|h| h.subnet()).collect();
    let j = lab.add_host();

    let rt = NsRuntime::new(Some(&lab.underlay.path()), 1);
    let url = lab.etcd.client_url();
    let client = rt.run(async move { etcd_client(&url).await });
    let (wtx, wrx) = mpsc::channel::<(String, String, Instant)>();
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
                if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                    let k = String::from_utf8_lossy(kv.key()).into_owned();
                    let v = String::from_utf8_lossy(kv.value()).into_owned();
                    let _ = wtx.send((k, v, now));
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the lease watch did not start");
    let from = lab.hosts[0].subnet().network();

    let mut out = Joins::default();
    for n in 0..z.joins {
        {
            let h = &mut lab.hosts[j];
            if wireguard {
                // A fresh mount namespace: empty /run/wireguard and /run/flannel.
                h.mnt = None;
                h.use_wireguard();
            }
            let _ = std::fs::remove_file(&h.subnet_file);
            let _ = std::fs::remove_file(h.wg_key_file());
        }
        let h = &lab.hosts[j];
        while wrx.try_recv().is_ok() {}
        let (t0, wall0) = (Instant::now(), SystemTime::now());
        let mut agent = Agent::spawn(h, &lab.dir.path().join(format!("{kind}-join{n}.log")));
        let (key, value, t_lease) = loop {
            match wrx.recv_timeout(Duration::from_secs(20)) {
                Ok((k, v, t)) => {
                    let name = k.trim_start_matches(&format!("{PREFIX}/subnets/"));
                    match parse_lease_key_name(name) {
                        Ok((s, _)) if !existing.contains(&s) => break (k, v, t),
                        _ => continue,
                    }
                }
                Err(_) => panic!("join {n}: no new lease in 20 s:\n{}", agent.logs()),
            }
        };
        let name = key.trim_start_matches(&format!("{PREFIX}/subnets/"));
        let subnet = parse_lease_key_name(name).expect("checked above").0;
        let public: Option<Key> = wireguard.then(|| {
            let v: serde_json::Value = serde_json::from_str(&value).expect("lease JSON");
            parse_key(v["BackendData"]["PublicKey"].as_str().unwrap_or(""))
                .unwrap_or_else(|| panic!("join {n}: no public key in {value}"))
        });
        let pinger = {
            let (ns, dst) = (lab.hosts[0].ns.name(), subnet.network());
            std::thread::scope(|s| {
                let p = s.spawn(|| first_reply(ns, from, dst, Duration::from_secs(15)));
                let mut seen: Vec<Option<Instant>> = vec![None; checks.len()];
                let deadline = Instant::now() + Duration::from_secs(10);
                while seen.iter().any(|s| s.is_none()) && Instant::now() < deadline {
                    for (c, s) in checks.iter_mut().zip(seen.iter_mut()) {
                        if s.is_none() && c.has(subnet, public.as_ref()) {
                            *s = Some(Instant::now());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut all = seen.iter().map(|s| s.map(|t| t - t_lease));
                let worst = all.try_fold(Duration::ZERO, |a, b| Some(a.max(b?)));
                let (reply, said) = p.join().expect("the pinger");
                (worst, reply, said)
            })
        };
        let (all, reply, said) = pinger;
        let (Some(all), Some(reply)) = (all, reply) else {
            panic!(
                "join {n} ({subnet}): not every host had it in 10 s ({all:?}), or no ping reply in 15 s ({reply:?}): {said}\n{}",
                agent.logs()
            );
        };
        let start_ping = reply.duration_since(wall0).unwrap_or_default();
        let lease = t_lease - t0;
        out.lease.push(ms(lease));
        out.all.push(ms(all));
        out.start_ping.push(ms(start_ping));
        out.ping.push(ms(start_ping.saturating_sub(lease)));
        eprintln!(
            "wireguard {kind} join {}: start → lease {:.1} ms, lease → all {} hosts {:.1} ms, lease → ping {:.1} ms",
            n + 1,
            ms(lease),
            z.hosts,
            ms(all),
            ms(start_ping.saturating_sub(lease))
        );
        if start_ping.saturating_sub(lease) > Duration::from_secs(1) {
            // A slow first reply (wireguard-go's handshake retry?): what both ends knew.
            let lease_wall = humantime::format_rfc3339_micros(wall0 + lease);
            let reply_wall = humantime::format_rfc3339_micros(reply);
            eprintln!("slow join {}: lease seen {lease_wall}, first reply {reply_wall}; ping also said: {said}", n + 1);
            if wireguard {
                for (who, host) in [("host 1", &lab.hosts[0]), ("the new host", h)] {
                    let out = exec(host, &["wg", "show", WG_DEVICE]);
                    eprintln!(
                        "{who}: wg show at {}:\n{}",
                        humantime::format_rfc3339_micros(SystemTime::now()),
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
            eprintln!("the new host's weftd:\n{}", agent.logs());
        }

        // The host leaves: weftd stops (its datapath stays, as on a real host), its
        // processes and device go, its lease is deleted and every host drops it.
        agent.stop();
        kill_netns_processes(&h.ns);
        if !wireguard {
            let _ = h.ns.try_ip(&["link", "del", "flannel.1"]);
        }
        let mut c = client.clone();
        let k = format!("{PREFIX}/subnets/{}", lease_key_name(subnet, None));
        rt.run(async move { c.delete(k, None).await.expect("deleting the lease") });
        for c in checks.iter_mut() {
            let gone = poll(Duration::from_secs(10), Duration::from_millis(5), || {
                (!c.has(subnet, None)).then_some(())
            });
            assert!(gone.is_some(), "join {n}: {subnet} not removed within 10 s");
        }
    }
    drop(checks);
    drop(agents);
    out
}

pub fn run(z: &Sizes) -> Vec<Table> {
    for tool in ["wireguard-go", "wg", "iperf3", "nsenter"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: apt-get install wireguard-go wireguard-tools iperf3 util-linux"
        );
    }
    let mut out = throughput(z);
    let wg = joins(z, true);
    let vx = joins(z, false);
    let mut t = Table::comparison(&format!(
        "10. WireGuard join: {} hosts running, one more joins {} times; baseline: the same join on VXLAN",
        z.hosts, z.joins
    ));
    let rows = [
        ("weftd start → lease in etcd", [&wg.lease, &vx.lease]),
        (
            "lease in etcd → peer (VXLAN: route) on every existing host",
            [&wg.all, &vx.all],
        ),
        ("lease in etcd → first ping reply", [&wg.ping, &vx.ping]),
        (
            "weftd start → first ping reply",
            [&wg.start_ping, &vx.start_ping],
        ),
    ];
    for (figure, [w, v]) in rows {
        for (p, pn) in [(50.0, "p50"), (99.0, "p99")] {
            t.compare(
                &format!("{figure}, {pn}"),
                percentile(w, p),
                Some(percentile(v, p)),
                " ms",
                Target::None,
                false,
            );
        }
    }
    t.note(format!(
        "Each join: a host with no key file, no subnet.env and no device (WireGuard: a fresh mount namespace, so wireguard-go starts anew) starts weftd through nsenter. \"Start\": just before the spawn. \"Lease in etcd\": a bare etcd watch in the bench sees the new lease's PUT. \"Peer on every host\": each of the {} running hosts' wireguard-go, asked over its control socket every ~1 ms, holds a peer with the lease's public key and subnet (VXLAN: each host's kernel routes to the subnet, netlink dump every ~1 ms); the slowest host counts. \"First ping reply\": host 1 pings the new host's device address (subnet .0) every 2 ms from the moment the lease is seen; ping's own reply timestamp. Then the host leaves (weftd stopped, its processes killed, its lease deleted and seen gone on every host) before the next join.",
        z.hosts
    ));
    t.note("On WireGuard the first reply also needs a handshake; wireguard-go retries one that went unanswered only after 5 s (REKEY_TIMEOUT), so a ping that reaches the new host before it knows the sender shows up here as seconds.");
    t.note(
        "Percentiles are nearest-rank over the joins: below 100 joins, p99 is the slowest join.",
    );
    out.push(t);
    out
}
