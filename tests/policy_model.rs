//! Every part of the NetworkPolicy model by real traffic, in both families and across
//! hosts: one dual-stack lab of two weft hosts and a flannel host (built with iproute2, its
//! pods reachable by ipBlock only), containers attached by the plugin as runtimes attach
//! them, TCP, UDP and SCTP between them. Policies are the Kubernetes documentation's
//! examples and shapes (the namespaceSelector-and-podSelector rule, matchExpressions as the
//! labels page writes them, default-deny-ingress), with addresses in the test ranges.
//! Along the way: `weftctl check` sees a hand edit of the tables, weftd mends it, and
//! `weftctl status` shows each host's policy state with the packets it refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use testkit::cni::{Container, Plugin};
use testkit::datagram::{sctp_reaches, udp_reaches};
use testkit::lab::{make_flannel_device, test_policy, Lab};
use testkit::lab6::DUAL_CONFIG;
use testkit::leases;
use testkit::netns::{plug, Netns};
use testkit::tcp::{connects, listen};
use testkit::wait::wait_for;

/// How long an allowed probe may take, and how long a refused one is given.
const ALLOWED_WITHIN: Duration = Duration::from_secs(2);
const REFUSED_AFTER: Duration = Duration::from_millis(400);

#[derive(Clone, Copy, Debug)]
enum Probe {
    Tcp(u16),
    Udp(u16),
    Sctp(u16),
}

/// Something that sends or receives: a container, a flannel pod or a host.
struct End<'a> {
    name: &'static str,
    ns: &'a Netns,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
}

fn end<'a>(name: &'static str, c: &'a Container) -> End<'a> {
    End {
        name,
        ns: &c.ns,
        v4: c.ip,
        v6: c.ip6,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fam {
    V4,
    V6,
}

/// The TCP listeners of the containers. Each probe first takes what they hold off their
/// accept queues: a queue full of earlier connections would refuse the next one, which a
/// test would take for the policy.
static LISTENERS: std::sync::Mutex<Vec<std::net::TcpListener>> = std::sync::Mutex::new(Vec::new());

fn listen_on(ns: &Netns, addr: IpAddr, port: u16) {
    let l = listen(ns, addr, port);
    l.set_nonblocking(true).unwrap();
    LISTENERS.lock().unwrap().push(l);
}

fn drain() {
    for l in LISTENERS.lock().unwrap().iter() {
        while l.accept().is_ok() {}
    }
}

fn reaches(from: &End, to: &End, fam: Fam, p: Probe, within: Duration) -> bool {
    drain();
    let addr: IpAddr = match fam {
        Fam::V4 => to.v4.into(),
        Fam::V6 => to.v6.expect("an IPv6 address").into(),
    };
    match p {
        Probe::Tcp(port) => connects(from.ns, addr, port, within),
        Probe::Udp(port) => udp_reaches(from.ns, to.ns, addr, port, within),
        Probe::Sctp(port) => sctp_reaches(from.ns, to.ns, addr, port, within),
    }
}

/// Every expectation checked; fails listing each one that did not hold.
fn expect(lab: &Lab, case: &str, cases: &[(&End, &End, Fam, Probe, bool)]) {
    let mut wrong = Vec::new();
    for (from, to, fam, p, allowed) in cases {
        let got = match allowed {
            true => reaches(from, to, *fam, *p, ALLOWED_WITHIN),
            false => reaches(from, to, *fam, *p, REFUSED_AFTER),
        };
        if got != *allowed {
            let what = if *allowed { "refused" } else { "allowed" };
            wrong.push(format!(
                "{} -> {} {fam:?} {p:?}: {what}",
                from.name, to.name
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{case}:\n  {}\n{}\n{}",
        wrong.join("\n  "),
        lab.hosts[0].logs(),
        lab.hosts[1].logs()
    );
}

/// Waits (up to 12 s) until `from` reaching `to` is as `allowed` says twice in a row: a
/// policy applied or deleted. (Twice: a connect that a loaded machine delays past the
/// refusal timeout is not taken for the policy.)
fn settle(lab: &Lab, from: &End, to: &End, p: Probe, allowed: bool, what: &str) {
    let t = if allowed {
        ALLOWED_WITHIN
    } else {
        REFUSED_AFTER
    };
    let done = wait_for(Duration::from_secs(12), || {
        (reaches(from, to, Fam::V4, p, t) == allowed && reaches(from, to, Fam::V4, p, t) == allowed)
            .then_some(())
    });
    assert!(
        done.is_some(),
        "{what}: not in force after 12 s:\n{}",
        lab.hosts[0].logs()
    );
}

/// A flannel host (host 3 of `lab`): its VXLAN device and lease by hand, programming the
/// weft hosts as flanneld would, and two pods on its bridge (198.19.200.10 and .130).
fn flannel_host(lab: &Lab) -> [Netns; 2] {
    let fl = &lab.hosts[2];
    let subnet: Ipv4Net = "198.19.200.0/24".parse().unwrap();
    let mac = make_flannel_device(&fl.ns, &fl.ip, subnet);
    fl.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    fl.ns.ip(&["addr", "add", "198.19.200.1/24", "dev", "cni0"]);
    fl.ns.ip(&["link", "set", "cni0", "up"]);
    fl.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
        fl.ip
    );
    lab.etcd
        .put_on_lease(&leases::key(subnet, None), &value, 3600);
    for h in &lab.hosts[..2] {
        let s = h.subnet();
        let gw = s.network().to_string();
        fl.flannel_programs("flannel.1", &s.to_string(), &gw, &h.vtep_mac(), &h.ip);
    }
    ["10", "130"].map(|last| {
        let pod = Netns::new(&format!("fl{last}"));
        let port = format!("fp{last}");
        plug(
            &pod,
            "eth0",
            &fl.ns,
            &port,
            "cni0",
            &format!("198.19.200.{last}/24"),
        );
        pod.ip(&["route", "add", "default", "via", "198.19.200.1"]);
        pod
    })
}

/// The lab's hosts as ends: a host's own address towards its containers.
fn host_end<'a>(lab: &'a Lab, i: usize, name: &'static str) -> End<'a> {
    let h = &lab.hosts[i];
    End {
        name,
        ns: &h.ns,
        v4: h.container_ip(),
        v6: Some(h.container_ip6()),
    }
}

fn status(lab: &Lab) -> Value {
    let out = lab.hosts[0].weftctl(&["-o", "json", "status", "--pool-warn-below", "0"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn every_part_of_the_model_holds_for_real_traffic_in_both_families_across_hosts() {
    let mut lab = Lab::dual(3, DUAL_CONFIG);
    lab.start_first(2, &[]);
    let pods = flannel_host(&lab);
    let dirs = [lab.dir.path().join("cni1"), lab.dir.path().join("cni2")];
    let p1 = Plugin::new(&lab.hosts[0], &dirs[0]);
    let p2 = Plugin::new(&lab.hosts[1], &dirs[1]);
    let db = p1.add_workload("db", None, &[("role", "db")]);
    let cache = p1.add_workload(
        "cache",
        Some("prod"),
        &[("tier", "cache"), ("environment", "prod")],
    );
    let client_a = p2.add_workload("clienta", Some("alice"), &[("role", "client")]);
    let client_b = p2.add_workload("clientb", Some("bob"), &[("role", "client")]);
    let web_a = p2.add_workload("weba", Some("alice"), &[("role", "web")]);
    let dev = p2.add_workload(
        "dev",
        Some("prod"),
        &[("tier", "cache"), ("environment", "dev")],
    );
    let plain = p2.add_workload("plain", Some("prod"), &[]);
    let (e_db, e_cache) = (end("db", &db), end("cache", &cache));
    let (e_ca, e_cb, e_wa) = (
        end("client-a", &client_a),
        end("client-b", &client_b),
        end("web-a", &web_a),
    );
    let (e_dev, e_plain) = (end("dev", &dev), end("plain", &plain));
    let fl_pod = |name, i: usize, last: u8| End {
        name,
        ns: &pods[i],
        v4: Ipv4Addr::new(198, 19, 200, last),
        v6: None,
    };
    let (e_fin, e_fout) = (
        fl_pod("flannel-pod .10", 0, 10),
        fl_pod("flannel-pod .130", 1, 130),
    );
    let (h1, h2) = (host_end(&lab, 0, "host 1"), host_end(&lab, 1, "host 2"));
    let any: IpAddr = Ipv6Addr::UNSPECIFIED.into();
    for (ns, port) in [
        (&db.ns, 7005),
        (&db.ns, 7011),
        (&db.ns, 5353),
        (&cache.ns, 8080),
        (&client_a.ns, 8080),
        (&plain.ns, 8080),
        (&dev.ns, 8080),
    ] {
        listen_on(ns, any, port);
    }
    for (ns, port) in [(&pods[0], 8080), (&pods[0], 8081), (&pods[1], 8080)] {
        listen_on(ns, Ipv4Addr::UNSPECIFIED.into(), port);
    }
    expect(
        &lab,
        "without a policy everything is open",
        &[
            (&e_cb, &e_db, Fam::V4, Probe::Tcp(7005), true),
            (&e_fout, &e_db, Fam::V4, Probe::Tcp(7011), true),
            (&e_cache, &e_fout, Fam::V4, Probe::Tcp(8080), true),
        ],
    );

    // Ingress, both selectors in one peer, ports of three protocols with a range.
    lab.weftctl_ok(&["namespace", "label", "alice", "user=alice"]);
    lab.apply_policy(&test_policy("db-clients"), None);
    settle(&lab, &e_cb, &e_db, Probe::Tcp(7005), false, "db-clients");
    let mut cases = Vec::new();
    for fam in [Fam::V4, Fam::V6] {
        cases.extend([
            (&e_ca, &e_db, fam, Probe::Tcp(7005), true),
            (&e_ca, &e_db, fam, Probe::Tcp(7011), false),
            (&e_ca, &e_db, fam, Probe::Udp(5353), true),
            (&e_ca, &e_db, fam, Probe::Udp(5354), false),
            (&e_ca, &e_db, fam, Probe::Tcp(5353), false),
            (&e_ca, &e_db, fam, Probe::Sctp(9000), true),
            (&e_ca, &e_db, fam, Probe::Sctp(9001), false),
            (&e_cb, &e_db, fam, Probe::Tcp(7005), false),
            (&e_wa, &e_db, fam, Probe::Tcp(7005), false),
            (&h1, &e_db, fam, Probe::Tcp(7011), true),
            (&h2, &e_db, fam, Probe::Tcp(7005), false),
        ]);
    }
    let case = "db-clients (ingress; namespaceSelector and podSelector; TCP range, UDP, SCTP; \
                its own host)";
    expect(&lab, case, &cases);

    // weftctl check sees a hand edit (db taken out of the isolated set: open to anyone),
    // and weftd's next full pass mends it.
    let check = lab.hosts[0].weftctl_check(&[]);
    assert!(
        check.status.success(),
        "check before the edit: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let db_ip = db.ip.to_string();
    lab.hosts[0].ns.exec(&[
        "nft",
        "delete",
        "element",
        "ip",
        "weft_policy",
        "isolated_in",
        &format!("{{ {db_ip} }}"),
    ]);
    assert!(
        reaches(&e_cb, &e_db, Fam::V4, Probe::Tcp(7005), ALLOWED_WITHIN),
        "the hand edit opens db"
    );
    let check = lab.hosts[0].weftctl_check(&[]);
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        !check.status.success() && said.contains(&format!("set isolated_in lacks {db_ip}")),
        "{said}"
    );
    let mended = wait_for(Duration::from_secs(12), || {
        lab.hosts[0]
            .weftctl_check(&[])
            .status
            .success()
            .then_some(())
    });
    assert!(
        mended.is_some(),
        "weftd did not mend the hand edit:\n{}",
        lab.hosts[0].logs()
    );
    expect(
        &lab,
        "after the repair",
        &[(&e_cb, &e_db, Fam::V4, Probe::Tcp(7005), false)],
    );

    // Egress; matchExpressions In, NotIn, Exists and DoesNotExist; an ipBlock with except
    // holding a flannel host's pods; a policy leaves the other direction open.
    lab.apply_policy(&test_policy("cache-egress"), None);
    settle(
        &lab,
        &e_cache,
        &e_fout,
        Probe::Tcp(8080),
        false,
        "cache-egress",
    );
    let mut cases = Vec::new();
    for fam in [Fam::V4, Fam::V6] {
        cases.extend([
            (&e_cache, &e_ca, fam, Probe::Tcp(8080), true),
            (&e_cache, &e_plain, fam, Probe::Tcp(8080), true),
            (&e_cache, &e_dev, fam, Probe::Tcp(8080), false),
            (&e_ca, &e_cache, fam, Probe::Tcp(8080), true),
        ]);
    }
    cases.extend([
        (&e_cache, &e_fin, Fam::V4, Probe::Tcp(8080), true),
        (&e_cache, &e_fin, Fam::V4, Probe::Tcp(8081), false),
        (&e_cache, &e_fout, Fam::V4, Probe::Tcp(8080), false),
        (&e_dev, &e_fout, Fam::V4, Probe::Tcp(8080), true),
        (&e_fin, &e_plain, Fam::V4, Probe::Tcp(8080), true),
    ]);
    expect(
        &lab,
        "cache-egress (egress; matchExpressions; ipBlock with except; flannel pods)",
        &cases,
    );

    // IPv6: the documentation's default-deny-ingress in prod, and ingress from the overlay's
    // IPv6 block but for host 2's subnet: IPv6 from host 1 gets in, IPv4 does not.
    lab.apply_policy(&test_policy("default-deny-ingress"), Some("prod"));
    let v6_block = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: v6-from-afar, namespace: prod}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: '2001:db8:100::/48', except: ['{}']}}\n",
        lab.hosts[1].subnet6()
    );
    lab.apply_policy(&v6_block, None);
    settle(
        &lab,
        &e_fin,
        &e_plain,
        Probe::Tcp(8080),
        false,
        "default-deny-ingress",
    );
    expect(
        &lab,
        "default-deny-ingress and an IPv6 ipBlock with except",
        &[
            (&e_db, &e_plain, Fam::V6, Probe::Tcp(8080), true),
            (&e_db, &e_plain, Fam::V4, Probe::Tcp(8080), false),
            (&e_ca, &e_plain, Fam::V6, Probe::Tcp(8080), false),
            (&e_ca, &e_plain, Fam::V4, Probe::Tcp(8080), false),
            (&e_db, &e_dev, Fam::V6, Probe::Udp(8080), true),
            (&h2, &e_plain, Fam::V4, Probe::Tcp(8080), true),
            (&h2, &e_plain, Fam::V6, Probe::Tcp(8080), true),
        ],
    );

    // weftctl status: each weft host's policy state, with what it refused.
    let seen = wait_for(Duration::from_secs(20), || {
        let v = status(&lab);
        let p = &v["policy"];
        let db_drops = p["top_drops"]
            .as_array()?
            .iter()
            .any(|d| d["policy"] == "default/db-clients");
        (p["policies"] == 4 && p["hosts"] == 2 && p["behind"] == serde_json::json!([]) && db_drops)
            .then_some(v)
    });
    let v = seen.unwrap_or_else(|| panic!("no policy state in weftctl status: {:#}", status(&lab)));
    let h1_record = (v["hosts"].as_array().unwrap().iter())
        .find(|h| h["subnet"] == lab.hosts[0].subnet().to_string())
        .map(|h| h["status"]["policy"].clone())
        .unwrap();
    assert_eq!(h1_record["local_workloads"], 2, "{h1_record:#}");
    assert!(h1_record["dropped"].as_u64().unwrap() > 0, "{h1_record:#}");
    let table = lab.hosts[0].weftctl(&["status", "--pool-warn-below", "0"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    // Shown with --nocapture: the README's example is this output.
    eprintln!("$ weftctl status --pool-warn-below 0\n{table}");
    assert!(
        table.contains("policy:    4 policies; 2 hosts hold them all, 0 behind; 7 containers"),
        "{table}"
    );
    assert!(
        table.contains("most refused by: ") && table.contains("default/db-clients"),
        "{table}"
    );

    for (name, ns) in [
        ("db-clients", "default"),
        ("cache-egress", "prod"),
        ("default-deny-ingress", "prod"),
        ("v6-from-afar", "prod"),
    ] {
        lab.weftctl_ok(&["policy", "delete", name, "-n", ns]);
    }
    settle(
        &lab,
        &e_cb,
        &e_db,
        Probe::Tcp(7005),
        true,
        "all policies deleted",
    );
    expect(
        &lab,
        "without a policy everything is open again",
        &[
            (&e_ca, &e_plain, Fam::V6, Probe::Tcp(8080), true),
            (&e_cache, &e_fout, Fam::V4, Probe::Tcp(8080), true),
        ],
    );
    for c in [db, cache] {
        p1.del(c);
    }
    for c in [client_a, client_b, web_a, dev, plain] {
        p2.del(c);
    }
    LISTENERS.lock().unwrap().clear();
}
