//! Why a connection is allowed or refused, with the same semantics the nftables rules
//! enforce: egress must be allowed at the source and ingress at the destination, each by
//! some rule of some policy selecting that side, or that side is not isolated at all.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::model::{Peer, Policy, Protocol, Rule};
use super::program::{admits, namespace_labels, target};
use super::selector::Labels;
use super::workload::Workload;

/// One end of a connection: an address, and the workload holding it when it is one.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub addr: IpAddr,
    pub workload: Option<&'a Workload>,
}

/// The decision on one side (egress at the source, ingress at the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// Policies that select this side for this direction, by id.
    pub selecting: Vec<String>,
    /// The policy and rule that allowed it (`ns/name ingress[0]`), if one did.
    pub allowed_by: Option<String>,
}

impl Side {
    pub fn allowed(&self) -> bool {
        self.selecting.is_empty() || self.allowed_by.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub egress: Side,
    pub ingress: Side,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

/// The verdict for a connection from `src` to `dst` on `port` (any port when `None`; then
/// a rule naming ports does not count as allowing it).
pub fn why(
    policies: &[Policy],
    namespaces: &BTreeMap<String, Labels>,
    src: End<'_>,
    dst: End<'_>,
    port: Option<(Protocol, Option<u16>)>,
) -> Verdict {
    let side = |judged: End<'_>, peer: End<'_>, egress: bool| {
        let mut s = Side {
            selecting: Vec::new(),
            allowed_by: None,
        };
        let Some(w) = judged.workload else {
            return s;
        };
        let ns = namespace_labels(namespaces, &w.namespace);
        for p in policies {
            let rules = if egress { &p.egress } else { &p.ingress };
            let Some(rules) = rules else { continue };
            if !admits(&target(p), w, &ns) {
                continue;
            }
            s.selecting.push(p.id());
            if s.allowed_by.is_some() {
                continue;
            }
            let hit = rules
                .iter()
                .position(|r| rule_allows(r, peer, namespaces, port));
            if let Some(i) = hit {
                let dir = if egress { "egress" } else { "ingress" };
                s.allowed_by = Some(format!("{} {dir}[{i}]", p.id()));
            }
        }
        s
    };
    Verdict {
        egress: side(src, dst, true),
        ingress: side(dst, src, false),
    }
}

fn rule_allows(
    r: &Rule,
    peer: End<'_>,
    namespaces: &BTreeMap<String, Labels>,
    port: Option<(Protocol, Option<u16>)>,
) -> bool {
    let peer_ok = match &r.peers {
        None => true,
        Some(peers) => peers.iter().any(|p| match p {
            Peer::Block { cidr, except } => {
                cidr.contains(&peer.addr) && !except.iter().any(|e| e.contains(&peer.addr))
            }
            Peer::Workloads(sel) => peer
                .workload
                .is_some_and(|w| admits(sel, w, &namespace_labels(namespaces, &w.namespace))),
        }),
    };
    let port_ok = match (&r.ports, port) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ports), Some((proto, n))) => ports.iter().any(|p| p.matches(proto, n)),
    };
    peer_ok && port_ok
}
