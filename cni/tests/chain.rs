//! weft as the first plugin of a chain at cniVersion 1.0.0 with Debian's reference portmap,
//! bandwidth, tuning and firewall plugins, run the way a runtime runs a conflist: ADD in
//! order passing each result on, CHECK with the final result, DEL in reverse order; once with
//! an IPv4-only subnet.env and once dual stack.

use std::path::PathBuf;

use serde_json::{json, Value};
use testkit::cmd::{run, unique};
use testkit::netns::Netns;
use testkit::plugin::{exec_plugin, Host, NetnsExt};

const REFERENCE: &str = "/usr/lib/cni";

fn binary(kind: &str) -> PathBuf {
    if kind == "weft" {
        return testkit::bins::plugin();
    }
    let p = PathBuf::from(REFERENCE).join(kind);
    assert!(
        p.exists(),
        "{} is missing: install containernetworking-plugins",
        p.display()
    );
    p
}

#[test]
fn chained_with_reference_plugins() {
    chain(&Host::new(Some("198.19.40.0/24")), "198.19.40.");
}

/// With both families every reference plugin sees an IPv6 address too; portmap makes its
/// IPv6 chain, so its CHECK passes as it is.
#[test]
fn chained_with_reference_plugins_dual_stack() {
    let host = Host::new_dual(Some("198.19.41.0/24"), Some("2001:db8:41::/64"));
    let result = chain(&host, "198.19.41.");
    assert!(result["ips"][1]["address"]
        .as_str()
        .unwrap()
        .starts_with("2001:db8:41::"));
}

/// Runs the chain on `host` (whose IPv4 addresses start with `prefix`); returns the result.
fn chain(host: &Host, prefix: &str) -> Value {
    let ctr = Netns::new("c");
    let id = unique("chain");
    let mut weft = host.conf("1.0.0");
    weft.as_object_mut().unwrap().remove("cniVersion");
    let plugins = vec![
        weft,
        json!({"type": "portmap", "capabilities": {"portMappings": true},
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true},
               "runtimeConfig": {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 65536}}}),
        json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}),
        json!({"type": "firewall", "backend": "iptables"}),
    ];
    let try_step = |command: &str, plugin: &Value, prev: Option<&Value>| {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(host.network);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let kind = plugin["type"].as_str().unwrap();
        exec_plugin(
            &binary(kind),
            &host.ns.path(),
            &[
                ("CNI_COMMAND", command.into()),
                ("CNI_CONTAINERID", id.clone()),
                ("CNI_NETNS", ctr.path().display().to_string()),
                ("CNI_IFNAME", "eth0".into()),
                ("CNI_PATH", REFERENCE.into()),
            ],
            conf.to_string().as_bytes(),
        )
    };
    let step = |command: &str, plugin: &Value, prev: Option<&Value>| {
        let out = try_step(command, plugin, prev);
        assert_eq!(out.code, 0, "{command} {} failed: {out:?}", plugin["type"]);
        out
    };

    let mut result: Option<Value> = None;
    for p in &plugins {
        result = Some(step("ADD", p, result.as_ref()).json());
    }
    let result = result.unwrap();
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    let addr = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.starts_with(prefix), "{result}");
    // What the chained plugins did is there.
    let host_end = result["interfaces"][1]["name"].as_str().unwrap();
    let qdisc = run(
        "tc",
        &["-n", host.ns.name(), "qdisc", "show", "dev", host_end],
    );
    assert!(qdisc.contains("tbf"), "bandwidth set no shaping: {qdisc}");
    let sysctl = run(
        "ip",
        &[
            "netns",
            "exec",
            ctr.name(),
            "cat",
            "/proc/sys/net/ipv4/conf/eth0/arp_notify",
        ],
    );
    assert_eq!(sysctl.trim(), "1");
    assert!(ctr.ping(&format!("{prefix}1")));

    for p in &plugins {
        if p["type"] != "portmap" {
            step("CHECK", p, Some(&result));
            continue;
        }
        // Debian's portmap (1.1.1) checks an IPv6 chain whenever ip6tables works, and ADD
        // only makes one for IPv6 results, so its CHECK fails for every IPv4-only network
        // (bridge + host-local too); with an IPv6 result it fails as well, looking for the
        // IPv4 rules in the IPv6 table. Its rules are checked here instead, one per family.
        let out = try_step("CHECK", p, Some(&result));
        if out.code != 0 {
            assert!(out.stdout.contains("could not check ipv6 dnat"), "{out:?}");
            for ip in result["ips"].as_array().unwrap() {
                let ip: std::net::IpAddr = ip["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let (tool, to) = match ip {
                    std::net::IpAddr::V4(_) => ("iptables", format!("{ip}:80")),
                    std::net::IpAddr::V6(_) => ("ip6tables", format!("[{ip}]:80")),
                };
                let nat = run(
                    "ip",
                    &["netns", "exec", host.ns.name(), tool, "-t", "nat", "-S"],
                );
                assert!(nat.contains(&format!("--to-destination {to}")), "{nat}");
            }
        }
    }
    for p in plugins.iter().rev() {
        step("DEL", p, Some(&result));
    }
    assert!(host.reservations().is_empty());
    assert!(ctr.link("eth0").is_none());
    result
}
