//! Network policy at scale on one host, with real nftables in a namespace of its own: 1,000
//! workloads (a few local, the rest remote) and 100 policies. Measured: the rules written
//! (they grow with policies, not workloads), the time of one policy change and of one
//! remote workload added, each next to a pass that changes nothing in the same run, and the
//! step the plugin adds to an ADD (admitting the new container to its sets).

use std::collections::BTreeMap;
use std::time::Instant;

use testkit::netns::Netns;
use weft::firewall::enforce::{Enforcer, Inputs};
use weft::firewall::policy::local::Shared;
use weft::firewall::policy::program::ISOLATED_IN;
use weft::firewall::policy::rules::TABLE;
use weft::firewall::policy::{model, Policy, Workload};
use weft::netlink::nf_sets::{change_elements, ElementChange};

use crate::report::{median, percentile, Table, Target};

pub struct Sizes {
    pub workloads: usize,
    pub policies: usize,
    pub runs: usize,
}

pub fn policy(i: usize, n: usize, port: u16) -> Policy {
    let doc = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("p{i}"), "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": format!("a{i}")}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("a{}", (i + 1) % n)}}},
                {"ipBlock": {"cidr": "198.18.0.0/16", "except": ["198.18.7.0/24"]}}],
                "ports": [{"port": port}, {"protocol": "UDP", "port": 5000, "endPort": 5100}]}],
            "egress": [{"to": [{"namespaceSelector": {}}]}]},
    });
    model::parse(&doc, None).expect("a valid policy")
}

pub fn workload(i: usize, apps: usize) -> Workload {
    let addr = std::net::Ipv4Addr::new(198, 19, (i / 250) as u8 + 1, (i % 250) as u8 + 2);
    let labels = BTreeMap::from([("app".to_string(), format!("a{}", i % apps))]);
    Workload::new(None, &format!("w{i}"), labels, vec![addr.into()])
}

/// This host's own subnet: its workloads' addresses, apart from every other host's.
const OWN_SUBNET: &str = "198.19.100.0/24";

/// The `i`th workload of this host, in [`OWN_SUBNET`].
fn local_workload(i: usize, apps: usize) -> Workload {
    let addr = std::net::Ipv4Addr::new(198, 19, 100, i as u8 + 2);
    let labels = BTreeMap::from([("app".to_string(), format!("a{}", i % apps))]);
    Workload::new(None, &format!("l{i}"), labels, vec![addr.into()])
}

pub fn run(z: &Sizes) -> Vec<Table> {
    let ns = Netns::new("pol");
    let dir = tempfile::tempdir().expect("a temp dir");
    let subnet_file = dir.path().join("subnet.env");
    let path = ns.path();
    let z = Sizes { ..*z };
    weft::netlink::run_in_netns(&path, move || measure(&z, &subnet_file))
        .expect("entering the namespace")
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1000.0
}

fn measure(z: &Sizes, subnet_file: &std::path::Path) -> Vec<Table> {
    let mut enforcer = Enforcer::new(subnet_file);
    let mut inputs = Inputs {
        policies: (0..z.policies).map(|i| policy(i, z.policies, 80)).collect(),
        namespaces: BTreeMap::new(),
        remote: (10..z.workloads).map(|i| workload(i, z.policies)).collect(),
        subnets: vec![OWN_SUBNET.parse().expect("a subnet")],
    };
    inputs.policies.sort_by_key(Policy::id);
    let shared = Shared::beside(subnet_file);
    {
        let lock = shared.lock().expect("the lock");
        for i in 0..10 {
            lock.put_workload(&format!("c{i}+eth0"), &local_workload(i, z.policies))
                .unwrap();
        }
    }
    let first = timed(|| {
        enforcer.ensure(&inputs, true).expect("the first pass");
    });
    let rules = count_rules();
    let (mut idle, mut change, mut added, mut admit) = (vec![], vec![], vec![], vec![]);
    let mut parts = AdmitParts::default();
    for r in 0..z.runs {
        idle.push(timed(|| {
            enforcer.ensure(&inputs, false).unwrap();
        }));
        inputs.policies[0] = policy(0, z.policies, 81 + r as u16);
        change.push(timed(|| {
            enforcer.ensure(&inputs, false).unwrap();
        }));
        inputs.remote.push(workload(z.workloads + r, z.policies));
        added.push(timed(|| {
            enforcer.ensure(&inputs, false).unwrap();
        }));
        let w = local_workload(10 + r, z.policies);
        admit.push(timed(|| {
            let lock = shared.lock().unwrap();
            lock.put_workload(&format!("n{r}+eth0"), &w).unwrap();
            lock.admit(&w).unwrap();
        }));
        parts.measure(&shared, r);
    }
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", "weft_policy"])
        .status();
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip6", "weft_policy"])
        .status();
    let mut t = Table::comparison(&format!(
        "Network policy: {} workloads × {} policies on one host (real nftables)",
        z.workloads, z.policies
    ));
    t.row(vec![
        "rules in ip weft_policy".into(),
        rules.to_string(),
        "–".into(),
        "–".into(),
        "grows with policies".into(),
        "–".into(),
    ]);
    t.compare(
        "first pass (table written)",
        first,
        None,
        " ms",
        Target::None,
        false,
    );
    let base = Some(median(&idle));
    t.compare(
        "one policy changed (p50)",
        median(&change),
        base,
        " ms",
        Target::None,
        false,
    );
    t.compare(
        "one remote workload added (p50)",
        median(&added),
        base,
        " ms",
        Target::None,
        false,
    );
    t.compare(
        "one remote workload added (p99)",
        percentile(&added, 99.0),
        base,
        " ms",
        Target::None,
        false,
    );
    t.compare(
        "plugin ADD's added step: admit to sets (p50)",
        median(&admit),
        None,
        " ms",
        Target::None,
        false,
    );
    parts.rows(&mut t);
    t.note("baseline: a pass that changes nothing (reads the tables back, compiles, compares)");
    t.note("the admit step is what an ADD costs more with policies; without any policy it reads one file and returns");
    vec![t]
}

/// The admit step's parts, each timed alone: what the plugin reads, and the kernel's
/// transaction (and, for DEL, the deletion, which the kernel makes wait longer).
#[derive(Default)]
struct AdmitParts {
    program: Vec<f64>,
    members: Vec<f64>,
    add: Vec<f64>,
    delete: Vec<f64>,
}

impl AdmitParts {
    fn measure(&mut self, shared: &Shared, r: usize) {
        let lock = shared.lock().expect("the lock");
        self.program.push(timed(|| drop(lock.program().unwrap())));
        self.members.push(timed(|| drop(lock.members())));
        let address = std::net::Ipv4Addr::new(198, 19, 100, 200 + r as u8).into();
        let change = |add| {
            let set = ISOLATED_IN.to_string();
            [ElementChange { add, set, address }]
        };
        let (add, delete) = (change(true), change(false));
        self.add
            .push(timed(|| change_elements(TABLE, &add).unwrap()));
        self.delete
            .push(timed(|| change_elements(TABLE, &delete).unwrap()));
    }

    fn rows(&self, t: &mut Table) {
        for (what, v) in [
            (
                "admit step: read and parse the program file (p50)",
                &self.program,
            ),
            ("admit step: read the membership file (p50)", &self.members),
            (
                "admit step: one element added, one nf_tables transaction (p50)",
                &self.add,
            ),
            (
                "DEL's step: one element deleted, one nf_tables transaction (p50)",
                &self.delete,
            ),
        ] {
            t.compare(what, median(v), None, " ms", Target::None, false);
        }
    }
}

fn count_rules() -> usize {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "table", "ip", "weft_policy"])
        .output()
        .expect("running nft");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (v["nftables"].as_array().into_iter().flatten())
        .filter(|o| o.get("rule").is_some())
        .count()
}
