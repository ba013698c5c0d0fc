//! Network policy on the path a container sees: the real plugin's ADD, and TCP between two
//! containers it attached to one bridge, with 100 policies (and 1,000 workloads) in force
//! next to none, taking turns in one run so both meet the same machine.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use testkit::netns::Netns;
use weft::firewall::enforce::{Enforcer, Inputs};
use weft::firewall::policy::Policy;

use crate::cni::exec;
use crate::datapath::{iperf, iperf_server};
use crate::policy::{policy, workload};
use crate::report::{median, percentile, Table, Target};
use crate::rig::plugin_bin;

pub struct Sizes {
    pub policies: usize,
    pub workloads: usize,
    /// Containers ADDed per turn (the first two also carry the TCP test).
    pub containers: usize,
    pub rounds: usize,
    pub iperf_secs: u32,
}

/// iperf3's port: policy p0 lets app=a1 into app=a0 on it.
const PORT: u16 = 5201;
/// The host's subnet, as subnet.env below says: the plugin's containers take addresses in it.
const OWN_SUBNET: &str = "198.19.50.0/24";

/// One turn's figures: ADD times (ms) and TCP throughput (Gbit/s).
struct Turn {
    adds: Vec<f64>,
    gbits: f64,
}

pub fn run(z: &Sizes) -> Vec<Table> {
    let host = Netns::new("polp");
    let ctrs: Vec<Netns> = (0..z.containers).map(|_| Netns::new("pc")).collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let subnet_file = dir.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.50.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("writing subnet.env");
    host.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let mut with = Inputs {
        policies: (0..z.policies)
            .map(|i| policy(i, z.policies, PORT))
            .collect(),
        namespaces: BTreeMap::new(),
        remote: (10..z.workloads).map(|i| workload(i, z.policies)).collect(),
        subnets: vec![OWN_SUBNET.parse().expect("a subnet")],
    };
    with.policies.sort_by_key(Policy::id);
    let none = Inputs {
        policies: Vec::new(),
        namespaces: BTreeMap::new(),
        remote: Vec::new(),
        subnets: vec![OWN_SUBNET.parse().expect("a subnet")],
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..z.rounds {
        // Who goes first alternates, so neither always meets a warmer cache.
        for policed in if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            enforce(&host, &subnet_file, if policed { &with } else { &none });
            let t = turn(z, &host, &ctrs, dir.path(), &format!("{r}{policed}"));
            let kind = if policed { "with policies" } else { "none" };
            eprintln!(
                "policy path round {} {kind}: ADD p50 {:.2} ms, TCP {:.2} Gbit/s",
                r + 1,
                median(&t.adds),
                t.gbits
            );
            if policed { &mut on } else { &mut off }.push(t);
        }
    }
    enforce(&host, &subnet_file, &none);
    vec![table(z, &on, &off)]
}

/// weftd's pass over `inputs`, run in the host namespace (the first of its Enforcer: a
/// full one, the table written).
fn enforce(host: &Netns, subnet_file: &Path, inputs: &Inputs) {
    let (file, inputs) = (subnet_file.to_path_buf(), inputs.clone());
    weft::netlink::run_in_netns(&host.path(), move || {
        Enforcer::new(&file).ensure(&inputs, true).map(drop)
    })
    .expect("entering the namespace")
    .expect("a policy pass");
}

/// ADD every container (labelled app=a0, app=a1, …), TCP from the second to the first,
/// DEL them all.
fn turn(z: &Sizes, host: &Netns, ctrs: &[Netns], dir: &Path, tag: &str) -> Turn {
    let conf = |i: usize| -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "pbench", "type": "weft",
            "subnetFile": dir.join("subnet.env"), "dataDir": dir.join("weft"), "bridge": "pbench0",
            "args": {"cni": {"labels": [{"key": "app", "value": format!("a{}", i % z.policies)}]}},
        })
    };
    let vars = |cmd: &str, i: usize, c: &Netns| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", format!("pbench{tag}{i}")),
            ("CNI_NETNS", c.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            ("CNI_ARGS", format!("K8S_POD_NAME=c{i}")),
        ]
    };
    let plugin = plugin_bin();
    let adds = (ctrs.iter().enumerate())
        .map(|(i, c)| exec(&plugin, host, &vars("ADD", i, c), &conf(i)))
        .collect();
    let gbits = {
        let _server = iperf_server(&ctrs[0]);
        let (dst, src) = (address(&ctrs[0]), address(&ctrs[1]));
        iperf(&ctrs[1], &src, &dst, 1, z.iperf_secs)
    };
    for (i, c) in ctrs.iter().enumerate().rev() {
        exec(&plugin, host, &vars("DEL", i, c), &conf(i));
    }
    Turn { adds, gbits }
}

/// The IPv4 address the plugin gave `ns`'s eth0.
fn address(ns: &Netns) -> String {
    let out = ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    (out.split_whitespace())
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on eth0: {out}"))
        .to_string()
}

fn table(z: &Sizes, on: &[Turn], off: &[Turn]) -> Table {
    let per = |ts: &[Turn], f: &dyn Fn(&Turn) -> f64| median(&ts.iter().map(f).collect::<Vec<_>>());
    let p50 = |t: &Turn| percentile(&t.adds, 50.0);
    let p99 = |t: &Turn| percentile(&t.adds, 99.0);
    let gbits = |t: &Turn| t.gbits;
    let mut t = Table::comparison(&format!(
        "Network policy on the data path: {} policies and {} workloads next to none (× {} rounds)",
        z.policies, z.workloads, z.rounds
    ));
    let (u, ms) = (" Gbit/s", " ms");
    t.compare(
        "TCP throughput, 1 stream",
        per(on, &gbits),
        Some(per(off, &gbits)),
        u,
        Target::AtLeast(0.95),
        true,
    );
    t.compare(
        "CNI ADD p50",
        per(on, &p50),
        Some(per(off, &p50)),
        ms,
        Target::AtMost(1.2),
        true,
    );
    t.compare(
        "CNI ADD p99",
        per(on, &p99),
        Some(per(off, &p99)),
        ms,
        Target::None,
        true,
    );
    t.note(format!(
        "Each turn: weftd's pass (the policies, or none), then the real plugin's ADD for {} containers on one bridge (labelled app=a0, app=a1, …: each selected by a policy, so each ADD admits it to its sets), iperf3 for {} s from app=a1 to app=a0 (allowed by policy p0 on TCP {PORT}; with policies the packets cross br_netfilter and weft's forward chain, with none br_netfilter is off as weftd leaves it), DEL for all. The two kinds of turn alternate who goes first; median over rounds.",
        z.containers, z.iperf_secs
    ));
    t
}
