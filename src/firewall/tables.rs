//! What weft wants in nftables, as the `nftables` crate's typed objects: one table per family
//! (`ip weft`, `ip6 weft`) holding flannel's masquerade rules and the overlay's forward
//! accepts. Pure, so the exact contents are unit-tested; `nft.rs` writes and reads them.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload};
use nftables::expr::{PayloadField, Prefix};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, NATFlag, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{FirewallSpec, Overlay};
use crate::subnet::Family;

/// The name of weft's table in each family.
pub const TABLE: &str = "weft";

/// The kube-proxy mark: traffic it already NATs is left alone to avoid double NAT.
const KUBE_PROXY_MARK: u32 = 0x4000;

/// nft's numeric priorities for `srcnat` (NAT in postrouting) and `filter`: the listing shows
/// numbers, so the objects carry numbers too.
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;

/// nft's name of a family, for tables and for address matches alike.
pub fn nf_family(f: Family) -> NfFamily {
    match f {
        Family::V4 => NfFamily::IP,
        Family::V6 => NfFamily::IP6,
    }
}

/// The table of one family as an object (its identity: for add and delete alike).
pub fn table_object(f: Family) -> Table<'static> {
    Table {
        family: nf_family(f),
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// Everything weft's table of `family` holds, table first, then chains, then each chain's
/// rules in order; None when weft wants no table in that family. The parts are composed
/// here: network policy (sets, maps and its chains) will be one more part.
pub fn table(spec: &FirewallSpec, family: Family) -> Option<Vec<NfListObject<'static>>> {
    let overlay = spec.overlay[family]?;
    let mut chains = Vec::new();
    if spec.masquerade {
        chains.push(masquerade(family, overlay));
    }
    chains.push(forward(family, overlay));
    let mut objects = vec![NfListObject::Table(table_object(family))];
    objects.extend(chains.iter().map(|(c, _)| NfListObject::Chain(c.clone())));
    for (chain, rules) in chains {
        objects.extend(rules.into_iter().map(|expr| {
            NfListObject::Rule(Rule {
                family: chain.family,
                table: chain.table.clone(),
                chain: chain.name.clone(),
                expr: expr.into(),
                handle: None,
                index: None,
                comment: None,
            })
        }));
    }
    Some(objects)
}

/// A chain's definition and its rules, each rule a list of statements.
type ChainRules = (Chain<'static>, Vec<Vec<Statement<'static>>>);

fn base_chain(f: Family, name: &'static str, kind: NfChainType, hook: NfHook) -> Chain<'static> {
    let prio = match kind {
        NfChainType::NAT => PRIO_SRCNAT,
        _ => PRIO_FILTER,
    };
    Chain {
        family: nf_family(f),
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

/// flannel's masquerade rules (N = the network, P = this host's subnet), in flannel's order.
fn masquerade(f: Family, o: Overlay) -> ChainRules {
    let (n, p) = (o.network.trunc(), o.subnet.trunc());
    let multicast: IpNet = match f {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    }
    .parse()
    .expect("a valid multicast prefix");
    let (eq, ne) = (Operator::EQ, Operator::NEQ);
    let ret = || Statement::Return(None);
    let rules = vec![
        vec![kube_proxy_marked(), ret()],
        vec![addr(f, "saddr", eq, p), addr(f, "daddr", eq, n), ret()],
        vec![addr(f, "saddr", eq, n), addr(f, "daddr", eq, p), ret()],
        // Traffic from outside the overlay to this host's containers keeps its source, so they
        // see who really called. (flannel's nftables variant writes `saddr != P` here, which
        // makes the last masquerade rule below unreachable.)
        vec![addr(f, "saddr", ne, n), addr(f, "daddr", eq, p), ret()],
        vec![
            addr(f, "saddr", eq, n),
            addr(f, "daddr", ne, multicast),
            masquerade_fully_random(),
        ],
        vec![
            addr(f, "saddr", ne, n),
            addr(f, "daddr", eq, n),
            masquerade_fully_random(),
        ],
    ];
    let chain = base_chain(f, "postrouting", NfChainType::NAT, NfHook::Postrouting);
    (chain, rules)
}

/// Accepts for the overlay's traffic, whichever way it goes through this host.
fn forward(f: Family, o: Overlay) -> ChainRules {
    let n = o.network.trunc();
    let accept = || Statement::Accept(None);
    let rules = vec![
        vec![addr(f, "saddr", Operator::EQ, n), accept()],
        vec![addr(f, "daddr", Operator::EQ, n), accept()],
    ];
    let chain = base_chain(f, "forward", NfChainType::Filter, NfHook::Forward);
    (chain, rules)
}

/// `meta mark & 0x4000 == 0x4000`.
fn kube_proxy_marked() -> Statement<'static> {
    let mark = Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }));
    Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            mark,
            Expression::Number(KUBE_PROXY_MARK),
        ))),
        right: Expression::Number(KUBE_PROXY_MARK),
        op: Operator::EQ,
    })
}

fn masquerade_fully_random() -> Statement<'static> {
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags: Some(HashSet::from([NATFlag::FullyRandom])),
    }))
}

/// `ip saddr 198.19.0.0/16` and the like. A full-length prefix is a plain address, as nft
/// lists it, so what is written compares equal to what is read back.
pub(crate) fn addr(f: Family, field: &'static str, op: Operator, net: IpNet) -> Statement<'static> {
    let protocol = match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let address = Expression::String(Cow::Owned(net.addr().to_string()));
    let right = if net.prefix_len() == net.max_prefix_len() {
        address
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(address),
            len: u32::from(net.prefix_len()),
        }))
    };
    let left = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )));
    Statement::Match(Match { left, right, op })
}

/// A listing or a desired table in a form that compares by content: handles (which the
/// kernel assigns) dropped, nft's metainfo left out, and objects in a fixed order (table,
/// chains by name, then rules chain by chain, keeping each chain's rule order).
pub fn normalize(objects: &[NfListObject<'static>]) -> Vec<NfListObject<'static>> {
    let mut out: Vec<NfListObject<'static>> = objects
        .iter()
        .filter(|o| !matches!(o, NfListObject::MetainfoObject(_)))
        .cloned()
        .map(|mut o| {
            match &mut o {
                NfListObject::Table(t) => t.handle = None,
                NfListObject::Chain(c) => c.handle = None,
                NfListObject::Rule(r) => {
                    r.handle = None;
                    r.index = None;
                }
                _ => {}
            }
            o
        })
        .collect();
    // A stable sort: rules of one chain keep their order.
    out.sort_by_key(|o| match o {
        NfListObject::Table(_) => (0, String::new()),
        NfListObject::Chain(c) => (1, c.name.to_string()),
        NfListObject::Rule(r) => (3, r.chain.to_string()),
        _ => (2, serde_json::to_string(o).unwrap_or_default()),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::PerFamily;

    fn spec(masquerade: bool, v6: bool) -> FirewallSpec {
        FirewallSpec {
            overlay: PerFamily {
                v4: Some(Overlay {
                    network: "198.19.0.0/16".parse().unwrap(),
                    subnet: "198.19.7.0/24".parse().unwrap(),
                }),
                v6: v6.then(|| Overlay {
                    network: "2001:db8:5::/48".parse().unwrap(),
                    subnet: "2001:db8:5:7::/64".parse().unwrap(),
                }),
            },
            masquerade,
        }
    }

    /// The table as nft's JSON, one object per line, for readable comparisons.
    fn lines(objects: &[NfListObject<'static>]) -> Vec<String> {
        objects
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect()
    }

    fn rule(family: &str, chain: &str, expr: &str) -> String {
        format!(
            r#"{{"rule":{{"family":"{family}","table":"weft","chain":"{chain}","expr":[{expr}]}}}}"#
        )
    }

    fn m(proto: &str, field: &str, op: &str, addr: &str, len: u32) -> String {
        format!(
            r#"{{"match":{{"left":{{"payload":{{"protocol":"{proto}","field":"{field}"}}}},"right":{{"prefix":{{"addr":"{addr}","len":{len}}}}},"op":"{op}"}}}}"#
        )
    }

    #[test]
    fn masquerade_follows_flannels_rules_in_order_without_its_nftables_bug() {
        let got = lines(&table(&spec(true, false), Family::V4).unwrap());
        let n = |f, op| m("ip", f, op, "198.19.0.0", 16);
        let p = |f, op| m("ip", f, op, "198.19.7.0", 24);
        let ret = r#"{"return":null}"#;
        let masq = r#"{"masquerade":{"flags":["fully-random"]}}"#;
        let mark =
            r#"{"match":{"left":{"&":[{"meta":{"key":"mark"}},16384]},"right":16384,"op":"=="}}"#;
        let post = |e: &str| rule("ip", "postrouting", e);
        let fwd = |e: &str| rule("ip", "forward", e);
        let want = vec![
            r#"{"table":{"family":"ip","name":"weft"}}"#.to_string(),
            r#"{"chain":{"family":"ip","table":"weft","name":"postrouting","type":"nat","hook":"postrouting","prio":100,"policy":"accept"}}"#.into(),
            r#"{"chain":{"family":"ip","table":"weft","name":"forward","type":"filter","hook":"forward","prio":0,"policy":"accept"}}"#.into(),
            post(&format!("{mark},{ret}")),
            post(&format!("{},{},{ret}", p("saddr", "=="), n("daddr", "=="))),
            post(&format!("{},{},{ret}", n("saddr", "=="), p("daddr", "=="))),
            post(&format!("{},{},{ret}", n("saddr", "!="), p("daddr", "=="))),
            post(&format!("{},{},{masq}", n("saddr", "=="), m("ip", "daddr", "!=", "224.0.0.0", 4))),
            post(&format!("{},{},{masq}", n("saddr", "!="), n("daddr", "=="))),
            fwd(&format!("{},{{\"accept\":null}}", n("saddr", "=="))),
            fwd(&format!("{},{{\"accept\":null}}", n("daddr", "=="))),
        ];
        assert_eq!(got, want);
        // flannel's nftables bug: a `saddr != P` return makes the last masquerade unreachable.
        assert!(!got.iter().any(|l| l.contains(&p("saddr", "!="))));
    }

    #[test]
    fn ipv6_gets_the_same_rules_in_its_own_table() {
        let s = spec(true, true);
        let v4 = lines(&table(&s, Family::V4).unwrap());
        let v6 = lines(&table(&s, Family::V6).unwrap());
        assert_eq!(v4.len(), v6.len());
        assert_eq!(v6[0], r#"{"table":{"family":"ip6","name":"weft"}}"#);
        assert!(
            v6[7].contains(&m("ip6", "daddr", "!=", "ff00::", 8)),
            "{}",
            v6[7]
        );
        assert!(v6[8].contains(&m("ip6", "daddr", "==", "2001:db8:5::", 48)));
        assert!(v6[4].contains(&m("ip6", "saddr", "==", "2001:db8:5:7::", 64)));
        assert!(v6.iter().all(|l| !l.contains("\"ip\"")), "{v6:?}");
    }

    #[test]
    fn without_masquerade_only_the_forward_accepts() {
        let s = spec(false, true);
        for f in Family::ALL {
            let got = lines(&table(&s, f).unwrap());
            assert_eq!(got.len(), 4, "{got:?}");
            assert!(got
                .iter()
                .all(|l| !l.contains("masquerade") && !l.contains("postrouting")));
        }
        assert!(table(&spec(true, false), Family::V6).is_none());
    }

    #[test]
    fn normalizing_ignores_handles_and_order_of_kinds_but_not_rule_order() {
        let want = table(&spec(true, false), Family::V4).unwrap();
        let mut listed = want.clone();
        for (i, o) in listed.iter_mut().enumerate() {
            if let NfListObject::Rule(r) = o {
                r.handle = Some(i as u32 + 10);
            }
        }
        listed.swap(1, 2);
        assert_eq!(normalize(&listed), normalize(&want));
        listed.swap(3, 4);
        assert_ne!(normalize(&listed), normalize(&want));
    }

    #[test]
    fn a_full_length_prefix_is_a_plain_address_as_nft_lists_it() {
        let s = addr(
            Family::V6,
            "daddr",
            Operator::EQ,
            "2001:db8::1/128".parse().unwrap(),
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""right":"2001:db8::1""#), "{json}");
    }
}
