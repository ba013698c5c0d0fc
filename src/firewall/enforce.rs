//! weftd's side of network policy: keeps the policy tables equal to the policies, the
//! namespaces and every workload known (this host's from the plugin's records, the others'
//! from etcd). Each pass computes the wanted tables ([`rules::desired`]) and applies their
//! difference ([`table::diff`]) in one transaction: a workload coming or going is a few set
//! elements, a policy changing its rules is its own chain flushed and written again.
//!
//! What a pass compares with is the table as this enforcer last wrote it; nft is asked for
//! the real one only on a full pass (the resync timer, a kick, after a failure, at start),
//! which repairs any drift (a flush, a hand edit) and reads the drop counters. `weftctl
//! check` runs the same comparison against the real tables ([`check`]). Runs on a thread
//! of its own, apart from the lease datapath: the tables are disjoint from everything else
//! weft writes, and a pass over thousands of set elements never delays a route.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use nftables::batch::Batch;

use super::nft::{self, Listing};
use super::policy::local::{LocalError, Locked, Members, Shared};
use super::policy::rules::{self, TABLE};
use super::policy::selector::Labels;
use super::policy::table::{self, Changes, Have, TableState};
use super::policy::workload::in_subnets;
use super::policy::{Policy, Program, Workload};
use super::FirewallError;
use crate::subnet::{Family, PerFamily};

/// What the policy tables are computed from, besides this host's own workloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Sorted by id.
    pub policies: Vec<Policy>,
    pub namespaces: BTreeMap<String, Labels>,
    /// Other hosts' workloads, from etcd.
    pub remote: Vec<Workload>,
    /// This host's subnets: the plugin only ever admits or evicts addresses inside them (or
    /// a recorded local workload's), so the membership file holds no other.
    pub subnets: Vec<IpNet>,
}

/// What one pass found and did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// This host's workloads, as the plugin recorded them.
    pub local: Vec<Workload>,
    /// Records that could not be read: (file, why).
    pub unreadable: Vec<(String, String)>,
    /// The policies enforced.
    pub policies: usize,
    /// The pass read the tables back (and mended what differed).
    pub full: bool,
    /// What differed and was mended, family by family (`weftctl check`'s words).
    pub mended: Vec<String>,
    /// Chains, sets or counters written, or whole tables (not counting set elements).
    pub structure: usize,
    /// Set elements added or deleted.
    pub elements: usize,
    /// Packets refused at workloads each policy selects, by policy id, as of the last full
    /// pass (nftables counters, since the policy's counter was made).
    pub drops: BTreeMap<String, u64>,
    pub took: Duration,
    /// Why traffic between containers of one bridge may go unfiltered, if it may.
    pub bridge_netfilter: Option<String>,
}

impl Outcome {
    /// Whether the pass changed the kernel.
    pub fn changed(&self) -> bool {
        self.structure > 0 || self.elements > 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// What the enforcer knows of a family's table.
#[derive(Debug, Clone)]
enum Known {
    /// Nothing certain: read it back.
    Unknown,
    /// As it last wrote or read it (None: no table).
    As(Option<TableState>),
}

pub struct Enforcer {
    shared: Shared,
    known: PerFamily<Known>,
    /// The program file as last written.
    program: Option<Program>,
    drops: BTreeMap<String, u64>,
}

/// One family: the table wanted and the one there.
struct Family1 {
    f: Family,
    want: Option<TableState>,
    changes: Changes,
}

impl Enforcer {
    pub fn new(subnet_file: &std::path::Path) -> Enforcer {
        Enforcer {
            shared: Shared::beside(subnet_file),
            known: PerFamily {
                v4: Known::Unknown,
                v6: Known::Unknown,
            },
            program: None,
            drops: BTreeMap::new(),
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// One pass, under the lock shared with the plugin; `full` reads the tables back.
    pub fn ensure(&mut self, inputs: &Inputs, full: bool) -> Result<Outcome, EnforceError> {
        let started = Instant::now();
        let shared = self.shared.clone();
        let lock = shared.lock()?;
        let mut out = Outcome {
            policies: inputs.policies.len(),
            ..Outcome::default()
        };
        read_records(&lock, &mut out);
        let program = Program::compile(&inputs.policies, &inputs.namespaces);
        out.bridge_netfilter = bridge_netfilter(&self.shared, !program.is_empty());
        let full = full
            || Family::ALL
                .iter()
                .any(|f| matches!(self.known[*f], Known::Unknown));
        out.full = full;
        let present = match full {
            true => Some(nft::families_with(TABLE)?),
            false => None,
        };
        let mut batch = Batch::new();
        let mut families = Vec::new();
        let mut drops = BTreeMap::new();
        for f in Family::ALL {
            let have = match (&present, &self.known[f]) {
                (Some(p), _) => read_back(f, p.contains(&f), &inputs.policies, &mut drops)?,
                (None, Known::As(t)) => t.clone().map(Ok),
                (None, Known::Unknown) => unreachable!("a pass without a known table is full"),
            };
            let fam = wanted(inputs, &program, &out.local, f, &have);
            fam.changes.write(&mut batch, f, fam.want.as_ref());
            families.push(fam);
        }
        if full {
            self.drops = drops;
        }
        out.drops = self.drops.clone();
        self.apply(&lock, batch, families, &mut out)?;
        self.write_members(&lock, &inputs.subnets, &out.local)?;
        if full || self.program.as_ref() != Some(&program) {
            lock.write_program(&program)?;
            self.program = Some(program);
        }
        drop(lock);
        out.took = started.elapsed();
        Ok(out)
    }

    /// Applies the families' changes in one transaction and takes what was wanted as what
    /// is there; on failure nothing is known any more (the next pass reads back).
    fn apply(
        &mut self,
        lock: &Locked<'_>,
        batch: Batch<'static>,
        families: Vec<Family1>,
        out: &mut Outcome,
    ) -> Result<(), EnforceError> {
        if families.iter().any(|x| !x.changes.is_empty()) {
            // Until the sets are known again, the plugin must not trust the old membership.
            lock.forget_members()?;
            if let Err(e) = nft::apply(batch) {
                self.known = PerFamily {
                    v4: Known::Unknown,
                    v6: Known::Unknown,
                };
                return Err(e.into());
            }
        }
        for x in families {
            let c = &x.changes;
            out.elements += c.elements.add.len() + c.elements.delete.len();
            if !c.elements_only() {
                out.structure += usize::from(c.rewrite.is_some() || c.remove)
                    + c.sets.add.len()
                    + c.sets.delete.len()
                    + c.chains.add.len()
                    + c.chains.delete.len()
                    + c.rules.len();
            }
            if out.full {
                out.mended.extend(c.describe(x.f, x.want.as_ref()));
            }
            self.known[x.f] = Known::As(x.want);
        }
        Ok(())
    }
}

impl Enforcer {
    /// The sets as this pass left them, by address, for the plugin's ADD and DEL: only the
    /// addresses it may ask about (in `subnets` or held by a `local` workload), so that an
    /// ADD reads and writes a file the size of this host's workloads, not the fleet's.
    fn write_members(
        &self,
        lock: &Locked<'_>,
        subnets: &[IpNet],
        local: &[Workload],
    ) -> Result<(), LocalError> {
        let tables = Family::ALL.iter().filter_map(|f| match &self.known[*f] {
            Known::As(t) => t.as_ref(),
            Known::Unknown => None,
        });
        let mut members = Members::of(tables);
        members
            .0
            .retain(|a, _| in_subnets(subnets, a) || local.iter().any(|w| w.addresses.contains(a)));
        lock.write_members(&members)
    }
}

fn read_records(lock: &Locked<'_>, out: &mut Outcome) {
    for (file, read) in lock.workloads() {
        match read {
            Ok(w) => out.local.push(w),
            Err(why) => out.unreadable.push((file, why)),
        }
    }
}

/// The table wanted in family `f` and what changes the one there (`have`) into it.
fn wanted(
    inputs: &Inputs,
    program: &Program,
    local: &[Workload],
    f: Family,
    have: &Have,
) -> Family1 {
    let members = program.members(local, &inputs.remote, f == Family::V6);
    let want = rules::desired(&inputs.policies, program, &members, f);
    let changes = table::diff(want.as_ref(), have);
    Family1 { f, want, changes }
}

/// Family `f`'s table as nft lists it (`present`: it exists), adding its counters to
/// `drops` by policy id.
fn read_back(
    f: Family,
    present: bool,
    policies: &[Policy],
    drops: &mut BTreeMap<String, u64>,
) -> Result<Have, FirewallError> {
    if !present {
        return Ok(None);
    }
    let (listing, counts) = nft::list_table_counted(f, TABLE)?;
    for p in policies {
        if let Some(n) = counts.get(&rules::counter_name(p)) {
            *drops.entry(p.id()).or_default() += n;
        }
    }
    Ok(Some(match listing {
        Listing::Objects(o) => TableState::from_listing(&o, f),
        Listing::Unreadable(why) => Err(format!("its listing does not read: {why}")),
    }))
}

/// `weftctl check`: this host's policy tables read back and compared with what `inputs`
/// and this host's workload records call for, through the enforcer's own path; one line
/// per difference (none when all is as weftd wants it).
pub fn check(shared: &Shared, inputs: &Inputs) -> Result<Vec<String>, EnforceError> {
    let lock = shared.lock()?;
    let mut out = Outcome::default();
    read_records(&lock, &mut out);
    let mut lines: Vec<String> = (out.unreadable.iter())
        .map(|(file, why)| format!("workload record {file} is unreadable: {why}"))
        .collect();
    let program = Program::compile(&inputs.policies, &inputs.namespaces);
    let present = nft::families_with(TABLE)?;
    for f in Family::ALL {
        let have = read_back(f, present.contains(&f), &[], &mut BTreeMap::new())?;
        let fam = wanted(inputs, &program, &out.local, f, &have);
        lines.extend(fam.changes.describe(f, fam.want.as_ref()));
    }
    let written = lock.program().unwrap_or(None);
    if written.as_ref() != Some(&program) && !(written.is_none() && program.is_empty()) {
        lines.push(format!(
            "{} is not the program of the policies in etcd (the plugin admits new containers by it)",
            shared.program_path().display()
        ));
    }
    Ok(lines)
}

/// Bridged traffic (containers of one bridge) reaches the forward hook only through
/// br_netfilter; its switches (per network namespace) are turned on while some policy
/// exists, and those weft turned on are turned off again when the last policy goes. Which
/// weft turned on is kept in a file beside subnet.env, so a restarted weftd knows.
fn bridge_netfilter(shared: &Shared, on: bool) -> Option<String> {
    let record = shared.bridge_record();
    let mut ours: Vec<String> = (std::fs::read_to_string(&record).unwrap_or_default().lines())
        .map(str::to_string)
        .collect();
    let before = ours.len();
    let mut problems = Vec::new();
    for name in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = format!("/proc/sys/net/bridge/{name}");
        let value = std::fs::read_to_string(&path).map(|v| v.trim() == "1");
        let set = |v: &str| std::fs::write(&path, v).map_err(|e| format!("cannot set {path}: {e}"));
        let r = match (on, value, ours.iter().any(|n| n == name)) {
            (true, Ok(false), _) => set("1").map(|()| ours.push(name.to_string())),
            (false, Ok(true), true) => set("0"),
            (true, Err(e), _) => Err(format!(
                "{path}: {e} (load br_netfilter: containers of one bridge are not filtered)"
            )),
            _ => Ok(()),
        };
        if let Err(p) = r {
            problems.push(p);
        }
    }
    let kept = match (on, before) {
        (true, n) if n != ours.len() => std::fs::write(&record, ours.join("\n")),
        (false, 1..) => std::fs::remove_file(&record),
        _ => Ok(()),
    };
    if let Err(e) = kept {
        problems.push(format!("{}: {e}", record.display()));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// What waits for the enforcer's thread: only the newest inputs (a burst of etcd events
/// is one pass over the last of them, and no queue of full copies piles up while a pass
/// runs), and whether someone asked for a full pass.
#[derive(Default)]
struct Pending {
    inputs: Option<Arc<Inputs>>,
    kick: bool,
}

#[derive(Default)]
struct Slot {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Slot {
    fn put(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        self.wake.notify_one();
    }

    /// What is pending, waiting up to `wait` for something.
    fn take(&self, wait: Duration) -> Pending {
        let guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut guard, _) = self
            .wake
            .wait_timeout_while(guard, wait, |p| p.inputs.is_none() && !p.kick)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *guard)
    }
}

/// Handle to the enforcer's thread; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct EnforcerHandle {
    slot: Arc<Slot>,
}

impl EnforcerHandle {
    pub fn update(&self, inputs: Arc<Inputs>) {
        self.slot.put(|p| p.inputs = Some(inputs));
    }
    /// Someone edited something: a full pass now.
    pub fn kick(&self) {
        self.slot.put(|p| p.kick = true);
    }
}

/// How often the thread looks at the records directory: the plugin's ADD changes its
/// modification time. A stat every 100 ms costs nothing and needs no inotify machinery; it
/// bounds how late other hosts hear of a new workload.
const POLL: Duration = Duration::from_millis(100);

/// Starts the enforcer's thread. It does nothing until the first inputs arrive (a table
/// written without the policies from etcd would be wrong), then passes on every change of
/// the inputs or of the records directory, reading the tables back every `resync` (and
/// after a failure, a second later) to repair drift. Each outcome goes to `report`.
pub fn spawn(
    mut enforcer: Enforcer,
    resync: Duration,
    report: impl Fn(Result<&Outcome, &EnforceError>) + Send + 'static,
) -> std::io::Result<EnforcerHandle> {
    let slot = Arc::new(Slot::default());
    let ours = slot.clone();
    let dir = enforcer.shared().workloads_dir();
    std::thread::Builder::new()
        .name("policy".into())
        .spawn(move || {
            let mut inputs: Option<Arc<Inputs>> = None;
            let mut seen = dir_stamp(&dir);
            let mut next_full = Instant::now();
            loop {
                let got = ours.take(POLL);
                if Arc::strong_count(&ours) == 1 {
                    return;
                }
                let mut due = absorb(got, &mut inputs, &mut next_full);
                let stamp = dir_stamp(&dir);
                due |= stamp != seen;
                let full = Instant::now() >= next_full;
                let Some(current) = inputs.as_ref().filter(|_| due || full) else {
                    continue;
                };
                seen = stamp;
                let result = enforcer.ensure(current, full);
                if full || result.is_err() {
                    let retry = if result.is_ok() {
                        resync
                    } else {
                        Duration::from_secs(1)
                    };
                    next_full = Instant::now() + retry;
                }
                report(result.as_ref());
                // A pass's listing and tables are freed now; give their pages back.
                crate::datapath::release_free_memory();
            }
        })?;
    Ok(EnforcerHandle { slot })
}

/// Takes what was pending: whether a pass is due.
fn absorb(got: Pending, inputs: &mut Option<Arc<Inputs>>, next_full: &mut Instant) -> bool {
    let mut due = false;
    if let Some(new) = got.inputs {
        due = inputs.as_ref().is_none_or(|old| **old != *new);
        *inputs = Some(new);
    }
    if got.kick {
        *next_full = Instant::now();
        due = true;
    }
    due
}

fn dir_stamp(dir: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}
