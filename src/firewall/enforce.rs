//! weftd's side of network policy: keeps the policy tables equal to the policies, the
//! namespaces and every workload known (this host's from the plugin's records, the others'
//! from etcd). A structural change (a policy added, changed or removed) rewrites a family's
//! table in one transaction, so no moment is without rules; a workload coming or going only
//! adds or deletes set elements. Every pass reads the tables back, so a flush or a hand edit
//! is repaired. Runs on a thread of its own, apart from the lease datapath: the tables are
//! disjoint from everything else weft writes, and a pass over thousands of set elements
//! never delays a route.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::NfListObject;
use nftables::stmt::{Counter, Statement};

use super::nft::{self, Listing};
use super::policy::local::{element, LocalError, Shared};
use super::policy::rules::{self, TABLE};
use super::policy::selector::Labels;
use super::policy::{Policy, Program, Workload};
use super::{tables, FirewallError};
use crate::subnet::{Family, PerFamily};

/// What the policy tables are computed from, besides this host's own workloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Sorted by id.
    pub policies: Vec<Policy>,
    pub namespaces: BTreeMap<String, Labels>,
    /// Other hosts' workloads, from etcd.
    pub remote: Vec<Workload>,
}

/// What one pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// This host's workloads, as the plugin recorded them.
    pub local: Vec<Workload>,
    /// Records that could not be read: (file, why).
    pub unreadable: Vec<(String, String)>,
    /// Tables rewritten (structure changed, absent, or edited by someone).
    pub rewritten: Vec<Family>,
    /// Set elements added or deleted.
    pub elements: usize,
    /// Packets refused at workloads each policy selects, by policy id, since its table was
    /// last written.
    pub drops: BTreeMap<String, u64>,
    pub took: Duration,
    /// Why traffic between containers of one bridge may go unfiltered, if it may.
    pub bridge_netfilter: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// A table's structure as wanted and as nft listed it right after weft wrote it.
type Written = (Vec<NfListObject<'static>>, Vec<NfListObject<'static>>);

pub struct Enforcer {
    shared: Shared,
    written: PerFamily<Option<Written>>,
}

/// A family's table as read back: its structure (normalized, without elements or counter
/// values), each set's elements, and the counters by policy.
struct Read {
    structure: Vec<NfListObject<'static>>,
    elements: BTreeMap<String, BTreeSet<IpAddr>>,
    drops: BTreeMap<String, u64>,
}

impl Enforcer {
    pub fn new(subnet_file: &std::path::Path) -> Enforcer {
        Enforcer {
            shared: Shared::beside(subnet_file),
            written: PerFamily::default(),
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// One pass, under the lock shared with the plugin.
    pub fn ensure(&mut self, inputs: &Inputs) -> Result<Outcome, EnforceError> {
        let started = Instant::now();
        let lock = self.shared.lock()?;
        let mut out = Outcome::default();
        for (file, read) in lock.workloads() {
            match read {
                Ok(w) => out.local.push(w),
                Err(why) => out.unreadable.push((file, why)),
            }
        }
        let program = Program::compile(&inputs.policies, &inputs.namespaces);
        if !program.is_empty() {
            out.bridge_netfilter = bridge_netfilter();
        }
        let present = nft::families_with(TABLE)?;
        let mut batch = Batch::new();
        let mut wrote = Vec::new();
        for f in Family::ALL {
            let want = rules::structure(&inputs.policies, &program, f);
            let have = match present.contains(&f) {
                true => Some(read(f)?),
                false => None,
            };
            let members = program.members(&out.local, &inputs.remote, f == Family::V6);
            if let Some(h) = &have {
                for (id, n) in &h.drops {
                    *out.drops.entry(id.clone()).or_default() += n;
                }
            }
            match (want, have) {
                (None, None) => {}
                (None, Some(_)) => {
                    batch.delete(NfListObject::Table(rules::table_object(f)));
                    self.written[f] = None;
                    out.rewritten.push(f);
                }
                (Some(want), have) => {
                    let want_norm = normalize(&want);
                    match have.filter(|h| self.is_current(f, &want_norm, &h.structure)) {
                        Some(h) => out.elements += element_diff(&mut batch, &members, &h.elements),
                        None => {
                            rewrite(&mut batch, f, want, &members);
                            wrote.push((f, want_norm));
                            out.rewritten.push(f);
                        }
                    }
                }
            }
        }
        if !out.rewritten.is_empty() || out.elements > 0 {
            nft::apply(batch)?;
        }
        for (f, want) in wrote {
            let listed = read(f).map(|r| r.structure).unwrap_or_default();
            self.written[f] = Some((want, listed));
        }
        lock.write_program(&program)?;
        drop(lock);
        out.took = started.elapsed();
        Ok(out)
    }

    /// Whether a listed structure is the wanted one, or what nft listed after weft wrote it.
    fn is_current(
        &self,
        f: Family,
        want: &[NfListObject<'static>],
        listed: &[NfListObject<'static>],
    ) -> bool {
        listed == want
            || self.written[f]
                .as_ref()
                .is_some_and(|(w, l)| w.as_slice() == want && l.as_slice() == listed)
    }
}

/// Bridged traffic (containers of one bridge) reaches the forward hook only through
/// br_netfilter; its switches are set on, per network namespace.
fn bridge_netfilter() -> Option<String> {
    let mut problems = Vec::new();
    for name in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = format!("/proc/sys/net/bridge/{name}");
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => {
                if let Err(e) = std::fs::write(&path, "1") {
                    problems.push(format!("cannot set {path}: {e}"));
                }
            }
            Err(e) => problems.push(format!(
                "{path}: {e} (load br_netfilter: containers of one bridge are not filtered)"
            )),
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn read(f: Family) -> Result<Read, FirewallError> {
    let objects = match nft::list_table(f, TABLE)? {
        Listing::Objects(o) => o,
        // Not something weft wrote: rewritten, as any other difference.
        Listing::Unreadable(_) => Vec::new(),
    };
    let mut elements = BTreeMap::new();
    let mut drops = BTreeMap::new();
    for o in &objects {
        match o {
            NfListObject::Set(s) => {
                let addrs = (s.elem.iter().flat_map(|e| e.iter()))
                    .filter_map(|e| match e {
                        Expression::String(a) => a.parse().ok(),
                        _ => None,
                    })
                    .collect();
                elements.insert(s.name.to_string(), addrs);
            }
            NfListObject::Rule(r) => {
                for st in r.expr.iter() {
                    if let (Statement::Counter(Counter::Anonymous(Some(c))), Some(id)) =
                        (st, &r.comment)
                    {
                        *drops.entry(id.to_string()).or_default() += c.packets.unwrap_or(0) as u64;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Read {
        structure: normalize(&objects),
        elements,
        drops,
    })
}

/// [`tables::normalize`], with set elements and counter values left out: both change
/// without the structure changing.
fn normalize(objects: &[NfListObject<'static>]) -> Vec<NfListObject<'static>> {
    let mut out = tables::normalize(objects);
    for o in &mut out {
        match o {
            NfListObject::Set(s) => {
                s.handle = None;
                s.elem = None;
            }
            NfListObject::Rule(r) => {
                let expr: Vec<Statement<'static>> = (r.expr.iter().cloned())
                    .map(|st| match st {
                        Statement::Counter(Counter::Anonymous(_)) => {
                            Statement::Counter(Counter::Anonymous(None))
                        }
                        other => other,
                    })
                    .collect();
                r.expr = expr.into();
            }
            _ => {}
        }
    }
    out
}

/// The table replaced whole in the batch: declared, deleted, declared again with every
/// object and element.
fn rewrite(
    batch: &mut Batch<'static>,
    f: Family,
    want: Vec<NfListObject<'static>>,
    members: &BTreeMap<String, BTreeSet<IpAddr>>,
) {
    let table = || NfListObject::Table(rules::table_object(f));
    batch.add(table());
    batch.delete(table());
    want.into_iter().for_each(|o| batch.add(o));
    for (set, addrs) in members {
        for a in addrs {
            batch.add(element(*a, set));
        }
    }
}

/// Adds what a set lacks and deletes what it should not hold; the number of changes.
fn element_diff(
    batch: &mut Batch<'static>,
    want: &BTreeMap<String, BTreeSet<IpAddr>>,
    have: &BTreeMap<String, BTreeSet<IpAddr>>,
) -> usize {
    let empty = BTreeSet::new();
    let mut n = 0;
    for (set, addrs) in want {
        let there = have.get(set).unwrap_or(&empty);
        for a in addrs.difference(there) {
            batch.add(element(*a, set));
            n += 1;
        }
        for a in there.difference(addrs) {
            batch.delete(element(*a, set));
            n += 1;
        }
    }
    n
}

/// Commands to the enforcer's thread.
pub enum Cmd {
    Inputs(Arc<Inputs>),
    /// Someone edited something: a full pass now.
    Kick,
}

/// Handle to the enforcer's thread.
#[derive(Clone)]
pub struct EnforcerHandle {
    tx: mpsc::Sender<Cmd>,
}

impl EnforcerHandle {
    pub fn update(&self, inputs: Arc<Inputs>) {
        let _ = self.tx.send(Cmd::Inputs(inputs));
    }
    pub fn kick(&self) {
        let _ = self.tx.send(Cmd::Kick);
    }
}

/// How often the thread looks at the records directory: the plugin's ADD changes its
/// modification time. A stat every 100 ms costs nothing and needs no inotify machinery; it
/// bounds how late other hosts hear of a new workload.
const POLL: Duration = Duration::from_millis(100);

/// Starts the enforcer's thread. It does nothing until the first inputs arrive (a table
/// written without the policies from etcd would be wrong), then passes on every change of
/// the inputs or of the records directory, and every `resync` to repair drift. Each
/// outcome goes to `report`.
pub fn spawn(
    mut enforcer: Enforcer,
    resync: Duration,
    report: impl Fn(Result<&Outcome, &EnforceError>) + Send + 'static,
) -> std::io::Result<EnforcerHandle> {
    let (tx, rx) = mpsc::channel();
    let dir = enforcer.shared().workloads_dir();
    std::thread::Builder::new()
        .name("policy".into())
        .spawn(move || {
            let mut inputs: Option<Arc<Inputs>> = None;
            let mut seen = dir_stamp(&dir);
            let mut next_full = Instant::now();
            loop {
                let mut due = match rx.recv_timeout(POLL) {
                    Ok(cmd) => absorb(cmd, &mut inputs),
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                while let Ok(cmd) = rx.try_recv() {
                    due |= absorb(cmd, &mut inputs);
                }
                let stamp = dir_stamp(&dir);
                due |= stamp != seen;
                due |= Instant::now() >= next_full;
                let Some(current) = inputs.as_ref().filter(|_| due) else {
                    continue;
                };
                seen = stamp;
                let result = enforcer.ensure(current);
                let retry = if result.is_ok() {
                    resync
                } else {
                    Duration::from_secs(1)
                };
                next_full = Instant::now() + retry;
                report(result.as_ref());
            }
        })?;
    Ok(EnforcerHandle { tx })
}

fn absorb(cmd: Cmd, inputs: &mut Option<Arc<Inputs>>) -> bool {
    match cmd {
        Cmd::Inputs(new) => {
            let changed = inputs.as_ref().is_none_or(|old| **old != *new);
            *inputs = Some(new);
            changed
        }
        Cmd::Kick => true,
    }
}

fn dir_stamp(dir: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}
