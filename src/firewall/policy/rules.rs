//! The policy table of one family (`ip weft_policy`, `ip6 weft_policy`) as weft wants it.
//! Rules grow with policies, never with workloads: every workload is an element of named
//! sets, and a rule names a set. Two base chains on the forward hook judge a packet, one at
//! its destination and one at its source:
//!
//! ```text
//! chain ingress (filter, forward, priority -10)    chain in_<policy>   (one per policy)
//!   ct state established,related accept              ip saddr @g_… tcp dport 6379 accept
//!   ip daddr != @isolated_in accept                  ip saddr 198.18.0.0/24 accept
//!   ip daddr @g_<its target> jump in_<policy>      (each policy with ingress rules)
//!   ip daddr @g_<its target> counter name drop_<policy>
//!   drop
//! ```
//! `egress` and `out_<policy>` are the same with the source. An allow accepts the packet for
//! its base chain; the other base chain still judges the other side, so a connection needs
//! egress allowed at its source and ingress at its destination. A policy whose rules change
//! rewrites its own chain alone; the base chains change when policies come, go or change
//! whom they select. The named counters count what each policy's workloads refused and
//! outlive both. Every statement is written in the form nft lists it back (`tcp dport 80`,
//! not `meta l4proto tcp th dport 80`), so a read-back compares equal to what was written.
//!
//! Forward is the one hook: traffic between containers of one bridge reaches it through
//! br_netfilter (weftd turns `bridge-nf-call-iptables` on while a policy exists), traffic
//! from other hosts and to the outside is routed. A host's own traffic to its containers
//! (output) and theirs to it (input) never reaches it: health checks from the host pass.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Range};
use nftables::expr::{SetItem, CT};
use nftables::schema::{Chain, Set, SetType, SetTypeValue, Table};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::model::{Peer, Policy, Port, Rule as PolicyRule};
use super::program::{fnv64, set_name, target, Program, ISOLATED_IN, ISOLATED_OUT};
use super::state::{ChainState, RuleState, TableState};
use crate::firewall::tables::{addr, nf_family};
use crate::subnet::Family;

/// The name of the policy table in each family.
pub const TABLE: &str = "weft_policy";
/// Before weft's forward accepts (priority 0) and anyone else's at `filter`.
const PRIORITY: i32 = -10;

pub fn table_object(f: Family) -> Table<'static> {
    Table {
        family: nf_family(f),
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// Which side of a packet a base chain judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// The base chain's name.
    pub fn base(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "in_",
            Direction::Egress => "out_",
        }
    }

    /// The field holding the judged workload's address, and the peer's.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Direction::Ingress => ("daddr", "saddr"),
            Direction::Egress => ("saddr", "daddr"),
        }
    }

    fn isolated(self) -> &'static str {
        match self {
            Direction::Ingress => ISOLATED_IN,
            Direction::Egress => ISOLATED_OUT,
        }
    }

    pub fn rules(self, p: &Policy) -> Option<&Vec<PolicyRule>> {
        match self {
            Direction::Ingress => p.ingress.as_ref(),
            Direction::Egress => p.egress.as_ref(),
        }
    }
}

/// A policy's part of the names of its chains and counter: nft names are not free text.
fn tag(p: &Policy) -> String {
    format!("{:016x}", fnv64(&p.id()))
}

/// The chain holding `p`'s rules for direction `d`.
pub fn policy_chain(d: Direction, p: &Policy) -> String {
    format!("{}{}", d.prefix(), tag(p))
}

/// The named counter of the packets refused at workloads `p` selects.
pub fn counter_name(p: &Policy) -> String {
    format!("drop_{}", tag(p))
}

/// The table weft wants in family `f`; `None` when there is no policy. `policies` are those
/// `program` was compiled from, sorted by id; `members` each set's addresses of family `f`.
pub fn desired(
    policies: &[Policy],
    program: &Program,
    members: &BTreeMap<String, BTreeSet<IpAddr>>,
    f: Family,
) -> Option<TableState> {
    if program.is_empty() {
        return None;
    }
    let mut t = TableState::default();
    for s in &program.sets {
        let elements = members.get(&s.name).cloned().unwrap_or_default();
        t.sets.insert(s.name.clone(), elements);
    }
    for d in Direction::ALL {
        let mut base = dispatch(f, d);
        let (own, _) = d.fields();
        let judged: Vec<&Policy> = policies.iter().filter(|p| d.rules(p).is_some()).collect();
        for p in &judged {
            let chain = policy_chain(d, p);
            let jump = Statement::Jump(JumpTarget {
                target: Cow::Owned(chain.clone()),
            });
            base.push(rule(vec![in_set(f, own, &set_name(&target(p))), jump], p));
            let allows = allows(p, f, d).into_iter().map(|e| rule(e, p)).collect();
            t.chains
                .insert(chain.clone(), chain_state(f, chain, None, allows));
        }
        for p in &judged {
            let counter = Statement::Counter(Counter::Named(Cow::Owned(counter_name(p))));
            base.push(rule(
                vec![in_set(f, own, &set_name(&target(p))), counter],
                p,
            ));
            t.counters.insert(counter_name(p));
        }
        base.push(RuleState {
            expr: vec![Statement::Drop(None)],
            comment: None,
        });
        let name = d.base().to_string();
        t.chains
            .insert(name.clone(), chain_state(f, name, Some(d), base));
    }
    Some(t)
}

fn rule(expr: Vec<Statement<'static>>, p: &Policy) -> RuleState {
    RuleState {
        expr,
        comment: Some(p.id()),
    }
}

fn chain_state(
    f: Family,
    name: String,
    base: Option<Direction>,
    rules: Vec<RuleState>,
) -> ChainState {
    ChainState {
        def: chain(f, name, base.is_some()),
        rules,
    }
}

pub fn set_object(f: Family, name: &str) -> Set<'static> {
    let t = match f {
        Family::V4 => SetType::Ipv4Addr,
        Family::V6 => SetType::Ipv6Addr,
    };
    Set {
        family: nf_family(f),
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        handle: None,
        set_type: SetTypeValue::Single(t),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

pub fn counter_object(f: Family, name: &str) -> nftables::schema::Counter<'static> {
    nftables::schema::Counter {
        family: nf_family(f),
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        handle: None,
        packets: None,
        bytes: None,
    }
}

/// A chain as declared: a base chain on the forward hook, or a regular one.
pub fn chain(f: Family, name: String, base: bool) -> Chain<'static> {
    let mut c = Chain {
        family: nf_family(f),
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name),
        ..Chain::default()
    };
    if base {
        c._type = Some(NfChainType::Filter);
        c.hook = Some(NfHook::Forward);
        c.prio = Some(PRIORITY);
        c.policy = Some(NfChainPolicy::Accept);
    }
    c
}

/// The head of a base chain: replies pass, IPv6 neighbour discovery passes, workloads this
/// side of no policy isolates pass.
fn dispatch(f: Family, d: Direction) -> Vec<RuleState> {
    let ct_state = Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("state"),
            family: None,
            dir: None,
        })),
        right: Expression::List(vec![
            Expression::String(Cow::Borrowed("established")),
            Expression::String(Cow::Borrowed("related")),
        ]),
        op: Operator::IN,
    });
    let mut rules = vec![vec![ct_state, Statement::Accept(None)]];
    if f == Family::V6 {
        let nd = [
            "nd-router-solicit",
            "nd-router-advert",
            "nd-neighbor-solicit",
            "nd-neighbor-advert",
        ];
        let types = nd
            .iter()
            .map(|t| SetItem::Element(Expression::String(Cow::Borrowed(t))));
        let set = Expression::Named(NamedExpression::Set(types.collect()));
        rules.push(vec![
            field_match("icmpv6", "type", Operator::EQ, set),
            Statement::Accept(None),
        ]);
    }
    let not_isolated = field_match(
        family_protocol(f),
        d.fields().0,
        Operator::NEQ,
        set_ref(d.isolated()),
    );
    rules.push(vec![not_isolated, Statement::Accept(None)]);
    rules
        .into_iter()
        .map(|expr| RuleState {
            expr,
            comment: None,
        })
        .collect()
}

/// The allows of `p` in direction `d` and family `f`, each a list of statements ending in
/// `accept`: every peer alternative with every port alternative.
fn allows(p: &Policy, f: Family, d: Direction) -> Vec<Vec<Statement<'static>>> {
    let (_, other) = d.fields();
    let mut out = Vec::new();
    for r in d.rules(p).into_iter().flatten() {
        for peer in peer_matches(r, f, other) {
            for port in port_matches(r) {
                let mut expr = peer.clone();
                expr.extend(port);
                expr.push(Statement::Accept(None));
                out.push(expr);
            }
        }
    }
    out
}

/// The alternatives for a rule's peers in family `f`: each a list of statements that must
/// all hold. No peers: one empty alternative (anyone). Peers only of the other family: none.
fn peer_matches(r: &PolicyRule, f: Family, field: &'static str) -> Vec<Vec<Statement<'static>>> {
    let Some(peers) = &r.peers else {
        return vec![Vec::new()];
    };
    let mut out = Vec::new();
    for p in peers {
        match p {
            Peer::Workloads(sel) => out.push(vec![in_set(f, field, &set_name(sel))]),
            Peer::Block { cidr, except } if family_of(cidr) == f => {
                let mut m = vec![addr(f, field, Operator::EQ, *cidr)];
                m.extend(except.iter().map(|e| addr(f, field, Operator::NEQ, *e)));
                out.push(m);
            }
            Peer::Block { .. } => {}
        }
    }
    out
}

fn family_of(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// The alternatives for a rule's ports: none given means every port of every protocol.
fn port_matches(r: &PolicyRule) -> Vec<Vec<Statement<'static>>> {
    let Some(ports) = &r.ports else {
        return vec![Vec::new()];
    };
    ports.iter().map(port_match).collect()
}

/// `meta l4proto tcp` for a whole protocol; `tcp dport 80` or `tcp dport 80-90` for ports
/// (nft adds the protocol match itself and lists only the port).
fn port_match(p: &Port) -> Vec<Statement<'static>> {
    let name = p.protocol.name();
    let port = match p.range {
        None => {
            let l4 = Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::L4proto,
                })),
                right: Expression::String(Cow::Borrowed(name)),
                op: Operator::EQ,
            });
            return vec![l4];
        }
        Some((a, b)) if a == b => Expression::Number(u32::from(a)),
        Some((a, b)) => Expression::Range(Box::new(Range {
            range: [
                Expression::Number(u32::from(a)),
                Expression::Number(u32::from(b)),
            ],
        })),
    };
    vec![field_match(name, "dport", Operator::EQ, port)]
}

fn family_protocol(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn field_match(
    protocol: &'static str,
    field: &'static str,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed(protocol),
                field: Cow::Borrowed(field),
            },
        ))),
        right,
        op,
    })
}

fn set_ref(set: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(format!("@{set}")))
}

/// `ip daddr @set` and the like.
fn in_set(f: Family, field: &'static str, set: &str) -> Statement<'static> {
    field_match(family_protocol(f), field, Operator::EQ, set_ref(set))
}

#[cfg(all(test, feature = "daemon"))]
mod tests {
    use super::*;
    use crate::firewall::policy::model;

    fn policies() -> Vec<Policy> {
        let text = include_str!("../../../tests/data/k8s-network-policies.yaml");
        let mut p: Vec<Policy> = (model::documents(text).unwrap().iter())
            .map(|d| model::parse(d, None).unwrap())
            .collect();
        p.sort_by_key(Policy::id);
        p
    }

    fn rules_text(t: &TableState) -> String {
        let exprs: Vec<&Vec<Statement<'static>>> = (t.chains.values())
            .flat_map(|c| c.rules.iter().map(|r| &r.expr))
            .collect();
        serde_json::to_string(&exprs).unwrap()
    }

    #[test]
    fn rules_grow_with_policies_and_each_policy_has_its_chain_and_counter() {
        let p = policies();
        let program = Program::compile(&p, &BTreeMap::new());
        let t = desired(&p, &program, &BTreeMap::new(), Family::V4).unwrap();
        let with_ingress = p.iter().filter(|p| p.ingress.is_some()).count();
        let with_egress = p.iter().filter(|p| p.egress.is_some()).count();
        assert_eq!(t.chains.len(), 2 + with_ingress + with_egress);
        assert_eq!(t.counters.len(), p.len());
        // The base chain: 2 head rules, a jump and a counter per policy, the drop.
        assert_eq!(t.chains["ingress"].rules.len(), 2 + 2 * with_ingress + 1);
        // test-network-policy: 3 peers (the ipBlock with its except) × 1 port.
        let db = p.iter().find(|p| p.name == "test-network-policy").unwrap();
        let chain = &t.chains[&policy_chain(Direction::Ingress, db)];
        assert_eq!(chain.rules.len(), 3);
        let text = rules_text(&t);
        // Written as nft lists them: no `th`, no l4proto match before a port.
        assert!(
            text.contains(r#"{"protocol":"tcp","field":"dport"}"#),
            "{text}"
        );
        assert!(!text.contains(r#""th""#), "{text}");
        assert!(text.contains(r#""range":[32000,32768]"#), "{text}");
        // v6: no rule from the IPv4 blocks, neighbour discovery passes.
        let t6 = desired(&p, &program, &BTreeMap::new(), Family::V6).unwrap();
        assert_eq!(
            t6.chains[&policy_chain(Direction::Ingress, db)].rules.len(),
            2
        );
        assert!(rules_text(&t6).contains("nd-neighbor-solicit"));
    }

    #[test]
    fn sctp_udp_and_whole_protocols_have_their_own_matches() {
        let port = |protocol, range| port_match(&Port { protocol, range });
        let json = |s: Vec<Statement<'static>>| serde_json::to_string(&s).unwrap();
        use model::Protocol::*;
        let sctp = json(port(Sctp, Some((9000, 9000))));
        assert!(
            sctp.contains(r#""protocol":"sctp","field":"dport""#),
            "{sctp}"
        );
        assert!(sctp.contains(r#""right":9000"#), "{sctp}");
        assert!(json(port(Udp, Some((5000, 5100)))).contains(r#""protocol":"udp""#));
        let whole = json(port(Sctp, None));
        assert!(whole.contains(r#"{"meta":{"key":"l4proto"}}"#), "{whole}");
        assert!(whole.contains(r#""right":"sctp""#), "{whole}");
    }
}
