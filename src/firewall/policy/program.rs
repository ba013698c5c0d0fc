//! Policies compiled into what enforcement needs: named address sets, each defined by the
//! workload selectors that admit a workload into it. weftd fills the sets with every
//! workload it knows; the plugin reads the same [`Program`] (a file next to subnet.env) and
//! puts a new container into its sets itself, so a policy holds from the moment ADD returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{NamespaceMatch, Peer, Policy, WorkloadSelector, NAME_LABEL};
use super::selector::Labels;
use super::workload::Workload;

/// The set of this host's workloads that some policy isolates for ingress.
pub const ISOLATED_IN: &str = "isolated_in";
/// ... and for egress.
pub const ISOLATED_OUT: &str = "isolated_out";
/// The version of the program file's format: 2 names the isolated sets' members by their
/// groups (`within`) instead of repeating every policy's selector (the plugin parses the
/// file on every ADD). A version 1 file still reads: its sets carry selectors only.
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Program {
    pub version: u32,
    pub sets: Vec<SetDef>,
    /// Namespace labels an operator set (each namespace also carries its name label).
    pub namespaces: BTreeMap<String, Labels>,
}

/// One address set: a workload belongs when any selector admits it or it belongs to any
/// set named in `within` (and, for a local-only set, when it runs on this host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetDef {
    pub name: String,
    pub local_only: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<WorkloadSelector>,
    /// Sets defined by selectors (never by `within`), so one pass over them decides these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub within: Vec<String>,
}

/// The name of the set of workloads `sel` chooses: stable across compilations, so adding
/// one policy leaves the other sets' names (and contents) alone.
pub fn set_name(sel: &WorkloadSelector) -> String {
    let text = serde_json::to_string(sel).expect("a selector always encodes");
    format!("g_{:016x}", fnv64(&text))
}

/// FNV-1a: a few lines for a stable, well-spread 64-bit name (of sets, chains and counters,
/// which nft names may not be arbitrary text); no cryptography needed.
pub(crate) fn fnv64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The workloads a policy applies to: its pod selector in its namespace.
pub fn target(p: &Policy) -> WorkloadSelector {
    WorkloadSelector {
        namespace: NamespaceMatch::Named(p.namespace.clone()),
        pods: p.pod_selector.clone(),
    }
}

impl Program {
    pub fn compile(policies: &[Policy], namespaces: &BTreeMap<String, Labels>) -> Program {
        let mut groups: BTreeSet<WorkloadSelector> = BTreeSet::new();
        let (mut isolated_in, mut isolated_out) = (BTreeSet::new(), BTreeSet::new());
        for p in policies {
            let t = target(p);
            groups.insert(t.clone());
            if p.ingress.is_some() {
                isolated_in.insert(t.clone());
            }
            if p.egress.is_some() {
                isolated_out.insert(t);
            }
            let rules = p.ingress.iter().chain(&p.egress).flatten();
            for peer in rules.filter_map(|r| r.peers.as_ref()).flatten() {
                if let Peer::Workloads(sel) = peer {
                    groups.insert(sel.clone());
                }
            }
        }
        let mut sets: Vec<SetDef> = groups
            .into_iter()
            .map(|sel| SetDef {
                name: set_name(&sel),
                local_only: false,
                any: vec![sel],
                within: Vec::new(),
            })
            .collect();
        if !policies.is_empty() {
            // Every target is a group of its own: the isolated sets name those groups.
            for (name, targets) in [(ISOLATED_IN, isolated_in), (ISOLATED_OUT, isolated_out)] {
                sets.push(SetDef {
                    name: name.into(),
                    local_only: true,
                    any: Vec::new(),
                    within: targets.iter().map(set_name).collect(),
                });
            }
        }
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        Program {
            version: VERSION,
            sets,
            namespaces: namespaces.clone(),
        }
    }

    /// Whether any policy exists: without one, nothing is enforced and no table is made.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The labels of a namespace: an operator's, and its name label.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        namespace_labels(&self.namespaces, ns)
    }

    /// The sets `w` belongs to; `local` when it runs on this host.
    pub fn sets_of<'p>(&'p self, w: &Workload, local: bool) -> Vec<&'p str> {
        let ns_labels = self.namespace_labels(&w.namespace);
        let chosen: BTreeSet<&str> = (self.sets.iter())
            .filter(|s| s.any.iter().any(|sel| admits(sel, w, &ns_labels)))
            .map(|s| s.name.as_str())
            .collect();
        self.sets
            .iter()
            .filter(|s| local || !s.local_only)
            .filter(|s| {
                chosen.contains(s.name.as_str())
                    || s.within.iter().any(|n| chosen.contains(n.as_str()))
            })
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Every set's addresses of one family (`v6`), from this host's workloads and the
    /// others'. A remote record claiming a local address is ignored: the local one is real.
    pub fn members(
        &self,
        local: &[Workload],
        remote: &[Workload],
        v6: bool,
    ) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let mut out: BTreeMap<String, BTreeSet<IpAddr>> = (self.sets.iter())
            .map(|s| (s.name.clone(), BTreeSet::new()))
            .collect();
        let local_addrs: BTreeSet<IpAddr> =
            local.iter().flat_map(|w| w.addresses.clone()).collect();
        let remote = remote
            .iter()
            .filter(|w| !w.addresses.iter().any(|a| local_addrs.contains(a)));
        let all = local
            .iter()
            .map(|w| (w, true))
            .chain(remote.map(|w| (w, false)));
        // Replicas share namespace and labels: each such kind is matched against every
        // set's selectors once, not once per workload (a pass is then proportional to the
        // policies plus the workloads, not to their product).
        let mut chosen: BTreeMap<(&str, &Labels, bool), Vec<&str>> = BTreeMap::new();
        for (w, is_local) in all {
            let addrs: Vec<IpAddr> = (w.addresses.iter())
                .filter(|a| a.is_ipv6() == v6)
                .copied()
                .collect();
            if addrs.is_empty() {
                continue;
            }
            let names = chosen
                .entry((w.namespace.as_str(), &w.labels, is_local))
                .or_insert_with(|| self.sets_of(w, is_local));
            for name in names.iter() {
                if let Some(set) = out.get_mut(*name) {
                    set.extend(&addrs);
                }
            }
        }
        out
    }
}

pub fn namespace_labels(known: &BTreeMap<String, Labels>, ns: &str) -> Labels {
    let mut labels = known.get(ns).cloned().unwrap_or_default();
    labels.insert(NAME_LABEL.into(), ns.into());
    labels
}

/// Whether `sel` chooses `w`, whose namespace has `ns_labels`.
pub fn admits(sel: &WorkloadSelector, w: &Workload, ns_labels: &Labels) -> bool {
    let ns_ok = match &sel.namespace {
        NamespaceMatch::Named(n) => *n == w.namespace,
        NamespaceMatch::Labels(s) => s.matches(ns_labels),
    };
    ns_ok && sel.pods.matches(&w.labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::policy::model;

    /// Policy `p{i}` isolates app=a{i} for ingress, lets app=a{i+1} in, and lets it out
    /// anywhere (so it is isolated for egress too).
    fn policy(i: usize, n: usize) -> Policy {
        let doc = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("p{i}"), "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{i}")}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("a{}", (i + 1) % n)}}}]}],
                "egress": [{"to": [{"namespaceSelector": {}}]}]},
        });
        model::parse(&doc, None).expect("a valid policy")
    }

    fn workload(app: &str) -> Workload {
        let labels = Labels::from([("app".to_string(), app.to_string())]);
        Workload::new(None, "w", labels, vec!["198.18.0.2".parse().unwrap()])
    }

    fn compiled(n: usize) -> Program {
        let policies: Vec<Policy> = (0..n).map(|i| policy(i, n)).collect();
        Program::compile(&policies, &BTreeMap::new())
    }

    #[test]
    fn a_selected_workload_is_isolated_where_it_runs_and_only_there() {
        let p = compiled(3);
        let local = p.sets_of(&workload("a0"), true);
        let remote = p.sets_of(&workload("a0"), false);
        assert!(
            local.contains(&ISOLATED_IN) && local.contains(&ISOLATED_OUT),
            "{local:?}"
        );
        assert!(!remote.contains(&ISOLATED_IN) && !remote.contains(&ISOLATED_OUT));
        // Its own group and the group of every workload; nothing else.
        assert_eq!(local.len(), 4, "{local:?}");
        let unselected = p.sets_of(&workload("other"), true);
        assert_eq!(
            unselected.len(),
            1,
            "only the everyone group: {unselected:?}"
        );
    }

    /// `p` as version 1 wrote it: every set by its selectors, the groups' repeated.
    fn as_version_1(p: &Program) -> Program {
        let mut v1 = p.clone();
        v1.version = 1;
        for s in &mut v1.sets {
            let groups = std::mem::take(&mut s.within);
            let sel =
                |name: &String| (p.sets.iter().find(|d| d.name == *name).unwrap()).any[0].clone();
            s.any.extend(groups.iter().map(sel));
        }
        v1
    }

    #[test]
    fn the_file_names_each_selector_once() {
        let p = compiled(100);
        let text = serde_json::to_string(&p).unwrap();
        for i in [0, 42, 99] {
            let sel = format!(r#"{{"app":"a{i}"}}"#);
            assert_eq!(text.matches(&sel).count(), 1, "a{i} in {text}");
        }
        let v1 = serde_json::to_string(&as_version_1(&p)).unwrap();
        assert!(
            text.len() * 3 < v1.len() * 2,
            "{} against {} bytes",
            text.len(),
            v1.len()
        );
    }

    #[test]
    fn a_version_1_file_with_the_selectors_repeated_still_admits_the_same_sets() {
        let p = compiled(5);
        let v1 = serde_json::to_string(&as_version_1(&p)).unwrap();
        let read: Program = serde_json::from_str(&v1).unwrap();
        assert!(read.sets.iter().all(|s| s.within.is_empty()));
        for app in ["a0", "a3", "other"] {
            for local in [true, false] {
                let w = workload(app);
                assert_eq!(
                    read.sets_of(&w, local),
                    p.sets_of(&w, local),
                    "{app} {local}"
                );
            }
        }
    }
}
