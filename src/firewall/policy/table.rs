//! One family's policy table in one shape, whether weft wants it ([`super::rules::desired`])
//! or nft listed it ([`TableState::from_listing`]), and the difference between the two as
//! [`Changes`]: the nft commands that turn one into the other, and the lines `weftctl check`
//! prints. weftd's passes and `weftctl check` go through this one path.
//!
//! A difference is mended piece by piece where that is safe: a set's elements, a chain's
//! rules (flushed and written again), chains, sets and counters added or deleted, all in
//! one transaction. What weft cannot mend so (a listing that does not parse, an object kind
//! weft never writes, a set or base chain declared otherwise) makes the table written whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{Element, FlushObject, NfCmd, NfListObject, Rule};

use super::rules::{chain, counter_object, set_object, table_object, TABLE};
pub use super::state::{ChainState, Counts, RuleState, TableState};
use crate::firewall::tables::nf_family;
use crate::subnet::Family;

impl TableState {
    /// The table as nft listed it (`nft -j list table`), or why weft cannot take it piece
    /// by piece.
    pub fn from_listing(objects: &[NfListObject<'static>], f: Family) -> Result<Self, String> {
        let mut t = TableState::default();
        for o in objects {
            match o {
                NfListObject::Table(_) | NfListObject::MetainfoObject(_) => {}
                NfListObject::Set(s) => {
                    let mut def = (**s).clone();
                    def.handle = None;
                    let elems = def.elem.take();
                    if def != set_object(f, &s.name) {
                        return Err(format!(
                            "set {} is not declared as weft declares it",
                            s.name
                        ));
                    }
                    let mut addrs = BTreeSet::new();
                    for e in elems.iter().flat_map(|e| e.iter()) {
                        match e {
                            Expression::String(a) if a.parse::<IpAddr>().is_ok() => {
                                addrs.insert(a.parse().expect("checked"));
                            }
                            other => return Err(format!("set {} holds {other:?}", s.name)),
                        }
                    }
                    t.sets.insert(s.name.to_string(), addrs);
                }
                NfListObject::Counter(c) => {
                    t.counters.insert(c.name.to_string());
                }
                NfListObject::Chain(c) => {
                    let mut def = c.clone();
                    def.handle = None;
                    let rules = Vec::new();
                    t.chains
                        .insert(c.name.to_string(), ChainState { def, rules });
                }
                NfListObject::Rule(r) => {
                    let Some(c) = t.chains.get_mut(r.chain.as_ref()) else {
                        return Err(format!("a rule of chain {} before the chain", r.chain));
                    };
                    c.rules.push(RuleState {
                        expr: r.expr.to_vec(),
                        comment: r.comment.as_ref().map(|c| c.to_string()),
                    });
                }
                other => return Err(format!("it holds an object weft never writes: {other:?}")),
            }
        }
        Ok(t)
    }
}

/// The table as read back: absent, or present (piece by piece, or not readable so).
pub type Have = Option<Result<TableState, String>>;

/// What turns the table there into the one wanted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// The table must be written whole: why.
    pub rewrite: Option<String>,
    /// There is a table and no policy.
    pub remove: bool,
    pub sets: Delta<String>,
    pub counters: Delta<String>,
    pub chains: Delta<String>,
    /// Chains whose rules are written anew (flushed first when the chain is there).
    pub rules: Vec<String>,
    pub elements: Delta<(String, IpAddr)>,
}

/// What is added and what is deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta<T> {
    pub add: Vec<T>,
    pub delete: Vec<T>,
}

impl<T> Default for Delta<T> {
    fn default() -> Self {
        Delta {
            add: Vec::new(),
            delete: Vec::new(),
        }
    }
}

impl<T> Delta<T> {
    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }
}

fn keys_delta<V, W>(want: &BTreeMap<String, V>, have: &BTreeMap<String, W>) -> Delta<String> {
    Delta {
        add: (want.keys())
            .filter(|k| !have.contains_key(*k))
            .cloned()
            .collect(),
        delete: (have.keys())
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect(),
    }
}

/// The difference between the table wanted (`None`: no policy, no table) and the one there.
pub fn diff(want: Option<&TableState>, have: &Have) -> Changes {
    let mut c = Changes::default();
    let (want, have) = match (want, have) {
        (None, None) => return c,
        (None, Some(_)) => {
            c.remove = true;
            return c;
        }
        (Some(_), None) => {
            c.rewrite = Some("the table is missing".into());
            return c;
        }
        (Some(_), Some(Err(why))) => {
            c.rewrite = Some(why.clone());
            return c;
        }
        (Some(w), Some(Ok(h))) => (w, h),
    };
    for (name, w) in &want.chains {
        if let Some(h) = have.chains.get(name) {
            if h.def != w.def {
                c.rewrite = Some(format!("chain {name} is declared otherwise"));
                return c;
            }
        }
    }
    c.sets = keys_delta(&want.sets, &have.sets);
    c.chains = keys_delta(&want.chains, &have.chains);
    let counters = |t: &TableState| t.counters.iter().map(|n| (n.clone(), ())).collect();
    let (wc, hc): (BTreeMap<String, ()>, BTreeMap<String, ()>) = (counters(want), counters(have));
    c.counters = keys_delta(&wc, &hc);
    for (name, w) in &want.chains {
        let there = have.chains.get(name).map(|h| &h.rules);
        if there.map_or(!w.rules.is_empty(), |r| *r != w.rules) {
            c.rules.push(name.clone());
        }
    }
    let empty = BTreeSet::new();
    for (set, addrs) in &want.sets {
        let there = have.sets.get(set).unwrap_or(&empty);
        let pair = |a: &IpAddr| (set.clone(), *a);
        c.elements.add.extend(addrs.difference(there).map(pair));
        c.elements.delete.extend(there.difference(addrs).map(pair));
    }
    c
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.rewrite.is_none()
            && !self.remove
            && self.sets.is_empty()
            && self.counters.is_empty()
            && self.chains.is_empty()
            && self.rules.is_empty()
            && self.elements.is_empty()
    }

    /// Whether only set elements change.
    pub fn elements_only(&self) -> bool {
        Changes {
            elements: Delta::default(),
            ..self.clone()
        }
        .is_empty()
    }

    /// The commands, appended to `batch`, that make family `f`'s table `want`.
    pub fn write(&self, batch: &mut Batch<'static>, f: Family, want: Option<&TableState>) {
        let table = || NfListObject::Table(table_object(f));
        if self.remove || self.rewrite.is_some() {
            // Declared first, so the delete never fails on a table that is not there.
            batch.add(table());
            batch.delete(table());
        }
        let Some(want) = want.filter(|_| !self.remove) else {
            return;
        };
        if self.rewrite.is_some() {
            let all = diff(Some(want), &Some(Ok(TableState::default())));
            return all.write_pieces(batch, f, want);
        }
        self.write_pieces(batch, f, want);
    }

    /// In an order nft accepts in one transaction: what is referenced is declared before
    /// the rules that name it, and deleted after the rules that named it are gone.
    fn write_pieces(&self, batch: &mut Batch<'static>, f: Family, want: &TableState) {
        batch.add(NfListObject::Table(table_object(f)));
        for s in &self.sets.add {
            batch.add(NfListObject::Set(Box::new(set_object(f, s))));
        }
        for n in &self.counters.add {
            batch.add(NfListObject::Counter(counter_object(f, n)));
        }
        for n in &self.chains.add {
            batch.add(NfListObject::Chain(want.chains[n].def.clone()));
        }
        for n in &self.rules {
            let c = &want.chains[n];
            if !self.chains.add.contains(n) {
                batch.add_cmd(NfCmd::Flush(FlushObject::Chain(c.def.clone())));
            }
            for r in &c.rules {
                batch.add(NfListObject::Rule(rule_object(f, n, r)));
            }
        }
        for n in &self.chains.delete {
            let c = chain(f, n.clone(), false);
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(c.clone())));
            batch.delete(NfListObject::Chain(c));
        }
        for n in &self.counters.delete {
            batch.delete(NfListObject::Counter(counter_object(f, n)));
        }
        for s in &self.sets.delete {
            batch.delete(NfListObject::Set(Box::new(set_object(f, s))));
        }
        for (set, addrs) in group(&self.elements.add) {
            batch.add(elements(f, set, addrs));
        }
        let deleted: BTreeSet<&String> = self.sets.delete.iter().collect();
        for (set, addrs) in group(&self.elements.delete) {
            if deleted.contains(&set) {
                continue;
            }
            // Added first, so deleting one the plugin already took out never fails.
            batch.add(elements(f, set, addrs.clone()));
            batch.delete(elements(f, set, addrs));
        }
    }

    /// One line for each thing that is not as it should be, for `weftctl check`; element
    /// lines of one set are cut after a few.
    pub fn describe(&self, f: Family, want: Option<&TableState>) -> Vec<String> {
        let family = match f {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        let t = format!("{family} {TABLE}");
        let mut out = Vec::new();
        if self.remove {
            out.push(format!("table {t} is there but no policy exists"));
        }
        if let Some(why) = &self.rewrite {
            out.push(format!("table {t}: {why}"));
        }
        let owner = |chain: &str| {
            let rules = want.and_then(|w| w.chains.get(chain)).map(|c| &c.rules);
            let id = rules.and_then(|r| r.iter().find_map(|r| r.comment.clone()));
            id.map_or(String::new(), |id| format!(" (policy {id})"))
        };
        for (what, d) in [
            ("set", &self.sets),
            ("counter", &self.counters),
            ("chain", &self.chains),
        ] {
            out.extend(
                d.add
                    .iter()
                    .map(|n| format!("{t}: {what} {n}{} is missing", owner(n))),
            );
            out.extend(d.delete.iter().map(|n| format!("{t}: stale {what} {n}")));
        }
        for n in self.rules.iter().filter(|n| !self.chains.add.contains(n)) {
            out.push(format!(
                "{t}: chain {n}{} does not hold the rules it should",
                owner(n)
            ));
        }
        for (verb, d) in [
            ("lacks", &self.elements.add),
            ("holds stale", &self.elements.delete),
        ] {
            for (set, addrs) in group(d) {
                let shown: Vec<String> = addrs.iter().take(5).map(|a| a.to_string()).collect();
                let more = match addrs.len() {
                    n if n > 5 => format!(" and {} more", n - 5),
                    _ => String::new(),
                };
                out.push(format!("{t}: set {set} {verb} {}{more}", shown.join(", ")));
            }
        }
        out
    }
}

fn group(pairs: &[(String, IpAddr)]) -> BTreeMap<&String, Vec<IpAddr>> {
    let mut out: BTreeMap<&String, Vec<IpAddr>> = BTreeMap::new();
    for (s, a) in pairs {
        out.entry(s).or_default().push(*a);
    }
    out
}

fn elements(f: Family, set: &str, addrs: Vec<IpAddr>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: nf_family(f),
        table: TABLE.into(),
        name: set.to_string().into(),
        elem: (addrs.iter())
            .map(|a| Expression::String(a.to_string().into()))
            .collect::<Vec<_>>()
            .into(),
    })
}

fn rule_object(f: Family, chain: &str, r: &RuleState) -> Rule<'static> {
    Rule {
        family: nf_family(f),
        table: TABLE.into(),
        chain: chain.to_string().into(),
        expr: r.expr.clone().into(),
        handle: None,
        index: None,
        comment: r.comment.clone().map(Into::into),
    }
}

#[cfg(all(test, feature = "daemon"))]
mod tests {
    use super::*;
    use crate::firewall::policy::{model, rules, Program, Workload};

    fn wanted(extra: &[(&str, &str)]) -> TableState {
        let text = include_str!("../../../tests/data/k8s-network-policies.yaml");
        let mut p: Vec<model::Policy> = (model::documents(text).unwrap().iter())
            .map(|d| model::parse(d, None).unwrap())
            .collect();
        p.sort_by_key(model::Policy::id);
        let program = Program::compile(&p, &BTreeMap::new());
        let labels = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let w = Workload::new(None, "db", labels, vec!["198.19.1.5".parse().unwrap()]);
        let members = program.members(&[w], &[], false);
        rules::desired(&p, &program, &members, Family::V4).unwrap()
    }

    #[test]
    fn equal_tables_differ_in_nothing_and_a_missing_one_is_written_whole() {
        let w = wanted(&[("role", "db")]);
        assert!(diff(Some(&w), &Some(Ok(w.clone()))).is_empty());
        let c = diff(Some(&w), &None);
        assert_eq!(c.rewrite.as_deref(), Some("the table is missing"));
        assert!(diff(None, &Some(Ok(w.clone()))).remove);
        assert!(diff(None, &None).is_empty());
    }

    #[test]
    fn a_workload_changing_labels_changes_elements_only() {
        let (db, other) = (wanted(&[("role", "db")]), wanted(&[("role", "x")]));
        let c = diff(Some(&other), &Some(Ok(db.clone())));
        assert!(c.elements_only() && !c.is_empty(), "{c:?}");
        assert!(c
            .elements
            .delete
            .iter()
            .all(|(_, a)| a.to_string() == "198.19.1.5"));
        let lines = c.describe(Family::V4, Some(&other));
        assert!(
            lines.iter().any(|l| l.contains("holds stale 198.19.1.5")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_chain_edited_by_hand_is_rewritten_alone_and_named_with_its_policy() {
        let w = wanted(&[]);
        let mut h = w.clone();
        let (name, chain) = (w.chains.iter())
            .find(|(n, c)| n.starts_with("in_") && !c.rules.is_empty())
            .unwrap();
        h.chains.get_mut(name).unwrap().rules.pop();
        h.chains.insert("stray".into(), chain.clone());
        let c = diff(Some(&w), &Some(Ok(h)));
        assert_eq!(c.rules, vec![name.clone()]);
        assert_eq!(c.chains.delete, vec!["stray".to_string()]);
        let lines = c.describe(Family::V4, Some(&w));
        assert!(
            lines
                .iter()
                .any(|l| l.contains(name) && l.contains("(policy default/")),
            "{lines:?}"
        );
        let mut batch = Batch::new();
        c.write(&mut batch, Family::V4, Some(&w));
        let json = serde_json::to_string(&batch.to_nftables()).unwrap();
        assert!(json.contains(r#"{"flush":{"chain""#), "{json}");
    }

    #[test]
    fn a_base_chain_declared_otherwise_rewrites_the_table() {
        let w = wanted(&[]);
        let mut h = w.clone();
        h.chains.get_mut("ingress").unwrap().def.prio = Some(0);
        let c = diff(Some(&w), &Some(Ok(h)));
        assert!(c.rewrite.unwrap().contains("ingress"));
    }
}
