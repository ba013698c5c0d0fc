//! The plugin's way into the policy sets, against the real kernel: a table shaped like
//! weftd's (address sets of both families, as weft declares them) in a namespace of the
//! test's own; addresses admitted and evicted over netlink and read back with `nft -j`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use testkit::netns::Netns;
use weft::firewall::enforce::{Enforcer, Inputs};
use weft::firewall::policy::local::Shared;
use weft::firewall::policy::rules::TABLE;
use weft::firewall::policy::{model, Program, Workload};
use weft::netlink::nf_sets::{change_elements, ElementChange};

const POLICY: &str = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
  "metadata": {"name": "db", "namespace": "default"},
  "spec": {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"],
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "web"}}}]}]}}"#;

fn program() -> Program {
    let doc: serde_json::Value = serde_json::from_str(POLICY).unwrap();
    let p = model::parse(&doc, None).unwrap();
    Program::compile(&[p], &BTreeMap::new())
}

/// weft's policy table in both families with `sets`, declared as weftd declares them.
fn table(ns: &Netns, sets: &[&str]) {
    let mut text = String::new();
    for (family, ty) in [("ip", "ipv4_addr"), ("ip6", "ipv6_addr")] {
        text += &format!("table {family} {TABLE} {{\n");
        for s in sets {
            text += &format!("  set {s} {{ type {ty}; }}\n");
        }
        text += "}\n";
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let out = ns.exec(&["nft", "-f", &file.path().to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The addresses `set` holds in the table of `a`'s family, as `nft -j list set` shows them.
fn holds(ns: &Netns, set: &str, a: IpAddr) -> bool {
    let family = if a.is_ipv4() { "ip" } else { "ip6" };
    let out = ns.exec(&["nft", "-j", "list", "set", family, TABLE, set]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let elems = doc["nftables"].as_array().unwrap().iter();
    let elems: Vec<String> = elems
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    elems.contains(&a.to_string())
}

fn workload(role: &str, addresses: &[&str]) -> Workload {
    let labels = BTreeMap::from([("role".to_string(), role.to_string())]);
    let addrs = addresses.iter().map(|a| a.parse().unwrap()).collect();
    Workload::new(None, role, labels, addrs)
}

fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    weft::netlink::run_in_netns(&ns.path(), f).unwrap()
}

/// Admitted, each address of both families is in exactly the sets the program chooses for
/// it (a stale copy in another set taken out); evicted, it is in none. Without a membership
/// file the plugin clears every other set, which never fails on a set that lacks it.
#[test]
fn admitted_addresses_are_in_exactly_their_sets_and_evicted_ones_in_none() {
    let ns = Netns::new("nlset");
    let program = program();
    let names: Vec<String> = program.sets.iter().map(|s| s.name.clone()).collect();
    table(&ns, &names.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let subnet = dir.path().join("subnet.env");
    Shared::beside(&subnet)
        .lock()
        .unwrap()
        .write_program(&program)
        .unwrap();

    let db = workload("db", &["198.18.0.5", "2001:db8::5"]);
    let wanted: Vec<String> = program
        .sets_of(&db, true)
        .into_iter()
        .map(str::to_string)
        .collect();
    assert!(
        !wanted.is_empty() && wanted.len() < names.len(),
        "{wanted:?} of {names:?}"
    );
    let other = names.iter().find(|n| !wanted.contains(n)).unwrap().clone();
    // A stale copy of the address in a set it does not belong to.
    let stale: IpAddr = "198.18.0.5".parse().unwrap();
    let change = ElementChange {
        add: true,
        set: other.clone(),
        address: stale,
    };
    in_ns(&ns, move || change_elements(TABLE, &[change])).unwrap();

    let (s, w) = (subnet.clone(), db.clone());
    in_ns(&ns, move || Shared::beside(&s).lock().unwrap().admit(&w)).unwrap();
    for a in &db.addresses {
        for set in &names {
            assert_eq!(holds(&ns, set, *a), wanted.contains(set), "{a} in {set}");
        }
    }

    let (s, addrs) = (subnet.clone(), db.addresses.clone());
    in_ns(&ns, move || {
        Shared::beside(&s).lock().unwrap().evict(&addrs)
    })
    .unwrap();
    for a in &db.addresses {
        for set in &names {
            assert!(!holds(&ns, set, *a), "{a} still in {set}");
        }
    }
}

/// A change the kernel refuses (a set that is not there) fails the whole batch: the changes
/// before it are not applied, and the error names the set and carries ENOENT.
#[test]
fn a_missing_set_fails_the_whole_batch_and_is_named() {
    let ns = Netns::new("nlsetbad");
    table(&ns, &["present"]);
    let v4: IpAddr = "198.18.0.7".parse().unwrap();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    let change = |set: &str, address| ElementChange {
        add: true,
        set: set.into(),
        address,
    };
    let batch = vec![
        change("present", v4),
        change("present", v6),
        change("absent", v4),
    ];
    let e = in_ns(&ns, move || change_elements(TABLE, &batch)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    assert!(e.to_string().contains("set absent"), "{e}");
    assert!(!holds(&ns, "present", v4) && !holds(&ns, "present", v6));

    // Deleting an address a set does not hold fails too (clearing adds it first).
    let delete = vec![ElementChange {
        add: false,
        set: "present".into(),
        address: v4,
    }];
    let e = in_ns(&ns, move || change_elements(TABLE, &delete)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    let clear = vec![
        change("present", v6),
        ElementChange {
            add: false,
            set: "present".into(),
            address: v6,
        },
    ];
    in_ns(&ns, move || change_elements(TABLE, &clear)).unwrap();
    assert!(!holds(&ns, "present", v6));
}

/// weftd's pass writes the membership file with the addresses the plugin may ask about (this
/// host's subnet and its recorded workloads), not other hosts' workloads: an ADD reads a file
/// the size of this host. A remote record that still claims an address of this host's subnet
/// keeps its entry, so a new local container given that address is taken out of the remote
/// workload's sets when admitted.
#[test]
fn the_membership_file_holds_this_hosts_addresses_and_a_reused_one_is_cleared() {
    let ns = Netns::new("nlsetmem");
    let dir = tempfile::tempdir().unwrap();
    let subnet = dir.path().join("subnet.env");
    let doc: serde_json::Value = serde_json::from_str(POLICY).unwrap();
    let web_far = workload("web", &["198.18.9.5"]);
    // Another host's record still holding an address of this host's subnet.
    let web_stale = workload("web", &["198.18.1.7"]);
    let inputs = Inputs {
        policies: vec![model::parse(&doc, None).unwrap()],
        namespaces: BTreeMap::new(),
        remote: vec![web_far.clone(), web_stale],
        subnets: vec!["198.18.1.0/24".parse().unwrap()],
    };
    let local = workload("db", &["198.18.1.5"]);
    let s = subnet.clone();
    let l = local.clone();
    in_ns(&ns, move || {
        let shared = Shared::beside(&s);
        shared.lock().unwrap().put_workload("c1+eth0", &l).unwrap();
        Enforcer::new(&s).ensure(&inputs, true).map(|_| ())
    })
    .unwrap();
    let members = Shared::beside(&subnet).lock().unwrap().members().unwrap();
    let held: Vec<String> = members.0.keys().map(IpAddr::to_string).collect();
    assert_eq!(held, ["198.18.1.5", "198.18.1.7"], "{members:?}");
    let program = Shared::beside(&subnet)
        .lock()
        .unwrap()
        .program()
        .unwrap()
        .unwrap();
    let web_sets: Vec<String> = (program.sets_of(&web_far, false).into_iter())
        .map(str::to_string)
        .collect();
    assert!(!web_sets.is_empty(), "{:?}", program.sets);
    let far: IpAddr = "198.18.9.5".parse().unwrap();
    assert!(web_sets.iter().all(|set| holds(&ns, set, far)));

    // The address comes back on this host as a db container: in none of web's sets.
    let reused = workload("db", &["198.18.1.7"]);
    let s = subnet.clone();
    in_ns(&ns, move || {
        Shared::beside(&s).lock().unwrap().admit(&reused)
    })
    .unwrap();
    let a: IpAddr = "198.18.1.7".parse().unwrap();
    for set in &web_sets {
        assert!(!holds(&ns, set, a), "{a} still in {set}");
    }
}

/// The plugin amends the membership file by appending one line per step, never by making a
/// new file: an ADD on a disk-backed directory then costs no create and rename. The lines
/// still decide: a db container whose DEL never came is known from its line alone, so a web
/// container given its address is taken out of db's sets; evicted, the address is in none.
#[test]
fn the_plugin_appends_to_the_membership_file_and_its_lines_clear_a_reused_address() {
    use std::os::unix::fs::MetadataExt;
    let ns = Netns::new("nlsetjrn");
    let program = program();
    let names: Vec<String> = program.sets.iter().map(|s| s.name.clone()).collect();
    table(&ns, &names.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let subnet = dir.path().join("subnet.env");
    let shared = Shared::beside(&subnet);
    {
        let lock = shared.lock().unwrap();
        lock.write_program(&program).unwrap();
        lock.write_members(&Default::default()).unwrap();
    }
    let file = shared.members_path();
    let inode = std::fs::metadata(&file).unwrap().ino();
    let sets_of = |w: &Workload| -> Vec<String> {
        (program.sets_of(w, true).into_iter())
            .map(str::to_string)
            .collect()
    };
    let a: IpAddr = "198.18.0.5".parse().unwrap();
    let (db, web) = (
        workload("db", &["198.18.0.5"]),
        workload("web", &["198.18.0.5"]),
    );
    assert_ne!(sets_of(&db), sets_of(&web));

    for w in [db.clone(), web.clone()] {
        let s = subnet.clone();
        in_ns(&ns, move || Shared::beside(&s).lock().unwrap().admit(&w)).unwrap();
    }
    for set in &names {
        assert_eq!(
            holds(&ns, set, a),
            sets_of(&web).contains(set),
            "{a} in {set}"
        );
    }
    let members = shared.lock().unwrap().members().unwrap();
    let named: Vec<String> = members.0[&a].iter().cloned().collect();
    assert_eq!(named, sets_of(&web), "{members:?}");

    let s = subnet.clone();
    in_ns(&ns, move || Shared::beside(&s).lock().unwrap().evict(&[a])).unwrap();
    assert!(names.iter().all(|set| !holds(&ns, set, a)));
    let members = shared.lock().unwrap().members().unwrap();
    assert!(
        members.0.get(&a).is_none_or(|s| s.is_empty()),
        "{members:?}"
    );
    // weftd's line, db before its transaction, web before and after (db's sets cleared),
    // the eviction: five lines in the same file, and nothing else in the directory.
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
    let tmp = std::fs::read_dir(dir.path()).unwrap().flatten();
    let tmp: Vec<_> = tmp
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}
