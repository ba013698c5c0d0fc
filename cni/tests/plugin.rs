//! The plugin executed as runtimes execute it, inside namespaces this test makes: every
//! command in every spec version, one test per error class, parallel ADD/DEL, DEL without a
//! netns, GC, CHECK against a damaged container, and a host whose subnet changed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};
use testkit::bins;
use testkit::cmd::{unique, Output};
use testkit::netns::Netns;
use testkit::plugin::{exec_plugin, Host, NetnsExt, MTU, NETWORK};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn ip_of(result: &Value) -> IpAddr {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    cidr.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn every_command_in_every_version() {
    let host = Host::new(Some("198.19.10.0/24"));
    for (n, version) in VERSIONS.into_iter().enumerate() {
        let ctr = Netns::new("c");
        let id = format!("{}-{n}", ctr.name());
        let conf = host.conf(version);

        let r = host.plugin("ADD", &id, Some(&ctr.path()), &conf).ok();
        assert_eq!(r["cniVersion"], version);
        let ifaces = r["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3, "{r}");
        assert_eq!(ifaces[0]["name"], host.bridge.as_str());
        assert!(ifaces[0].get("sandbox").is_none() && ifaces[1].get("sandbox").is_none());
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], ctr.path().display().to_string());
        for i in ifaces {
            let mac = i["mac"].as_str().unwrap_or_default();
            assert_eq!(mac.len(), 17, "every interface has a MAC: {r}");
        }
        assert_eq!(r["ips"][0]["interface"], 2);
        assert_eq!(r["ips"][0]["gateway"], "198.19.10.1");
        let legacy = version < "1.0.0";
        assert_eq!(r["ips"][0].get("version").is_some(), legacy, "{r}");
        if legacy {
            assert_eq!(r["ips"][0]["version"], "4");
        }
        assert_eq!(ifaces[2].get("mtu").is_some(), version == "1.1.0", "{r}");
        assert_eq!(r["routes"][0]["dst"], NETWORK);

        // What a user of the container sees.
        let addr = ip_of(&r);
        assert!(host.reservations().contains(&addr));
        assert_eq!(ctr.addrs("eth0"), vec![format!("{addr}/24")]);
        let link = ctr.link("eth0").unwrap();
        assert_eq!(link["mtu"], MTU);
        assert_eq!(link["address"], ifaces[2]["mac"]);
        let routes = ctr.ip(&["route"]);
        assert!(
            routes.contains("198.19.0.0/16 via 198.19.10.1 dev eth0"),
            "{routes}"
        );
        assert!(
            ctr.ping("198.19.10.1"),
            "container cannot reach its gateway"
        );
        let host_end = host.ns.link(ifaces[1]["name"].as_str().unwrap()).unwrap();
        assert_eq!(host_end["master"], host.bridge.as_str());
        assert_eq!(
            host.ns.addrs(&host.bridge),
            vec!["198.19.10.1/24".to_string()]
        );

        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        let check = host.plugin("CHECK", &id, Some(&ctr.path()), &with_prev);
        if version >= "0.4.0" {
            assert_eq!(check.ok(), Value::Null);
        } else {
            assert!(check.err(1).contains("CHECK"));
        }
        for cmd in ["GC", "STATUS"] {
            let mut c = conf.clone();
            c["cni.dev/valid-attachments"] = json!([{"containerID": id, "ifname": "eth0"}]);
            let out = host.plugin(cmd, &id, None, &c);
            if version == "1.1.0" {
                out.ok();
            } else {
                assert!(out.err(1).contains(cmd));
            }
        }
        assert!(
            host.reservations().contains(&addr),
            "GC kept a valid attachment"
        );

        let v = host
            .plugin("VERSION", "dummy", None, &json!({"cniVersion": version}))
            .ok();
        assert_eq!(v["cniVersion"], version);
        assert_eq!(v["supportedVersions"], json!(VERSIONS));

        host.plugin("DEL", &id, Some(&ctr.path()), &with_prev).ok();
        assert!(ctr.link("eth0").is_none(), "DEL left eth0 in the container");
        assert!(
            !host.reservations().contains(&addr),
            "DEL left {addr} reserved"
        );
    }
    assert_eq!(host.records(), 0);
}

#[test]
fn version_ignores_dummy_variables_and_empty_input() {
    let host = Host::new(None);
    let out = exec_plugin(
        &bins::plugin(),
        &host.ns.path(),
        &[
            ("CNI_COMMAND", "VERSION".into()),
            ("CNI_CONTAINERID", "dummy/../".into()),
            ("CNI_IFNAME", "dummy dummy".into()),
        ],
        b"",
    )
    .ok();
    assert_eq!(out["cniVersion"], "1.1.0");
    assert_eq!(out["supportedVersions"], json!(VERSIONS));
}

#[test]
fn garbage_on_stdin_is_code_6() {
    let host = Host::new(Some("198.19.11.0/24"));
    let ctr = Netns::new("c");
    let out = exec_plugin(
        &bins::plugin(),
        &host.ns.path(),
        &[
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "c1".into()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_NETNS", ctr.path().display().to_string()),
        ],
        b"{\"cniVersion\": \"1.0.0\", oops",
    );
    let msg = out.err(6);
    assert!(msg.contains("oops"), "{msg}");
}

#[test]
fn unsupported_version_is_code_1() {
    let host = Host::new(Some("198.19.12.0/24"));
    let ctr = Netns::new("c");
    let msg = host
        .plugin("ADD", "c1", Some(&ctr.path()), &host.conf("0.2.0"))
        .err(1);
    assert!(msg.contains("0.2.0"), "{msg}");
    assert!(host.reservations().is_empty());
}

#[test]
fn invalid_cni_variables_are_code_4() {
    let host = Host::new(Some("198.19.13.0/24"));
    let ctr = Netns::new("c");
    let conf = host.conf("1.0.0");
    let msg = host.plugin("ADD", "", Some(&ctr.path()), &conf).err(4);
    assert!(msg.contains("CNI_CONTAINERID"), "{msg}");
    let msg = host
        .plugin_with("ADD", "c1", Some(&ctr.path()), "eth0/x", &conf, &[])
        .err(4);
    assert!(msg.contains("\"eth0/x\""), "{msg}");
    let msg = host.plugin("ADD", "c1", None, &conf).err(4);
    assert!(msg.contains("CNI_NETNS"), "{msg}");
    let msg = host
        .plugin_with(
            "ADD",
            "c1",
            Some(&ctr.path()),
            "eth0",
            &conf,
            &[("CNI_ARGS", "IgnoreUnknown=1;IP=198.19.13.999".into())],
        )
        .err(4);
    assert!(msg.contains("198.19.13.999"), "{msg}");
    let msg = host
        .plugin(
            "ADD",
            "c1",
            Some(std::path::Path::new("/run/netns/nope-w")),
            &conf,
        )
        .err(4);
    assert!(msg.contains("/run/netns/nope-w"), "{msg}");
    let out = exec_plugin(&bins::plugin(), &host.ns.path(), &[], b"{}");
    assert!(out.err(4).contains("CNI_COMMAND"));
    assert!(host.reservations().is_empty());
}

#[test]
fn invalid_config_value_is_code_7() {
    let host = Host::new(Some("198.19.14.0/24"));
    let ctr = Netns::new("c");
    let mut conf = host.conf("1.0.0");
    conf["mtu"] = json!(20);
    let msg = host.plugin("ADD", "c1", Some(&ctr.path()), &conf).err(7);
    assert!(msg.contains("mtu = 20"), "{msg}");
    let mut conf = host.conf("1.0.0");
    conf["isDefaultGateway"] = json!("yes");
    let msg = host.plugin("ADD", "c1", Some(&ctr.path()), &conf).err(7);
    assert!(
        msg.contains("isDefaultGateway") && msg.contains("yes"),
        "{msg}"
    );
    assert!(host.reservations().is_empty());
}

#[test]
fn missing_subnet_env_is_code_11_and_status_50() {
    let host = Host::new(None);
    let ctr = Netns::new("c");
    let msg = host
        .plugin("ADD", "c1", Some(&ctr.path()), &host.conf("1.0.0"))
        .err(11);
    assert!(msg.contains("weftd is not ready"), "{msg}");
    assert!(
        msg.contains(&host.subnet_file().display().to_string()),
        "{msg}"
    );
    let msg = host
        .plugin("STATUS", "c1", None, &host.conf("1.1.0"))
        .err(50);
    assert!(msg.contains("weftd"), "{msg}");
    // Once weftd has written it, the same ADD works.
    host.write_subnet_env("198.19.15.0/24");
    host.plugin("STATUS", "c1", None, &host.conf("1.1.0")).ok();
    host.plugin("ADD", "c1", Some(&ctr.path()), &host.conf("1.0.0"))
        .ok();
    host.plugin("DEL", "c1", Some(&ctr.path()), &host.conf("1.0.0"))
        .ok();
}

#[test]
fn exhausted_pool_is_a_plugin_code_and_status_50() {
    // A /30 has one address for containers; a reservation host-local made takes it.
    let host = Host::new(Some("198.19.16.0/30"));
    std::fs::create_dir_all(host.network_dir()).unwrap();
    std::fs::write(
        host.network_dir().join("198.19.16.2"),
        "flannel-ctr\r\neth0",
    )
    .unwrap();
    let ctr = Netns::new("c");
    let out = host.plugin("ADD", "c1", Some(&ctr.path()), &host.conf("1.0.0"));
    let v = out.json();
    assert!(v["code"].as_u64().unwrap() >= 100, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("exhausted"), "{v}");
    assert!(ctr.link("eth0").is_none());
    let msg = host
        .plugin("STATUS", "x", None, &host.conf("1.1.0"))
        .err(50);
    assert!(msg.contains("exhausted"), "{msg}");
    // GC knows nothing of flannel-ctr: it is not valid, so its address comes back.
    let mut gc = host.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    host.plugin("GC", "x", None, &gc).ok();
    host.plugin("STATUS", "x", None, &host.conf("1.1.0")).ok();
}

#[test]
fn requested_address_and_mac_are_honoured() {
    let host = Host::new(Some("198.19.17.0/24"));
    let (a, b) = (Netns::new("c"), Netns::new("c"));
    let conf = host.conf("1.0.0");
    let r = host
        .plugin_with(
            "ADD",
            "a",
            Some(&a.path()),
            "eth0",
            &conf,
            &[(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=x;IP=198.19.17.77".into(),
            )],
        )
        .ok();
    assert_eq!(ip_of(&r), "198.19.17.77".parse::<IpAddr>().unwrap());
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["198.19.17.78/24"], "mac": "02:00:c6:13:11:4e"});
    let r = host.plugin("ADD", "b", Some(&b.path()), &rc).ok();
    assert_eq!(ip_of(&r), "198.19.17.78".parse::<IpAddr>().unwrap());
    assert_eq!(r["interfaces"][2]["mac"], "02:00:c6:13:11:4e");
    assert_eq!(b.link("eth0").unwrap()["address"], "02:00:c6:13:11:4e");
    // Taken, the gateway, and outside the subnet are refused before anything is made.
    let c = Netns::new("c");
    for ip in ["198.19.17.77", "198.19.17.1", "198.19.99.5"] {
        let mut rc = conf.clone();
        rc["runtimeConfig"] = json!({"ips": [ip]});
        let msg = host.plugin("ADD", "c", Some(&c.path()), &rc).err(101);
        assert!(msg.contains(ip), "{msg}");
        assert!(c.link("eth0").is_none());
    }
    for (id, ns) in [("a", &a), ("b", &b)] {
        host.plugin("DEL", id, Some(&ns.path()), &conf).ok();
    }
    assert!(host.reservations().is_empty());
}

#[test]
fn same_attachment_twice_is_refused_and_rolled_back() {
    let host = Host::new(Some("198.19.18.0/24"));
    let ctr = Netns::new("c");
    let conf = host.conf("1.0.0");
    let first = host.plugin("ADD", "dup", Some(&ctr.path()), &conf).ok();
    let other = Netns::new("c");
    let msg = host
        .plugin("ADD", "dup", Some(&other.path()), &conf)
        .err(102);
    assert!(msg.contains("dup") && msg.contains("eth0"), "{msg}");
    assert!(other.link("eth0").is_none());
    assert_eq!(host.reservations(), BTreeSet::from([ip_of(&first)]));
    // The interface already in the container is refused too, and nothing is reserved.
    let msg = host
        .plugin("ADD", "dup2", Some(&ctr.path()), &conf)
        .err(102);
    assert!(msg.contains("eth0"), "{msg}");
    assert_eq!(host.reservations().len(), 1);
    // A failure after the reservation (the bridge name is taken by a veth) releases it.
    let mut bad = conf.clone();
    let taken = unique("v");
    let peer = unique("v");
    host.ns
        .ip(&["link", "add", &taken, "type", "veth", "peer", "name", &peer]);
    bad["bridge"] = json!(taken);
    let msg = host
        .plugin("ADD", "dup3", Some(&other.path()), &bad)
        .err(103);
    assert!(msg.contains(&taken), "{msg}");
    assert_eq!(host.reservations().len(), 1);
    assert_eq!(host.records(), 1);
    host.plugin("DEL", "dup", Some(&ctr.path()), &conf).ok();
}

#[test]
fn parallel_adds_get_distinct_addresses_and_dels_empty_the_store() {
    const N: usize = 64;
    let host = std::sync::Arc::new(Host::new(Some("198.19.20.0/24")));
    let ctrs: Vec<Netns> = (0..N).map(|_| Netns::new("p")).collect();
    let paths: Vec<_> = ctrs.iter().map(|c| c.path()).collect();
    let conf = host.conf("1.0.0");
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (host, conf) = (&host, &conf);
                s.spawn(move || host.plugin("ADD", &format!("par{i}"), Some(p), conf).ok())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: BTreeSet<IpAddr> = results.iter().map(ip_of).collect();
    assert_eq!(addrs.len(), N, "addresses were handed out twice");
    assert_eq!(host.reservations(), addrs);
    assert!(!addrs.contains(&"198.19.20.1".parse::<IpAddr>().unwrap()));
    assert!(ctrs[0].ping(&ip_of(&results[N - 1]).to_string()));

    std::thread::scope(|s| {
        for (i, p) in paths.iter().enumerate() {
            let (host, conf) = (&host, &conf);
            s.spawn(move || host.plugin("DEL", &format!("par{i}"), Some(p), conf).ok());
        }
    });
    assert!(host.reservations().is_empty());
    assert_eq!(host.records(), 0);
}

#[test]
fn del_is_idempotent_and_works_without_the_netns() {
    let host = Host::new(Some("198.19.21.0/24"));
    let conf = host.conf("1.0.0");
    let ctr = Netns::new("c");
    let path = ctr.path();
    let r = host.plugin("ADD", "gone", Some(&path), &conf).ok();
    let host_end = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    drop(ctr); // the runtime deleted the namespace before DEL
    host.plugin("DEL", "gone", Some(&path), &conf).ok();
    assert!(host.reservations().is_empty());
    assert!(host.ns.link(&host_end).is_none());
    host.plugin("DEL", "gone", Some(&path), &conf).ok();
    host.plugin("DEL", "gone", None, &conf).ok();
    host.plugin("DEL", "never-added", None, &conf).ok();
    // An eth0 that weft never made is not weft's to delete.
    let other = Netns::new("c");
    other.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    host.plugin("DEL", "never-added", Some(&other.path()), &conf)
        .ok();
    assert!(
        other.link("eth0").is_some(),
        "DEL removed a stranger's eth0"
    );

    // Without CNI_NETNS but with the namespace alive, the pair still goes.
    let ctr = Netns::new("c");
    host.plugin("ADD", "alive", Some(&ctr.path()), &conf).ok();
    host.plugin("DEL", "alive", None, &conf).ok();
    assert!(ctr.link("eth0").is_none());
    assert!(host.reservations().is_empty());
    assert_eq!(host.records(), 0);
}

#[test]
fn gc_releases_what_is_not_valid() {
    let host = Host::new(Some("198.19.22.0/24"));
    let conf = host.conf("1.1.0");
    let ctrs: Vec<Netns> = (0..3).map(|_| Netns::new("g")).collect();
    let mut addrs = Vec::new();
    for (i, c) in ctrs.iter().enumerate() {
        addrs.push(ip_of(
            &host
                .plugin("ADD", &format!("g{i}"), Some(&c.path()), &conf)
                .ok(),
        ));
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g0", "ifname": "eth0"}]);
    gc["cni.dev/attachments"] = json!([{"containerID": "g2", "ifname": "eth0"}]);
    host.plugin("GC", "", None, &gc).ok();
    assert_eq!(host.reservations(), BTreeSet::from([addrs[0], addrs[2]]));
    assert_eq!(host.records(), 2);
    assert!(ctrs[1].link("eth0").is_none(), "GC left the stale pair");
    // A GC without the list would release everything: it is refused.
    host.plugin("GC", "", None, &conf).err(7);
    assert_eq!(host.reservations().len(), 2);
}

#[test]
fn check_fails_when_address_or_route_is_removed() {
    let host = Host::new(Some("198.19.23.0/24"));
    let mut conf = host.conf("1.0.0");
    conf["isDefaultGateway"] = json!(true);
    for what in ["address", "route"] {
        let ctr = Netns::new("k");
        let id = format!("chk-{what}");
        let r = host.plugin("ADD", &id, Some(&ctr.path()), &conf).ok();
        let routes = ctr.ip(&["route"]);
        assert!(routes.contains("default via 198.19.23.1"), "{routes}");
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        host.plugin("CHECK", &id, Some(&ctr.path()), &with_prev)
            .ok();
        let addr = r["ips"][0]["address"].as_str().unwrap();
        match what {
            "address" => ctr.ip(&["addr", "del", addr, "dev", "eth0"]),
            _ => ctr.ip(&["route", "del", "198.19.0.0/16"]),
        };
        let msg = host
            .plugin("CHECK", &id, Some(&ctr.path()), &with_prev)
            .err(105);
        assert!(
            msg.contains(if what == "address" {
                addr
            } else {
                "198.19.0.0/16"
            }),
            "{msg}"
        );
        host.plugin("DEL", &id, Some(&ctr.path()), &with_prev).ok();
    }
}

#[test]
fn changed_subnet_moves_the_bridge_address() {
    let host = Host::new(Some("198.19.24.0/24"));
    let conf = host.conf("1.0.0");
    let (a, b) = (Netns::new("m"), Netns::new("m"));
    let old = ip_of(&host.plugin("ADD", "old", Some(&a.path()), &conf).ok());
    host.write_subnet_env("198.19.25.0/24");
    let new = ip_of(&host.plugin("ADD", "new", Some(&b.path()), &conf).ok());
    assert!(new.to_string().starts_with("198.19.25."), "{new}");
    assert_eq!(
        host.ns.addrs(&host.bridge),
        vec!["198.19.25.1/24".to_string()]
    );
    assert!(b.ping("198.19.25.1"));
    // The old container's address stays reserved until its own DEL.
    assert!(host.reservations().contains(&old));
    host.plugin("DEL", "old", Some(&a.path()), &conf).ok();
    host.plugin("DEL", "new", Some(&b.path()), &conf).ok();
    assert!(host.reservations().is_empty());
}

/// Runs the plugin as `exec_plugin` does, but gives up after `secs`: a plugin that blocks
/// (on a FIFO, say) fails the test instead of hanging it.
fn plugin_within(
    secs: u64,
    host: &Host,
    command: &str,
    netns: &std::path::Path,
    conf: &Value,
) -> Output {
    let vars = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", "c1".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
    ];
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let (bin, ns, stdin) = (bins::plugin(), host.ns.path(), conf.to_string());
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    std::thread::spawn(move || {
        let out = std::process::Command::new("timeout")
            .args(["-s", "KILL", &(secs + 5).to_string(), "nsenter"])
            .arg(format!("--net={}", ns.display()))
            .arg("--")
            .arg(bin)
            .envs(vars)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(stdin.as_bytes())?;
                c.wait_with_output()
            });
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("the plugin's {command} did not return within {secs} s"))
        .expect("running the plugin");
    eprintln!("{command} answered in {:?}", started.elapsed());
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::new(),
    }
}

#[test]
fn a_subnet_file_that_is_no_regular_file_is_refused_at_once() {
    let host = Host::new(None);
    let fifo = host.dir.path().join("subnet.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let big = host.dir.path().join("subnet.big");
    std::fs::write(&big, vec![b'#'; 1 << 20]).unwrap();
    let ctr = Netns::new("c");
    for (file, why) in [
        (
            "/dev/zero".to_string(),
            "is a character device, not a regular file",
        ),
        (fifo.display().to_string(), "is a FIFO, not a regular file"),
        (big.display().to_string(), "larger than 65536 bytes"),
    ] {
        let mut conf = host.conf("1.1.0");
        conf["subnetFile"] = json!(file);
        let msg = plugin_within(10, &host, "ADD", &ctr.path(), &conf).err(104);
        assert!(msg.contains(&file) && msg.contains(why), "{msg}");
        let msg = plugin_within(10, &host, "STATUS", &ctr.path(), &conf).err(50);
        assert!(msg.contains(&file) && msg.contains(why), "{msg}");
    }
    // CNI_NETNS names a FIFO: refused, never waited on.
    host.write_subnet_env("198.19.17.0/24");
    let msg = plugin_within(10, &host, "ADD", &fifo, &host.conf("1.1.0")).err(4);
    assert!(msg.contains(&fifo.display().to_string()), "{msg}");
    assert!(host.reservations().is_empty());
}

#[test]
fn path_traversal_in_names_is_refused_and_nothing_is_made_outside_the_store() {
    let host = Host::new(Some("198.19.16.0/24"));
    let ctr = Netns::new("c");
    let conf = host.conf("1.0.0");
    for id in ["../../etc/x", "a/../../b", ".."] {
        let msg = host.plugin("ADD", id, Some(&ctr.path()), &conf).err(4);
        assert!(msg.contains("CNI_CONTAINERID"), "{msg}");
    }
    for ifname in ["..", ".", "a/b"] {
        let msg = host
            .plugin_with("ADD", "c1", Some(&ctr.path()), ifname, &conf, &[])
            .err(4);
        assert!(msg.contains("CNI_IFNAME"), "{msg}");
    }
    for name in ["..", "../x", "a/b"] {
        let mut conf = host.conf("1.0.0");
        conf["name"] = json!(name);
        let msg = host.plugin("ADD", "c1", Some(&ctr.path()), &conf).err(7);
        assert!(msg.contains("name"), "{msg}");
    }
    assert!(!host.dir.path().join("x").exists());
    assert!(!host.data_dir().join("x").exists());
    assert!(host.reservations().is_empty());
}
