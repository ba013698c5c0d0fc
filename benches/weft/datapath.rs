//! Datapath: TCP throughput (iperf3, 1 and 8 streams) and ping latency between "container"
//! addresses on two hosts: over weft's VXLAN, over weft's host-gw, over the bare underlay,
//! and over a VXLAN built by hand with iproute2 the way flannel builds it. The kernel
//! forwards in every case; the figures show whether weft's device and routes cost anything.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::report::{median, Table, Target};
use crate::rig::start_lab;
use testkit::lab::{Lab, VXLAN_CONFIG};
use testkit::netns::Netns;

pub struct Sizes {
    pub secs: u32,
    pub reps: usize,
    pub pings: u32,
}

const HOSTGW_CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}"#;

pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn iperf_server(ns: &Netns) -> Server {
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    Server(child)
}

/// Gbit/s received, from iperf3's JSON.
pub fn iperf(ns: &Netns, src: &str, dst: &str, streams: u32, secs: u32) -> f64 {
    let out = ns.exec(&[
        "iperf3",
        "-c",
        dst,
        "-B",
        src,
        "-t",
        &secs.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 {src} → {dst} printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 {src} → {dst} failed: {}", v["error"]))
        / 1e9
}

/// Mean round trip in ms.
pub fn ping(ns: &Netns, src: &str, dst: &str, count: u32) -> f64 {
    let out = ns.exec(&[
        "ping",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-I",
        src,
        dst,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("ping {src} → {dst} failed: {text}"))
}

/// flannel's VXLAN by hand in both hosts: device `hvx` (VNI 42, port 8473, nolearning,
/// MTU 1450) with the subnet's .0/32, a bridge `hbr` with .1/24 as the container address,
/// and per peer the onlink route, permanent neighbour and FDB entry.
fn hand_vxlan(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> (String, String) {
    let subnets = ["198.18.100", "198.18.101"];
    let mut macs = Vec::new();
    for (ns, ip, sn) in [(a, a_ip, subnets[0]), (b, b_ip, subnets[1])] {
        ns.ip(&[
            "link",
            "add",
            "hvx",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            ip,
            "dev",
            "eth0",
            "dstport",
            "8473",
            "nolearning",
        ]);
        ns.ip(&["link", "set", "hvx", "mtu", "1450"]);
        ns.ip(&["addr", "add", &format!("{sn}.0/32"), "dev", "hvx"]);
        ns.ip(&["link", "set", "hvx", "up"]);
        ns.ip(&["link", "add", "hbr", "type", "bridge"]);
        ns.ip(&["addr", "add", &format!("{sn}.1/24"), "dev", "hbr"]);
        ns.ip(&["link", "set", "hbr", "up"]);
        macs.push(ns.mac_of("hvx"));
    }
    for (ns, peer_sn, peer_mac, peer_ip) in [
        (a, subnets[1], &macs[1], b_ip),
        (b, subnets[0], &macs[0], a_ip),
    ] {
        let gw = format!("{peer_sn}.0");
        ns.ip(&[
            "neigh",
            "add",
            &gw,
            "lladdr",
            peer_mac,
            "dev",
            "hvx",
            "nud",
            "permanent",
        ]);
        ns.bridge(&["fdb", "add", peer_mac, "dev", "hvx", "dst", peer_ip]);
        ns.ip(&[
            "route",
            "add",
            &format!("{peer_sn}.0/24"),
            "via",
            &gw,
            "dev",
            "hvx",
            "onlink",
        ]);
    }
    (format!("{}.1", subnets[0]), format!("{}.1", subnets[1]))
}

pub fn run(z: &Sizes) -> Vec<Table> {
    for tool in ["iperf3", "ping"] {
        assert!(
            Command::new(tool).arg("-V").output().is_ok(),
            "{tool} is missing: apt-get install iperf3 iputils-ping"
        );
    }
    eprintln!("datapath: two labs (vxlan and host-gw)");
    let vx = Lab::new(2, VXLAN_CONFIG);
    let _vx_weftds = start_lab(&vx, &[]);
    let gw = Lab::new(2, HOSTGW_CONFIG);
    let _gw_weftds = start_lab(&gw, &[]);
    for h in vx.hosts.iter().chain(gw.hosts.iter()) {
        h.add_container();
    }
    let (hand_a, hand_b) = hand_vxlan(
        &vx.hosts[0].ns,
        &vx.hosts[0].ip,
        &vx.hosts[1].ns,
        &vx.hosts[1].ip,
    );
    // Both devices' settings, so a reader can check that nothing but the names differs.
    for dev in ["flannel.1", "hvx"] {
        let d = vx.hosts[0].ns.ip(&["-d", "-o", "link", "show", dev]);
        eprintln!("datapath: {}", d.trim());
    }
    let _s1 = iperf_server(&vx.hosts[1].ns);
    let _s2 = iperf_server(&gw.hosts[1].ns);

    struct Path<'a> {
        name: &'static str,
        ns: &'a Netns,
        src: String,
        dst: String,
    }
    let paths = [
        Path {
            name: "weft VXLAN",
            ns: &vx.hosts[0].ns,
            src: vx.hosts[0].container_ip().to_string(),
            dst: vx.hosts[1].container_ip().to_string(),
        },
        Path {
            name: "hand-made VXLAN (iproute2, flannel's recipe)",
            ns: &vx.hosts[0].ns,
            src: hand_a,
            dst: hand_b,
        },
        Path {
            name: "weft host-gw",
            ns: &gw.hosts[0].ns,
            src: gw.hosts[0].container_ip().to_string(),
            dst: gw.hosts[1].container_ip().to_string(),
        },
        Path {
            name: "bare underlay",
            ns: &vx.hosts[0].ns,
            src: vx.hosts[0].ip.clone(),
            dst: vx.hosts[1].ip.clone(),
        },
    ];
    for p in &paths {
        assert!(
            p.ns.exec(&["ping", "-c1", "-W2", "-I", &p.src, &p.dst])
                .status
                .success(),
            "{}: {} cannot reach {}",
            p.name,
            p.src,
            p.dst
        );
    }
    // [path][1 stream, 8 streams, ping]
    let mut m: Vec<[Vec<f64>; 3]> = paths.iter().map(|_| Default::default()).collect();
    for rep in 0..z.reps {
        // Rotate the order so no path always runs first (or last) in a repetition.
        for k in 0..paths.len() {
            let i = (k + rep) % paths.len();
            let p = &paths[i];
            m[i][0].push(iperf(p.ns, &p.src, &p.dst, 1, z.secs));
            m[i][1].push(iperf(p.ns, &p.src, &p.dst, 8, z.secs));
            m[i][2].push(ping(p.ns, &p.src, &p.dst, z.pings));
            eprintln!(
                "datapath rep {} {}: {:.2} / {:.2} Gbit/s, ping {:.3} ms",
                rep + 1,
                p.name,
                m[i][0][rep],
                m[i][1][rep],
                m[i][2][rep]
            );
        }
    }
    let med = |i: usize, j: usize| median(&m[i][j]);
    let mut t = Table::new(
        &format!(
            "5. Datapath: two hosts, {} s iperf3 runs and {} pings (× {} repetitions)",
            z.secs, z.pings, z.reps
        ),
        &["path", "TCP 1 stream", "TCP 8 streams", "ping RTT"],
    );
    for (i, p) in paths.iter().enumerate() {
        t.row(vec![
            p.name.into(),
            format!("{:.2} Gbit/s", med(i, 0)),
            format!("{:.2} Gbit/s", med(i, 1)),
            format!("{:.3} ms", med(i, 2)),
        ]);
    }
    let mut c = Table::comparison("5. Datapath: weft VXLAN against the hand-made VXLAN");
    c.compare(
        "TCP 1 stream",
        med(0, 0),
        Some(med(1, 0)),
        " Gbit/s",
        Target::AtLeast(0.97),
        true,
    );
    c.compare(
        "TCP 8 streams",
        med(0, 1),
        Some(med(1, 1)),
        " Gbit/s",
        Target::AtLeast(0.97),
        true,
    );
    c.compare(
        "ping RTT",
        med(0, 2),
        Some(med(1, 2)),
        " ms",
        Target::None,
        true,
    );
    c.compare(
        "TCP 1 stream, weft host-gw vs bare underlay",
        med(2, 0),
        Some(med(3, 0)),
        " Gbit/s",
        Target::None,
        true,
    );
    t.note("Hosts are network namespaces joined by veth pairs to a bridge in an underlay namespace; a \"container\" address is the subnet's .1 on the host's bridge (cni0 for weft, hbr by hand), and traffic is sourced from it (`iperf3 -B`, `ping -I`), so it takes the overlay route. The hand-made VXLAN lives in the same two hosts as weft's (VNI 42, port 8473, 198.18.100.0/24 and 198.18.101.0/24), so both meet the same machine at the same moment; the four paths rotate order each repetition. Figures are medians over repetitions; iperf3's received rate.");
    t.note("Everything runs on one machine: sender, receiver and both kernels' VXLAN work share its cores, so absolute figures are far below a real NIC's; the ratios are what carries over.");
    vec![t, c]
}
