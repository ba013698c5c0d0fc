//! The policy table of one family (`ip weft_policy`, `ip6 weft_policy`) as nftables objects.
//! Rules grow with policies, never with workloads: every workload is an element of named
//! sets, and a rule names a set. One base chain on the forward hook sends packets to an
//! isolated workload through `ingress`, from one through `egress`; each chain lets a packet
//! go on (`return`) when a rule of a policy selecting that workload allows it, counts what
//! is left per policy and drops it. Replies pass by conntrack, before any of that.
//!
//! Forward is the one hook: traffic between containers of one bridge reaches it through
//! br_netfilter (weftd turns `bridge-nf-call-iptables` on), traffic from other hosts and to
//! the outside is routed. A host's own traffic to its containers (output) and theirs to it
//! (input) never reaches it: health checks from the host always pass.

use std::borrow::Cow;

use ipnet::IpNet;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Range};
use nftables::expr::{SetItem, CT};
use nftables::schema::{Chain, NfListObject, Rule, Set, SetType, SetTypeValue, Table};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

use super::model::{Peer, Policy, Port, Rule as PolicyRule};
use super::program::{set_name, target, Program, ISOLATED_IN, ISOLATED_OUT};
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

/// Which side of a packet a chain judges.
#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn chain(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    /// The field holding the judged workload's address, and the peer's.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Direction::Ingress => ("daddr", "saddr"),
            Direction::Egress => ("saddr", "daddr"),
        }
    }
    fn rules(self, p: &Policy) -> Option<&Vec<PolicyRule>> {
        match self {
            Direction::Ingress => p.ingress.as_ref(),
            Direction::Egress => p.egress.as_ref(),
        }
    }
}

/// The table's structure (table, sets without elements, chains, rules in order); `None`
/// when there is no policy. `policies` are those `program` was compiled from, sorted by id.
pub fn structure(
    policies: &[Policy],
    program: &Program,
    f: Family,
) -> Option<Vec<NfListObject<'static>>> {
    if program.is_empty() {
        return None;
    }
    let mut objects = vec![NfListObject::Table(table_object(f))];
    for s in &program.sets {
        objects.push(NfListObject::Set(Box::new(set_object(f, &s.name))));
    }
    for c in ["egress", "forward", "ingress"] {
        objects.push(NfListObject::Chain(chain(f, c)));
    }
    let rule = |chain: &'static str, expr: Vec<Statement<'static>>, comment: Option<String>| {
        NfListObject::Rule(Rule {
            family: nf_family(f),
            table: Cow::Borrowed(TABLE),
            chain: Cow::Borrowed(chain),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: comment.map(Cow::Owned),
        })
    };
    for expr in dispatch(f) {
        objects.push(rule("forward", expr, None));
    }
    for d in [Direction::Egress, Direction::Ingress] {
        for (expr, comment) in judge(policies, f, d) {
            objects.push(rule(d.chain(), expr, Some(comment)));
        }
        objects.push(rule(d.chain(), vec![Statement::Drop(None)], None));
    }
    Some(objects)
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

fn chain(f: Family, name: &'static str) -> Chain<'static> {
    let mut c = Chain {
        family: nf_family(f),
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        ..Chain::default()
    };
    if name == "forward" {
        c._type = Some(NfChainType::Filter);
        c.hook = Some(NfHook::Forward);
        c.prio = Some(PRIORITY);
        c.policy = Some(NfChainPolicy::Accept);
    }
    c
}

/// The base chain: replies pass, IPv6 neighbour discovery passes, isolated workloads are
/// judged (ingress first, so an allowed egress still meets the destination's ingress).
fn dispatch(f: Family) -> Vec<Vec<Statement<'static>>> {
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
        rules.push(vec![
            field_match(
                "icmpv6",
                "type",
                Expression::Named(NamedExpression::Set(
                    nd.iter()
                        .map(|t| SetItem::Element(Expression::String(Cow::Borrowed(t))))
                        .collect(),
                )),
            ),
            Statement::Accept(None),
        ]);
    }
    for (d, set) in [
        (Direction::Ingress, ISOLATED_IN),
        (Direction::Egress, ISOLATED_OUT),
    ] {
        rules.push(vec![
            in_set(f, d.fields().0, set),
            Statement::Jump(JumpTarget {
                target: Cow::Borrowed(d.chain()),
            }),
        ]);
    }
    rules
}

/// The rules of one direction's chain, each with its policy's id as comment: the allows,
/// then one counter per policy (what reaches it is refused at a workload that policy
/// selects; the chain's last rule drops it).
fn judge(policies: &[Policy], f: Family, d: Direction) -> Vec<(Vec<Statement<'static>>, String)> {
    let (own, other) = d.fields();
    let mut out = Vec::new();
    for p in policies {
        let Some(rules) = d.rules(p) else { continue };
        let selected = in_set(f, own, &set_name(&target(p)));
        for r in rules {
            for peer in peer_matches(r, f, other) {
                for port in port_matches(r) {
                    let mut expr = vec![selected.clone()];
                    expr.extend(peer.iter().cloned());
                    expr.extend(port);
                    expr.push(Statement::Return(None));
                    out.push((expr, p.id()));
                }
            }
        }
    }
    for p in policies.iter().filter(|p| d.rules(p).is_some()) {
        let counted = vec![
            in_set(f, own, &set_name(&target(p))),
            Statement::Counter(Counter::Anonymous(None)),
        ];
        out.push((counted, p.id()));
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

fn port_match(p: &Port) -> Vec<Statement<'static>> {
    let l4 = Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::L4proto,
        })),
        right: Expression::String(Cow::Borrowed(p.protocol.name())),
        op: Operator::EQ,
    });
    let port = match p.range {
        None => return vec![l4],
        Some((a, b)) if a == b => Expression::Number(u32::from(a)),
        Some((a, b)) => Expression::Range(Box::new(Range {
            range: [
                Expression::Number(u32::from(a)),
                Expression::Number(u32::from(b)),
            ],
        })),
    };
    vec![l4, field_match("th", "dport", port)]
}

fn field_match(
    protocol: &'static str,
    field: &'static str,
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
        op: Operator::EQ,
    })
}

/// `ip daddr @set` and the like.
fn in_set(f: Family, field: &'static str, set: &str) -> Statement<'static> {
    let protocol = match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    field_match_owned(
        protocol,
        field,
        Expression::String(Cow::Owned(format!("@{set}"))),
    )
}

fn field_match_owned(
    protocol: &'static str,
    field: &'static str,
    right: Expression<'static>,
) -> Statement<'static> {
    field_match(protocol, field, right)
}
