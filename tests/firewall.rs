//! weft's firewall against the real nft and iptables, inside namespaces the tests make: the
//! module run in a namespace (as weftd's datapath runs it) writes flannel's rules, changes
//! nothing on a second pass, repairs a flushed table, removes what a changed spec no longer
//! wants (another network's accepts, masquerade, a family) and leaves others' rules alone; and
//! weftd restarted on a changed network drops the old network's accepts.

use std::time::Duration;

use testkit::lab::{Lab, VXLAN_CONFIG};
use testkit::netns::Netns;
use testkit::wait::wait_for;
use weft::firewall::{Applied, Before, Change, Firewall, FirewallSpec, Overlay};
use weft::subnet::{Family, PerFamily};

/// One pass of `fw` inside `ns`; the firewall comes back with what the pass did.
fn ensure(ns: &Netns, mut fw: Firewall, spec: &FirewallSpec) -> (Firewall, Applied) {
    let spec = spec.clone();
    weft::netlink::run_in_netns(&ns.path(), move || {
        let applied = fw.ensure(&spec);
        (fw, applied)
    })
    .expect("entering the namespace")
}

/// A pass by a fresh firewall (as after a weftd restart) that must succeed.
fn pass(ns: &Netns, spec: &FirewallSpec) -> Vec<Change> {
    let (_, applied) = ensure(ns, Firewall::new(), spec);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    applied.changes
}

fn overlay(network: &str, subnet: &str) -> Option<Overlay> {
    Some(Overlay {
        network: network.parse().unwrap(),
        subnet: subnet.parse().unwrap(),
    })
}

/// Network A (198.19.0.0/16, 2001:db8:5::/48) or B (198.18.64.0/18, 2001:db8:6::/48).
fn spec(b: bool, v6: bool, masquerade: bool) -> FirewallSpec {
    let (v4, v6net) = match b {
        false => (
            overlay("198.19.0.0/16", "198.19.7.0/24"),
            overlay("2001:db8:5::/48", "2001:db8:5:7::/64"),
        ),
        true => (
            overlay("198.18.64.0/18", "198.18.65.0/24"),
            overlay("2001:db8:6::/48", "2001:db8:6:1::/64"),
        ),
    };
    FirewallSpec {
        overlay: PerFamily {
            v4,
            v6: v6net.filter(|_| v6),
        },
        masquerade,
    }
}

/// Runs a command in `ns` that must succeed; its stdout.
fn run(ns: &Netns, args: &[&str]) -> String {
    let out = ns.exec(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft list table FAMILY weft`, or None when there is no such table (nft -j list tables).
fn weft_table(ns: &Netns, family: &str) -> Option<String> {
    let tables: serde_json::Value =
        serde_json::from_str(&run(ns, &["nft", "-j", "list", "tables", family])).unwrap();
    let found = tables["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["table"]["name"] == "weft");
    found.then(|| run(ns, &["nft", "list", "table", family, "weft"]))
}

/// The lines of `tool -S FORWARD` that carry weft's comment.
fn weft_accepts(ns: &Netns, tool: &str) -> Vec<String> {
    run(ns, &[tool, "-S", "FORWARD"])
        .lines()
        .filter(|l| l.contains("\"weft overlay\"") && l.ends_with("-j ACCEPT"))
        .map(String::from)
        .collect()
}

fn accept_lines(network: &str) -> Vec<String> {
    ["-s", "-d"]
        .map(|d| {
            format!("-A FORWARD {d} {network} -m comment --comment \"weft overlay\" -j ACCEPT")
        })
        .to_vec()
}

/// Lines of `text` that must appear in this order.
fn assert_in_order(text: &str, lines: &[&str]) {
    let mut at = 0;
    for line in lines {
        let found = text[at..]
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} not found in order in:\n{text}"));
        at += found + line.len();
    }
}

#[test]
fn flannels_rules_are_written_once_and_a_flushed_table_is_repaired() {
    let ns = Netns::new("fw");
    let s = spec(false, true, true);
    let (fw, applied) = ensure(&ns, Firewall::new(), &s);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert_eq!(applied.changes.len(), 6, "{:?}", applied.changes);
    let v4 = weft_table(&ns, "ip").expect("table ip weft");
    assert_in_order(
        &v4,
        &[
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x00004000 == 0x00004000 return",
            "ip saddr 198.19.7.0/24 ip daddr 198.19.0.0/16 return",
            "ip saddr 198.19.0.0/16 ip daddr 198.19.7.0/24 return",
            "ip saddr != 198.19.0.0/16 ip daddr 198.19.7.0/24 return",
            "ip saddr 198.19.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 198.19.0.0/16 ip daddr 198.19.0.0/16 masquerade fully-random",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 198.19.0.0/16 accept",
            "ip daddr 198.19.0.0/16 accept",
        ],
    );
    let v6 = weft_table(&ns, "ip6").expect("table ip6 weft");
    assert_in_order(
        &v6,
        &[
            "ip6 saddr 2001:db8:5:7::/64 ip6 daddr 2001:db8:5::/48 return",
            "ip6 saddr 2001:db8:5::/48 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 daddr 2001:db8:5::/48 accept",
        ],
    );
    assert_eq!(weft_accepts(&ns, "iptables"), accept_lines("198.19.0.0/16"));
    assert_eq!(
        weft_accepts(&ns, "ip6tables"),
        accept_lines("2001:db8:5::/48")
    );

    // What nft lists is recognised as what weft wants, by a firewall that wrote nothing yet.
    assert_eq!(pass(&ns, &s), vec![]);
    let (fw, applied) = ensure(&ns, fw, &s);
    assert!(applied.changes.is_empty() && applied.errors.is_empty());

    // A hand flush of weft's table: the rules come back, nothing else is rewritten.
    run(&ns, &["nft", "flush", "table", "ip", "weft"]);
    let (fw, applied) = ensure(&ns, fw, &s);
    assert_eq!(
        applied.changes,
        vec![Change::TableWritten(Family::V4, Before::Different)]
    );
    assert_eq!(weft_table(&ns, "ip").as_deref(), Some(v4.as_str()));

    // `nft flush ruleset` takes iptables' rules too (iptables-nft keeps them in nftables).
    run(&ns, &["nft", "flush", "ruleset"]);
    let (_, applied) = ensure(&ns, fw, &s);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert!(applied
        .changes
        .contains(&Change::TableWritten(Family::V6, Before::Absent)));
    assert_eq!(applied.changes.len(), 6, "{:?}", applied.changes);
    assert_eq!(weft_table(&ns, "ip6").as_deref(), Some(v6.as_str()));
    assert_eq!(weft_accepts(&ns, "iptables"), accept_lines("198.19.0.0/16"));
}

/// Rules of other tools: a table of their own, and FORWARD rules that look like weft's but
/// are not (no comment, another comment, weft's comment on a drop); FORWARD's policy DROP.
fn others_rules(ns: &Netns) {
    for args in [
        vec!["nft", "add", "table", "inet", "othertool"],
        vec![
            "nft",
            "add chain inet othertool seen { type filter hook forward priority 10; policy accept; }",
        ],
        vec![
            "nft",
            "add rule inet othertool seen ip saddr 198.19.0.0/16 counter accept",
        ],
    ] {
        run(ns, &args);
    }
    for (tool, net) in [
        ("iptables", "198.19.0.0/16"),
        ("ip6tables", "2001:db8:5::/48"),
    ] {
        run(ns, &[tool, "-P", "FORWARD", "DROP"]);
        run(ns, &[tool, "-A", "FORWARD", "-s", net, "-j", "ACCEPT"]);
        let marked = ["-m", "comment", "--comment", "weft overlay"];
        run(
            ns,
            &[
                &[tool, "-A", "FORWARD", "-d", net][..],
                &marked,
                &["-j", "DROP"],
            ]
            .concat(),
        );
        let other = ["-m", "comment", "--comment", "another"];
        run(
            ns,
            &[
                &[tool, "-A", "FORWARD", "-d", net][..],
                &other,
                &["-j", "ACCEPT"],
            ]
            .concat(),
        );
    }
}

/// Everything but weft's accepts in FORWARD, and the other tool's table.
fn others_state(ns: &Netns) -> Vec<String> {
    let mut state = vec![run(ns, &["nft", "list", "table", "inet", "othertool"])];
    for tool in ["iptables", "ip6tables"] {
        let listing = run(ns, &[tool, "-S", "FORWARD"]);
        let weft = weft_accepts(ns, tool);
        state.extend(
            listing
                .lines()
                .filter(|l| !weft.iter().any(|w| w == l))
                .map(String::from),
        );
    }
    state
}

#[test]
fn a_changed_network_loses_its_accepts_and_rules_not_weft_s_stay() {
    let ns = Netns::new("fwnet");
    others_rules(&ns);
    let before = others_state(&ns);
    pass(&ns, &spec(false, true, true));
    assert_eq!(weft_accepts(&ns, "iptables"), accept_lines("198.19.0.0/16"));

    // The network changed and weftd restarted: a fresh firewall with the new spec.
    let changes = pass(&ns, &spec(true, true, true));
    let removed = changes
        .iter()
        .filter(|c| matches!(c, Change::AcceptRemoved(_)))
        .count();
    assert_eq!(removed, 4, "{changes:?}");
    assert!(changes.contains(&Change::TableWritten(Family::V4, Before::Different)));
    assert_eq!(
        weft_accepts(&ns, "iptables"),
        accept_lines("198.18.64.0/18")
    );
    assert_eq!(
        weft_accepts(&ns, "ip6tables"),
        accept_lines("2001:db8:6::/48")
    );
    // weft's accepts sit at the end of FORWARD, after everyone else's.
    let forward = run(&ns, &["iptables", "-S", "FORWARD"]);
    assert!(
        forward
            .trim_end()
            .ends_with(&accept_lines("198.18.64.0/18").join("\n")),
        "{forward}"
    );
    for family in ["ip", "ip6"] {
        let table = weft_table(&ns, family).unwrap();
        assert!(
            !table.contains("198.19.") && !table.contains("2001:db8:5:"),
            "{table}"
        );
    }
    assert_eq!(others_state(&ns), before);
}

#[test]
fn masquerade_turned_off_and_a_family_gone_are_removed_after_a_restart() {
    let ns = Netns::new("fwoff");
    others_rules(&ns);
    let before = others_state(&ns);
    pass(&ns, &spec(false, true, true));

    let changes = pass(&ns, &spec(false, false, false));
    assert!(
        changes.contains(&Change::TableRemoved(Family::V6)),
        "{changes:?}"
    );
    let v4 = weft_table(&ns, "ip").unwrap();
    assert!(
        !v4.contains("postrouting") && !v4.contains("masquerade"),
        "{v4}"
    );
    assert!(v4.contains("ip saddr 198.19.0.0/16 accept"), "{v4}");
    assert_eq!(weft_table(&ns, "ip6"), None);
    assert_eq!(weft_accepts(&ns, "ip6tables"), Vec::<String>::new());
    assert_eq!(weft_accepts(&ns, "iptables"), accept_lines("198.19.0.0/16"));

    // Nothing wanted at all: nothing of weft's is left, and still nothing of others' touched.
    pass(&ns, &FirewallSpec::default());
    assert_eq!(
        (weft_table(&ns, "ip"), weft_table(&ns, "ip6")),
        (None, None)
    );
    assert_eq!(weft_accepts(&ns, "iptables"), Vec::<String>::new());
    assert_eq!(others_state(&ns), before);
}

#[test]
fn weftd_restarted_on_a_changed_network_drops_the_old_networks_accepts() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    let h = &mut lab.hosts[0];
    h.start(&["--ip-masq"]);
    h.wait_ready();
    assert_eq!(
        weft_accepts(&h.ns, "iptables"),
        accept_lines("198.19.0.0/16")
    );
    h.stop();

    // Renumbering as an operator does it: a network whose leases would not fit the new one
    // refuses the change (README, "Changing the config of a running network"), so the
    // leases go first.
    lab.etcd
        .etcdctl_ok(&["del", "--prefix", "/coreos.com/network/subnets/"]);
    lab.etcd.put(
        "/coreos.com/network/config",
        r#"{"Network":"198.18.64.0/18","Backend":{"Type":"vxlan"}}"#,
    );
    let h = &mut lab.hosts[0];
    h.start(&["--ip-masq"]);
    let env = h.wait_ready();
    assert_eq!(env.network, Some("198.18.64.0/18".parse().unwrap()));
    let moved = wait_for(Duration::from_secs(7), || {
        (weft_accepts(&h.ns, "iptables") == accept_lines("198.18.64.0/18")).then_some(())
    });
    assert!(
        moved.is_some(),
        "{:?}\n{}",
        weft_accepts(&h.ns, "iptables"),
        h.logs()
    );
    let table = weft_table(&h.ns, "ip").unwrap();
    assert!(table.contains("ip saddr 198.18.64.0/18 accept"), "{table}");
    assert!(!table.contains("198.19."), "{table}");
    assert!(h.logs().contains("FORWARD accept removed"), "{}", h.logs());
}
