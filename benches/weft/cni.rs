//! CNI: ADD and DEL latency of the weft plugin next to Debian's reference `bridge` plugin
//! with `host-local` IPAM doing the same job (bridge with the gateway address, veth pair,
//! an address from the host's subnet, a route to the overlay) for the same containers.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::report::{median, percentile, Table, Target};
use crate::rig::{ms, plugin_bin};
use testkit::netns::Netns;

pub struct Sizes {
    pub containers: usize,
    pub rounds: usize,
}

const REFERENCE: &str = "/usr/lib/cni";

/// Runs a plugin the way a runtime does: CNI_* variables, config on stdin, in the host's
/// namespace (spawned from a thread inside it, see [`crate::rig::spawn_in`]). Returns the
/// wall time of the plugin process.
pub fn exec(binary: &Path, host: &Netns, vars: &[(&str, String)], conf: &Value) -> f64 {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let input = conf.to_string();
    let (mut child, t0) = crate::rig::spawn_in(&mut cmd, host);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing the config");
    let out = child.wait_with_output().expect("waiting for the plugin");
    let took = ms(t0.elapsed());
    assert!(
        out.status.success(),
        "{} {:?} failed: {}{}",
        binary.display(),
        vars.first(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

struct Plugin {
    binary: PathBuf,
    conf: Value,
}

/// ADD every container, then DEL them all; returns (add times, del times).
fn round(p: &Plugin, host: &Netns, ctrs: &[Netns], tag: &str) -> (Vec<f64>, Vec<f64>) {
    let vars = |cmd: &str, i: usize, c: &Netns| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", format!("bench{tag}{i}")),
            ("CNI_NETNS", c.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", REFERENCE.to_string()),
        ]
    };
    let adds = ctrs
        .iter()
        .enumerate()
        .map(|(i, c)| exec(&p.binary, host, &vars("ADD", i, c), &p.conf))
        .collect();
    let dels = ctrs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, c)| exec(&p.binary, host, &vars("DEL", i, c), &p.conf))
        .collect();
    (adds, dels)
}

pub fn run(z: &Sizes) -> Vec<Table> {
    let reference = Path::new(REFERENCE);
    for p in ["bridge", "host-local"] {
        assert!(
            reference.join(p).exists(),
            "{REFERENCE}/{p} is missing: install containernetworking-plugins"
        );
    }
    eprintln!("cni: host and {} container namespaces", z.containers);
    let host = Netns::new("cnih");
    let ctrs: Vec<Netns> = (0..z.containers).map(|_| Netns::new("c")).collect();
    let dir = tempfile::Builder::new()
        .prefix("weft-bench-cni-")
        .tempdir()
        .expect("tempdir");
    let subnet_file = dir.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .expect("writing subnet.env");
    let weft = Plugin {
        binary: plugin_bin(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "wbench", "type": "weft",
            "subnetFile": subnet_file, "dataDir": dir.path().join("weft"), "bridge": "wbench0",
        }),
    };
    let bridge = Plugin {
        binary: reference.join("bridge"),
        conf: json!({
            "cniVersion": "1.0.0", "name": "rbench", "type": "bridge",
            "bridge": "rbench0", "isGateway": true, "mtu": 1450,
            "ipam": {
                "type": "host-local", "subnet": "198.19.6.0/24",
                "dataDir": dir.path().join("host-local"),
                "routes": [{"dst": "198.19.0.0/16"}],
            },
        }),
    };
    let mut stats: [[Vec<f64>; 4]; 2] = Default::default();
    for r in 0..z.rounds {
        // Who goes first alternates, so neither always meets a warmer cache.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let p = if which == 0 { &weft } else { &bridge };
            let (a, d) = round(p, &host, &ctrs, &format!("{r}{which}"));
            eprintln!(
                "cni round {} {}: ADD p50 {:.2} ms, DEL p50 {:.2} ms",
                r + 1,
                if which == 0 {
                    "weft"
                } else {
                    "bridge+host-local"
                },
                percentile(&a, 50.0),
                percentile(&d, 50.0)
            );
            stats[which][0].push(percentile(&a, 50.0));
            stats[which][1].push(percentile(&a, 99.0));
            stats[which][2].push(percentile(&d, 50.0));
            stats[which][3].push(percentile(&d, 99.0));
        }
    }
    let mut t = Table::comparison(&format!(
        "4. CNI: {} containers, weft vs reference bridge + host-local (× {} rounds)",
        z.containers, z.rounds
    ));
    let names = ["ADD p50", "ADD p99", "DEL p50", "DEL p99"];
    for (i, name) in names.iter().enumerate() {
        let target = if i == 0 {
            Target::AtMost(0.5)
        } else {
            Target::None
        };
        t.compare(
            name,
            median(&stats[0][i]),
            Some(median(&stats[1][i])),
            " ms",
            target,
            true,
        );
    }
    t.note(format!(
        "Each round: ADD for {} containers (separate network namespaces, all staying up, so the bridge fills), then DEL for all in reverse; the two plugins alternate who goes first. Time: wall time of the plugin process, from spawn to exit, started the way a runtime starts it (CNI_* variables, config on stdin, `CNI_NETNS` set) spawned from a thread inside the host namespace (posix_spawn: the bench process is not copied). Median over rounds of each round's percentile.",
        z.containers
    ));
    t.note("Same job: weft (`bridge` wbench0, subnet from subnet.env, MTU 1450, route to 198.19.0.0/16 via the gateway) against `/usr/lib/cni/bridge` (Debian's containernetworking-plugins, `isGateway`, MTU 1450) delegating to `/usr/lib/cni/host-local` (subnet 198.19.6.0/24, route to 198.19.0.0/16). Both at cniVersion 1.0.0.");
    vec![t]
}
