//! Dual stack, with the plugin executed as runtimes execute it: a subnet.env with IPv4 and
//! IPv6 subnets gives every container an address and routes of both families, usable at once;
//! IPAM, CHECK, DEL, GC and STATUS cover both ranges; IPv4 alone stays as it was, IPv6 alone
//! works, and switching IPv6 forwarding on keeps the host's router advertisements.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};
use testkit::netns::Netns;
use testkit::plugin::{Host, NetnsExt, NETWORK, NETWORK6};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The addresses of a result, by family.
fn ips_of(result: &Value) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let all: Vec<IpAddr> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            let cidr = ip["address"].as_str().expect("ips[].address");
            cidr.split('/').next().unwrap().parse().unwrap()
        })
        .collect();
    all.into_iter().partition(|a| a.is_ipv4())
}

fn v6_of(result: &Value) -> IpAddr {
    let (_, v6) = ips_of(result);
    assert_eq!(v6.len(), 1, "one IPv6 address: {result}");
    v6[0]
}

fn v4_of(result: &Value) -> IpAddr {
    let (v4, _) = ips_of(result);
    assert_eq!(v4.len(), 1, "one IPv4 address: {result}");
    v4[0]
}

/// Asserts that `dev` in `ns` holds exactly `want` as global IPv6 addresses, none of them
/// tentative or failed: usable at once.
fn assert_usable_v6(ns: &Netns, dev: &str, want: &[String]) {
    let info = ns.addrs6(dev);
    let have: Vec<String> = info
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(have, want, "{dev} in {}: {info:?}", ns.name());
    for a in &info {
        assert!(
            a.get("tentative").is_none() && a.get("dadfailed").is_none(),
            "{dev} in {}: address not usable yet: {a}",
            ns.name()
        );
    }
}

#[test]
fn dual_stack_add_check_del_in_every_version() {
    let host = Host::new_dual(Some("198.19.50.0/24"), Some("2001:db8:50::/64"));
    for (n, version) in VERSIONS.into_iter().enumerate() {
        let ctr = Netns::new("d");
        let id = format!("{}-{n}", ctr.name());
        let conf = host.conf(version);
        let r = host.plugin("ADD", &id, Some(&ctr.path()), &conf).ok();

        // Checked first, before anything else takes time: usable at once.
        let v6 = v6_of(&r);
        assert_usable_v6(&ctr, "eth0", &[format!("{v6}/64")]);
        assert!(ctr.ping("2001:db8:50::1"), "no IPv6 to the gateway");
        assert_usable_v6(&host.ns, &host.bridge, &["2001:db8:50::1/64".to_string()]);

        assert_eq!(r["cniVersion"], version);
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{r}");
        assert!(ips[1]["address"]
            .as_str()
            .unwrap()
            .starts_with("2001:db8:50::"));
        assert_eq!(ips[0]["gateway"], "198.19.50.1");
        assert_eq!(ips[1]["gateway"], "2001:db8:50::1");
        for ip in ips {
            assert_eq!(ip["interface"], 2, "{r}");
        }
        if version < "1.0.0" {
            assert_eq!(ips[0]["version"], "4", "{r}");
            assert_eq!(ips[1]["version"], "6", "{r}");
        } else {
            assert!(ips.iter().all(|ip| ip.get("version").is_none()), "{r}");
        }
        let routes: Vec<(String, String)> = r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap().to_string(),
                    r["gw"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            routes,
            vec![
                (NETWORK.to_string(), "198.19.50.1".to_string()),
                (NETWORK6.to_string(), "2001:db8:50::1".to_string()),
            ]
        );
        let v4 = v4_of(&r);
        assert_eq!(ctr.addrs("eth0"), vec![format!("{v4}/24")]);
        let routes6 = ctr.ip(&["-6", "route"]);
        assert!(
            routes6.contains("2001:db8::/32 via 2001:db8:50::1 dev eth0"),
            "{routes6}"
        );
        assert!(!routes6.contains("default"), "{routes6}");
        assert!(ctr.ip(&["route"]).contains("198.19.0.0/16 via 198.19.50.1"));
        assert!(ctr.ping("198.19.50.1"));

        // host-local's layout for both ranges.
        assert_eq!(host.reservations(), BTreeSet::from([v4, v6]));
        for a in [v4, v6] {
            let text = std::fs::read_to_string(host.network_dir().join(a.to_string())).unwrap();
            assert_eq!(text, format!("{id}\r\neth0"));
        }
        let last = |i: u8| {
            std::fs::read_to_string(host.network_dir().join(format!("last_reserved_ip.{i}")))
                .unwrap()
        };
        assert_eq!(last(0), v4.to_string());
        assert_eq!(last(1), v6.to_string());

        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        let check = host.plugin("CHECK", &id, Some(&ctr.path()), &with_prev);
        if version >= "0.4.0" {
            assert_eq!(check.ok(), Value::Null);
        } else {
            check.err(1);
        }
        host.plugin("DEL", &id, Some(&ctr.path()), &with_prev).ok();
        assert!(ctr.link("eth0").is_none());
        assert!(host.reservations().is_empty(), "{:?}", host.reservations());
        host.plugin("DEL", &id, Some(&ctr.path()), &with_prev).ok();
    }
    assert_eq!(host.records(), 0);
}

#[test]
fn containers_talk_over_both_families_with_default_routes() {
    let host = Host::new_dual(Some("198.19.51.0/24"), Some("2001:db8:51::/64"));
    let mut conf = host.conf("1.0.0");
    conf["isDefaultGateway"] = json!(true);
    let (a, b) = (Netns::new("t"), Netns::new("t"));
    let ra = host.plugin("ADD", "a", Some(&a.path()), &conf).ok();
    let rb = host.plugin("ADD", "b", Some(&b.path()), &conf).ok();
    assert!(
        a.ping(&v6_of(&rb).to_string()),
        "a cannot reach b over IPv6"
    );
    assert!(
        b.ping(&v6_of(&ra).to_string()),
        "b cannot reach a over IPv6"
    );
    assert!(
        a.ping(&v4_of(&rb).to_string()),
        "a cannot reach b over IPv4"
    );
    assert!(
        b.ping(&v4_of(&ra).to_string()),
        "b cannot reach a over IPv4"
    );
    assert!(
        host.ns.ping(&v6_of(&ra).to_string()),
        "the host cannot reach a"
    );
    let routes6 = a.ip(&["-6", "route"]);
    assert!(
        routes6.contains("default via 2001:db8:51::1 dev eth0"),
        "{routes6}"
    );
    assert!(a
        .ip(&["route"])
        .contains("default via 198.19.51.1 dev eth0"));
    let dsts: Vec<&str> = ra["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dst"].as_str().unwrap())
        .collect();
    assert_eq!(dsts, vec![NETWORK, "0.0.0.0/0", NETWORK6, "::/0"]);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = ra;
    host.plugin("CHECK", "a", Some(&a.path()), &with_prev).ok();
    for (id, ns) in [("a", &a), ("b", &b)] {
        host.plugin("DEL", id, Some(&ns.path()), &conf).ok();
    }
    assert!(host.reservations().is_empty());
}

#[test]
fn many_adds_get_distinct_addresses_in_both_families() {
    const N: usize = 40;
    let host = Host::new_dual(Some("198.19.52.0/24"), Some("2001:db8:52::/64"));
    let ctrs: Vec<Netns> = (0..N).map(|_| Netns::new("u")).collect();
    let conf = host.conf("1.1.0");
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = ctrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (host, conf, path) = (&host, &conf, c.path());
                s.spawn(move || host.plugin("ADD", &format!("u{i}"), Some(&path), conf).ok())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let v4: BTreeSet<IpAddr> = results.iter().map(v4_of).collect();
    let v6: BTreeSet<IpAddr> = results.iter().map(v6_of).collect();
    assert_eq!(v4.len(), N, "IPv4 addresses handed out twice");
    assert_eq!(v6.len(), N, "IPv6 addresses handed out twice");
    assert!(!v6.contains(&"2001:db8:52::1".parse::<IpAddr>().unwrap()));
    assert_eq!(host.reservations(), v4.union(&v6).copied().collect());
    assert!(ctrs[0].ping(&v6_of(&results[N - 1]).to_string()));
    std::thread::scope(|s| {
        for (i, c) in ctrs.iter().enumerate() {
            let (host, conf, path) = (&host, &conf, c.path());
            s.spawn(move || host.plugin("DEL", &format!("u{i}"), Some(&path), conf).ok());
        }
    });
    assert!(host.reservations().is_empty());
    assert_eq!(host.records(), 0);
}

#[test]
fn exhausted_ipv6_range_fails_and_keeps_no_ipv4_address() {
    // A /126 leaves ::2 and ::3 for containers (::1 is the gateway).
    let host = Host::new_dual(Some("198.19.53.0/24"), Some("2001:db8:53::/126"));
    let conf = host.conf("1.0.0");
    let (a, b, c) = (Netns::new("x"), Netns::new("x"), Netns::new("x"));
    host.plugin("ADD", "a", Some(&a.path()), &conf).ok();
    host.plugin("ADD", "b", Some(&b.path()), &conf).ok();
    let held = host.reservations();
    assert_eq!(held.len(), 4);
    let msg = host.plugin("ADD", "c", Some(&c.path()), &conf).err(100);
    assert!(
        msg.contains("2001:db8:53::/126") && msg.contains("exhausted"),
        "{msg}"
    );
    assert_eq!(host.reservations(), held, "the failed ADD kept an address");
    assert_eq!(host.records(), 2);
    assert!(c.link("eth0").is_none());
    let msg = host
        .plugin("STATUS", "x", None, &host.conf("1.1.0"))
        .err(50);
    assert!(msg.contains("2001:db8:53::/126"), "{msg}");
    host.plugin("DEL", "b", Some(&b.path()), &conf).ok();
    host.plugin("STATUS", "x", None, &host.conf("1.1.0")).ok();
    let r = host.plugin("ADD", "c", Some(&c.path()), &conf).ok();
    assert_usable_v6(&c, "eth0", &[format!("{}/126", v6_of(&r))]);
    for (id, ns) in [("a", &a), ("c", &c)] {
        host.plugin("DEL", id, Some(&ns.path()), &conf).ok();
    }
    assert!(host.reservations().is_empty());
}

#[test]
fn check_fails_when_the_ipv6_address_or_route_is_removed() {
    let host = Host::new_dual(Some("198.19.54.0/24"), Some("2001:db8:54::/64"));
    let conf = host.conf("1.0.0");
    for what in ["address", "route"] {
        let ctr = Netns::new("k");
        let id = format!("chk6-{what}");
        let r = host.plugin("ADD", &id, Some(&ctr.path()), &conf).ok();
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        host.plugin("CHECK", &id, Some(&ctr.path()), &with_prev)
            .ok();
        let addr = r["ips"][1]["address"].as_str().unwrap().to_string();
        match what {
            "address" => ctr.ip(&["addr", "del", &addr, "dev", "eth0"]),
            _ => ctr.ip(&["-6", "route", "del", NETWORK6]),
        };
        let msg = host
            .plugin("CHECK", &id, Some(&ctr.path()), &with_prev)
            .err(105);
        let needle = if what == "address" { &addr } else { NETWORK6 };
        assert!(msg.contains(needle), "{msg}");
        host.plugin("DEL", &id, Some(&ctr.path()), &with_prev).ok();
    }
    assert!(host.reservations().is_empty());
}

#[test]
fn del_and_gc_release_both_families() {
    let host = Host::new_dual(Some("198.19.55.0/24"), Some("2001:db8:55::/64"));
    let conf = host.conf("1.1.0");
    let ctrs: Vec<Netns> = (0..3).map(|_| Netns::new("g")).collect();
    let mut results = Vec::new();
    for (i, c) in ctrs.iter().enumerate() {
        results.push(
            host.plugin("ADD", &format!("g{i}"), Some(&c.path()), &conf)
                .ok(),
        );
    }
    // An IPv6 reservation host-local made for a container the runtime no longer knows.
    std::fs::write(
        host.network_dir().join("2001:db8:55::99"),
        "flannel-ctr\r\neth0",
    )
    .unwrap();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "g0", "ifname": "eth0"},
        {"containerID": "g2", "ifname": "eth0"},
    ]);
    host.plugin("GC", "", None, &gc).ok();
    let keep: BTreeSet<IpAddr> = [&results[0], &results[2]]
        .into_iter()
        .flat_map(|r| [v4_of(r), v6_of(r)])
        .collect();
    assert_eq!(host.reservations(), keep);
    assert!(ctrs[1].link("eth0").is_none(), "GC left the stale pair");
    assert_eq!(host.records(), 2);

    // DEL without the netns releases both families, and again is fine.
    host.plugin("DEL", "g0", None, &conf).ok();
    host.plugin("DEL", "g0", None, &conf).ok();
    assert_eq!(
        host.reservations(),
        BTreeSet::from([v4_of(&results[2]), v6_of(&results[2])])
    );
    host.plugin("DEL", "g2", Some(&ctrs[2].path()), &conf).ok();
    host.plugin("DEL", "g2", Some(&ctrs[2].path()), &conf).ok();
    assert!(host.reservations().is_empty());
    assert_eq!(host.records(), 0);
}

#[test]
fn ipv4_only_stays_ipv4_only() {
    let host = Host::new(Some("198.19.56.0/24"));
    let ctr = Netns::new("f");
    let r = host
        .plugin("ADD", "v4", Some(&ctr.path()), &host.conf("0.3.1"))
        .ok();
    let (v4, v6) = ips_of(&r);
    assert_eq!((v4.len(), v6.len()), (1, 0), "{r}");
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["routes"].as_array().unwrap().len(), 1, "{r}");
    assert!(ctr.addrs6("eth0").is_empty());
    assert!(host.ns.addrs6(&host.bridge).is_empty());
    assert!(!host.network_dir().join("last_reserved_ip.1").exists());
    assert_eq!(host.ns.sysctl("net/ipv6/conf/all/forwarding"), "0");
    host.plugin("DEL", "v4", Some(&ctr.path()), &host.conf("0.3.1"))
        .ok();
}

#[test]
fn ipv6_only_subnet_env_gives_ipv6_only() {
    let host = Host::new_dual(None, Some("2001:db8:57::/64"));
    let ctr = Netns::new("s");
    let conf = host.conf("1.0.0");
    let r = host.plugin("ADD", "v6", Some(&ctr.path()), &conf).ok();
    let (v4, v6) = ips_of(&r);
    assert_eq!((v4.len(), v6.len()), (0, 1), "{r}");
    assert_usable_v6(&ctr, "eth0", &[format!("{}/64", v6[0])]);
    assert!(ctr.addrs("eth0").is_empty());
    assert!(ctr.ping("2001:db8:57::1"));
    // IPv6 is the only range, so it is host-local's range 0.
    assert_eq!(
        std::fs::read_to_string(host.network_dir().join("last_reserved_ip.0")).unwrap(),
        v6[0].to_string()
    );
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r;
    host.plugin("CHECK", "v6", Some(&ctr.path()), &with_prev)
        .ok();
    host.plugin("DEL", "v6", Some(&ctr.path()), &conf).ok();
    assert!(host.reservations().is_empty());

    // A file with neither subnet names itself and the key it lacks.
    std::fs::write(host.subnet_file(), "FLANNEL_MTU=1400\n").unwrap();
    let msg = host.plugin("ADD", "v6", Some(&ctr.path()), &conf).err(104);
    assert!(
        msg.contains(&host.subnet_file().display().to_string()) && msg.contains("FLANNEL_SUBNET"),
        "{msg}"
    );
}

#[test]
fn requested_addresses_one_per_family() {
    let host = Host::new_dual(Some("198.19.58.0/24"), Some("2001:db8:58::/64"));
    let conf = host.conf("1.0.0");
    let a = Netns::new("q");
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["198.19.58.40/24", "2001:db8:58::40/64"]});
    let r = host.plugin("ADD", "a", Some(&a.path()), &rc).ok();
    assert_eq!(v4_of(&r), "198.19.58.40".parse::<IpAddr>().unwrap());
    assert_eq!(v6_of(&r), "2001:db8:58::40".parse::<IpAddr>().unwrap());
    // Only the IPv6 one asked for: the IPv4 one comes from the pool.
    let b = Netns::new("q");
    let r = host
        .plugin_with(
            "ADD",
            "b",
            Some(&b.path()),
            "eth0",
            &conf,
            &[("CNI_ARGS", "IgnoreUnknown=1;IP=2001:db8:58::41".into())],
        )
        .ok();
    assert_eq!(v6_of(&r), "2001:db8:58::41".parse::<IpAddr>().unwrap());
    assert!(v4_of(&r).to_string().starts_with("198.19.58."));
    let c = Netns::new("q");
    for (ips, needle) in [
        (json!(["2001:db8:58::40"]), "2001:db8:58::40"),
        (json!(["2001:db8:58::1"]), "2001:db8:58::1"),
        (json!(["2001:db8:59::5"]), "2001:db8:59::5"),
        (
            json!(["2001:db8:58::5", "2001:db8:58::6"]),
            "one per family",
        ),
    ] {
        let mut rc = conf.clone();
        rc["runtimeConfig"] = json!({ "ips": ips });
        let msg = host.plugin("ADD", "c", Some(&c.path()), &rc).err(101);
        assert!(msg.contains(needle), "{msg}");
        assert!(c.link("eth0").is_none());
    }
    assert_eq!(host.reservations().len(), 4);
    for (id, ns) in [("a", &a), ("b", &b)] {
        host.plugin("DEL", id, Some(&ns.path()), &conf).ok();
    }
    // An IPv6 address on a host without an IPv6 subnet names the missing key.
    let v4_host = Host::new(Some("198.19.59.0/24"));
    let mut rc = v4_host.conf("1.0.0");
    rc["runtimeConfig"] = json!({"ips": ["2001:db8:58::40"]});
    let msg = v4_host.plugin("ADD", "c", Some(&c.path()), &rc).err(101);
    assert!(msg.contains("FLANNEL_IPV6_SUBNET"), "{msg}");
    assert!(v4_host.reservations().is_empty());
}

#[test]
fn ipv6_forwarding_keeps_router_advertisements_elsewhere() {
    let host = Host::new_dual(Some("198.19.60.0/24"), Some("2001:db8:60::/64"));
    // An uplink that learns its route from router advertisements, one told not to, and one
    // that forwards already (and so ignores them).
    host.ns.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "static0",
    ]);
    host.ns.ip(&[
        "link", "add", "router0", "type", "veth", "peer", "name", "router1",
    ]);
    for set in [
        "net.ipv6.conf.static0.accept_ra=0",
        "net.ipv6.conf.router0.forwarding=1",
    ] {
        let out = host.ns.exec(&["sysctl", "-qw", set]);
        assert!(
            out.status.success(),
            "sysctl (procps) {set} failed: {out:?}"
        );
    }
    assert_eq!(host.ns.sysctl("net/ipv6/conf/all/forwarding"), "0");
    assert_eq!(host.ns.sysctl("net/ipv6/conf/uplink0/accept_ra"), "1");
    let ctr = Netns::new("r");
    host.plugin("ADD", "ra", Some(&ctr.path()), &host.conf("1.0.0"))
        .ok();
    assert_eq!(host.ns.sysctl("net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(host.ns.sysctl("net/ipv4/ip_forward"), "1");
    assert_eq!(host.ns.sysctl("net/ipv6/conf/uplink0/accept_ra"), "2");
    assert_eq!(host.ns.sysctl("net/ipv6/conf/static0/accept_ra"), "0");
    assert_eq!(host.ns.sysctl("net/ipv6/conf/router0/accept_ra"), "1");
    assert_eq!(host.ns.sysctl("net/ipv6/conf/router1/accept_ra"), "2");
    // The bridge does not take advertisements from containers.
    let bridge_ra = host
        .ns
        .sysctl(&format!("net/ipv6/conf/{}/accept_ra", host.bridge));
    assert_ne!(bridge_ra, "2");
    host.plugin("DEL", "ra", Some(&ctr.path()), &host.conf("1.0.0"))
        .ok();
}

#[test]
fn changed_ipv6_subnet_moves_the_bridge_address_and_keeps_link_local() {
    let host = Host::new_dual(Some("198.19.61.0/24"), Some("2001:db8:61::/64"));
    let conf = host.conf("1.0.0");
    let (a, b) = (Netns::new("m"), Netns::new("m"));
    let old = host.plugin("ADD", "old", Some(&a.path()), &conf).ok();
    let link_local = || {
        host.ns
            .ip(&["-6", "addr", "show", "dev", &host.bridge, "scope", "link"])
    };
    assert!(link_local().contains("fe80::"), "{}", link_local());
    host.write_subnet_env_dual(Some("198.19.62.0/24"), Some("2001:db8:62::/64"));
    let new = host.plugin("ADD", "new", Some(&b.path()), &conf).ok();
    assert!(v6_of(&new).to_string().starts_with("2001:db8:62::"));
    assert_usable_v6(&host.ns, &host.bridge, &["2001:db8:62::1/64".to_string()]);
    assert_eq!(
        host.ns.addrs(&host.bridge),
        vec!["198.19.62.1/24".to_string()]
    );
    assert!(link_local().contains("fe80::"), "{}", link_local());
    assert!(b.ping("2001:db8:62::1"));
    // The old container's addresses stay reserved until its own DEL.
    assert!(host.reservations().contains(&v6_of(&old)));
    host.plugin("DEL", "old", Some(&a.path()), &conf).ok();
    host.plugin("DEL", "new", Some(&b.path()), &conf).ok();
    assert!(host.reservations().is_empty());
}
