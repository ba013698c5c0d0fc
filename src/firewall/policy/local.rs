//! What weftd and its CNI plugin share on one host, in the directory of subnet.env (which
//! both already know, so hosts sharing one filesystem never collide): the compiled
//! [`Program`] (`weft-policy.json`), one record per workload the plugin attached
//! (`weft-workloads/<container>+<ifname>.json`), which sets may hold each address
//! ([`Members`], `weft-policy.members`) and a lock (`weft-policy.lock`).
//!
//! The lock makes the plugin's ADD and weftd's writes of the policy table one order: the
//! plugin writes its record and puts the container's addresses into the sets while holding
//! it; weftd reads the records and writes the table while holding it. So weftd never writes
//! a table that misses a container the plugin already admitted, and the plugin never reads
//! a program that the table does not hold yet.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::program::Program;
use serde::{Deserialize, Serialize};

use super::rules::TABLE;
use super::table::TableState;
use super::workload::Workload;
use crate::netlink::nf_sets::{change_elements, ElementChange};
use crate::netlink::NetlinkError;

const PROGRAM: &str = "weft-policy.json";
const WORKLOADS: &str = "weft-workloads";
const LOCK: &str = "weft-policy.lock";
const MEMBERS: &str = "weft-policy.members";
/// The br_netfilter switches weftd turned on (one name a line), to turn off with the last
/// policy.
const BRIDGE_RECORD: &str = "weft-policy.bridge-nf";
/// A program file larger than this is not weftd's.
const PROGRAM_LIMIT: u64 = 16 << 20;
/// A membership file the plugin has appended this much to is rewritten whole instead (weftd
/// rewrites it at every pass anyway; this bounds it while weftd is down).
const MEMBERS_COMPACT: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a policy program weftd wrote: {why}")]
    Program { path: PathBuf, why: String },
    #[error(
        "cannot put the container into the network policy sets (is weftd's table there?): {0}"
    )]
    Sets(NetlinkError),
}

/// The shared directory of one host.
#[derive(Debug, Clone)]
pub struct Shared {
    dir: PathBuf,
}

impl Shared {
    /// The directory of `subnet_file`.
    pub fn beside(subnet_file: &Path) -> Shared {
        let dir = subnet_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Shared {
            dir: dir.to_path_buf(),
        }
    }

    pub fn program_path(&self) -> PathBuf {
        self.dir.join(PROGRAM)
    }

    pub fn members_path(&self) -> PathBuf {
        self.dir.join(MEMBERS)
    }

    pub fn bridge_record(&self) -> PathBuf {
        self.dir.join(BRIDGE_RECORD)
    }

    pub fn workloads_dir(&self) -> PathBuf {
        self.dir.join(WORKLOADS)
    }

    /// Waits for the lock (weftd holds it for one table write; the plugin for one ADD).
    pub fn lock(&self) -> Result<Locked<'_>, LocalError> {
        let path = self.dir.join(LOCK);
        let io = |error| LocalError::Io {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let file = crate::file::lock_exclusive(&path).map_err(io)?;
        Ok(Locked {
            shared: self,
            _file: file,
        })
    }
}

/// The shared directory with its lock held; dropping it releases the lock.
pub struct Locked<'a> {
    shared: &'a Shared,
    _file: File,
}

impl Locked<'_> {
    fn program_path(&self) -> PathBuf {
        self.shared.program_path()
    }

    /// The program weftd last wrote; `None` before it wrote one.
    pub fn program(&self) -> Result<Option<Program>, LocalError> {
        let path = self.program_path();
        let bytes = match crate::file::read(&path, PROGRAM_LIMIT) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => {
                return Err(LocalError::Program {
                    path,
                    why: e.to_string(),
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LocalError::Program {
                path,
                why: e.to_string(),
            })
    }

    pub fn write_program(&self, p: &Program) -> Result<(), LocalError> {
        let text = serde_json::to_vec(p).expect("a program always encodes");
        write_atomic(&self.program_path(), &text)
    }

    /// Every workload record on this host, by file stem; unreadable ones with the reason.
    pub fn workloads(&self) -> Vec<(String, Result<Workload, String>)> {
        let dir = self.shared.workloads_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let read = crate::file::read(&e.path(), super::workload::MAX_RECORD as u64)
                .map_err(|e| e.to_string())
                .and_then(|b| Workload::decode(&b));
            out.push((stem.to_string(), read));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn put_workload(&self, id: &str, w: &Workload) -> Result<(), LocalError> {
        let dir = self.shared.workloads_dir();
        std::fs::create_dir_all(&dir).map_err(|error| LocalError::Io {
            path: dir.clone(),
            error,
        })?;
        write_atomic(&dir.join(format!("{id}.json")), w.encode().as_bytes())
    }

    /// Removes a record; the workload it held, if it was readable.
    pub fn remove_workload(&self, id: &str) -> Option<Workload> {
        let path = self.shared.workloads_dir().join(format!("{id}.json"));
        let w = crate::file::read(&path, super::workload::MAX_RECORD as u64)
            .ok()
            .and_then(|b| Workload::decode(&b).ok());
        let _ = std::fs::remove_file(&path);
        w
    }

    /// Makes the policy sets hold `w`'s addresses exactly where the program puts a local
    /// workload: added to its sets, and taken out of every other that may still hold them
    /// (an address of a container whose DEL never came). With the membership file those
    /// are the few sets it names; without it, every set. One netlink transaction; nothing
    /// when there is no policy.
    pub fn admit(&self, w: &Workload) -> Result<(), LocalError> {
        let Some(program) = self.program()?.filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        let wanted: BTreeSet<String> = (program.sets_of(w, true).into_iter())
            .map(str::to_string)
            .collect();
        let Some(mut journal) = self.journal() else {
            let mut batch = Vec::new();
            for set in &program.sets {
                for a in &w.addresses {
                    if wanted.contains(&set.name) {
                        batch.push(element(true, *a, &set.name));
                    } else {
                        clear(&mut batch, *a, &set.name);
                    }
                }
            }
            return apply(&batch);
        };
        let (mut batch, mut before, mut after) = (Vec::new(), Members::default(), None);
        for a in &w.addresses {
            let held = journal.members.possible(&program, *a);
            for set in &wanted {
                batch.push(element(true, *a, set));
            }
            for set in held.difference(&wanted) {
                clear(&mut batch, *a, set);
            }
            if !held.is_subset(&wanted) {
                after
                    .get_or_insert_with(Members::default)
                    .0
                    .insert(*a, wanted.clone());
            }
            before.0.insert(*a, held.union(&wanted).cloned().collect());
        }
        // Noted before the transaction, so the file never misses a set that holds it.
        self.note(&mut journal, before)?;
        apply(&batch)?;
        if let Some(after) = after {
            // A failure leaves the file naming more sets than hold it, which is safe.
            let _ = self.note(&mut journal, after);
        }
        Ok(())
    }

    /// Takes `addresses` out of every policy set that may hold them.
    pub fn evict(&self, addresses: &[IpAddr]) -> Result<(), LocalError> {
        let Some(program) = self.program()?.filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        let mut journal = self.journal();
        let mut batch = Vec::new();
        for a in addresses {
            let sets: BTreeSet<String> = match &journal {
                Some(j) => j.members.possible(&program, *a),
                None => program.sets.iter().map(|s| s.name.clone()).collect(),
            };
            for set in &sets {
                clear(&mut batch, *a, set);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        apply(&batch)?;
        if let Some(j) = journal.as_mut() {
            let gone = addresses.iter().map(|a| (*a, BTreeSet::new())).collect();
            // Noted only after the kernel took them out: a failure leaves a safe superset.
            let _ = self.note(j, Members(gone));
        }
        Ok(())
    }

    /// Which sets may hold each address, if the file is there and every line reads.
    pub fn members(&self) -> Option<Members> {
        self.journal().map(|j| j.members)
    }

    /// The membership file whole (weftd after a pass, the plugin when it grew large): one
    /// line, which later lines amend.
    pub fn write_members(&self, m: &Members) -> Result<(), LocalError> {
        self.write_members_len(m).map(drop)
    }

    /// [`Self::write_members`], returning the file's length.
    fn write_members_len(&self, m: &Members) -> Result<usize, LocalError> {
        let mut kept = m.clone();
        kept.0.retain(|_, sets| !sets.is_empty());
        let mut text = serde_json::to_vec(&kept).expect("a membership always encodes");
        text.push(b'\n');
        write_atomic(&self.shared.members_path(), &text).map(|()| text.len())
    }

    fn journal(&self) -> Option<Journal> {
        let bytes = crate::file::read(&self.shared.members_path(), PROGRAM_LIMIT).ok()?;
        let mut members = Members::default();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let amend: Members = serde_json::from_slice(line).ok()?;
            members.0.extend(amend.0);
        }
        Some(Journal {
            members,
            len: bytes.len(),
            ends_line: bytes.last() == Some(&b'\n'),
        })
    }

    /// Records `amend` in the file: one line appended (no new file, no rename: the ADD
    /// path), or the whole file rewritten once the lines add up.
    fn note(&self, j: &mut Journal, amend: Members) -> Result<(), LocalError> {
        let mut line = serde_json::to_vec(&amend).expect("a membership always encodes");
        line.push(b'\n');
        if !j.ends_line {
            line.insert(0, b'\n');
        }
        j.members.0.extend(amend.0);
        if j.len + line.len() > MEMBERS_COMPACT {
            (j.len, j.ends_line) = (self.write_members_len(&j.members)?, true);
            return Ok(());
        }
        let path = self.shared.members_path();
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &line));
        appended.map_err(|error| LocalError::Io { path, error })?;
        (j.len, j.ends_line) = (j.len + line.len(), true);
        Ok(())
    }

    /// Removes the membership file (the plugin then clears every set), before a change
    /// whose outcome is unknown until it returns.
    pub fn forget_members(&self) -> Result<(), LocalError> {
        match std::fs::remove_file(self.shared.members_path()) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(LocalError::Io {
                path: self.shared.members_path(),
                error,
            }),
            _ => Ok(()),
        }
    }
}

/// Which policy sets may hold each address (`weft-policy.members`): never fewer than hold it,
/// for every address the plugin may ask about (this host's subnets, its recorded workloads).
/// weftd writes it exactly after each pass; the plugin adds a container's sets before it
/// puts it into them and removes them only after it took it out. So the plugin clears a
/// stale address from the few sets named here, not from every set of the program.
///
/// The file is JSON lines: weftd's map, then the plugin's amendments, each naming the sets
/// of the addresses it lists in place of what earlier lines said. A line that does not read
/// makes the whole file unknown, and the plugin then clears every set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members(pub BTreeMap<IpAddr, BTreeSet<String>>);

impl Members {
    /// The sets of `program` that may hold `a`.
    fn possible(&self, program: &Program, a: IpAddr) -> BTreeSet<String> {
        let held = self.0.get(&a).into_iter().flatten();
        held.filter(|s| program.sets.iter().any(|d| d.name == **s))
            .cloned()
            .collect()
    }

    /// The sets of tables as weftd wrote them, by address.
    pub fn of<'t>(tables: impl IntoIterator<Item = &'t TableState>) -> Members {
        let mut m = Members::default();
        for t in tables {
            for (set, addrs) in &t.sets {
                for a in addrs {
                    m.0.entry(*a).or_default().insert(set.clone());
                }
            }
        }
        m
    }
}

/// The membership file as read, for [`Locked::note`] to amend.
struct Journal {
    members: Members,
    /// Its length in bytes, and whether it ends a line (else an append starts a new one).
    len: usize,
    ends_line: bool,
}

/// Takes `a` out of `set`; added first, so it never fails on a set that no longer holds it.
fn clear(batch: &mut Vec<ElementChange>, a: IpAddr, set: &str) {
    batch.push(element(true, a, set));
    batch.push(element(false, a, set));
}

/// One address added to or deleted from a set of weft's policy table in its family.
fn element(add: bool, address: IpAddr, set: &str) -> ElementChange {
    ElementChange {
        add,
        set: set.to_string(),
        address,
    }
}

/// The changes as one transaction of the kernel's.
fn apply(batch: &[ElementChange]) -> Result<(), LocalError> {
    change_elements(TABLE, batch).map_err(LocalError::Sets)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|error| LocalError::Io {
            path: path.to_path_buf(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn one(a: &str, names: &[&str]) -> Members {
        Members(BTreeMap::from([(a.parse().unwrap(), sets(names))]))
    }

    #[test]
    fn later_lines_replace_what_earlier_ones_said_of_their_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::beside(&dir.path().join("subnet.env"));
        let lock = shared.lock().unwrap();
        let mut base = one("198.18.0.2", &["g_a", "g_b"]);
        base.0.extend(one("198.18.0.3", &["g_a"]).0);
        lock.write_members(&base).unwrap();
        let mut j = lock.journal().unwrap();
        lock.note(&mut j, one("198.18.0.2", &["g_c"])).unwrap();
        lock.note(&mut j, one("198.18.0.3", &[])).unwrap();
        let mut want = one("198.18.0.2", &["g_c"]);
        want.0.extend(one("198.18.0.3", &[]).0);
        assert_eq!(lock.members().unwrap(), want);
        assert_eq!(j.members, want);
    }

    /// A line cut short (a plugin killed while writing it) makes the whole file unknown, so
    /// the plugin clears every set rather than trust it; the next line starts on its own.
    #[test]
    fn a_line_that_does_not_read_makes_the_file_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::beside(&dir.path().join("subnet.env"));
        let lock = shared.lock().unwrap();
        lock.write_members(&one("198.18.0.2", &["g_a"])).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(shared.members_path())
            .unwrap();
        std::io::Write::write_all(&mut f, br#"{"198.18.0.2":["g_"#).unwrap();
        assert_eq!(lock.members(), None);
        let text = std::fs::read(shared.members_path()).unwrap();
        let mut j = Journal {
            members: Members::default(),
            len: text.len(),
            ends_line: false,
        };
        lock.note(&mut j, one("198.18.0.4", &["g_a"])).unwrap();
        let text = std::fs::read_to_string(shared.members_path()).unwrap();
        assert_eq!(
            text.lines().last(),
            Some(r#"{"198.18.0.4":["g_a"]}"#),
            "{text}"
        );
        assert_eq!(lock.members(), None);
    }

    /// While weftd is down the plugin's lines add up; past the limit the file is rewritten
    /// whole, what it says unchanged.
    #[test]
    fn the_file_is_rewritten_whole_once_the_lines_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::beside(&dir.path().join("subnet.env"));
        let lock = shared.lock().unwrap();
        lock.write_members(&Members::default()).unwrap();
        let mut j = lock.journal().unwrap();
        // 4,000 ADDs and DELs of 200 addresses.
        for i in 0..4000u32 {
            let a = format!("198.18.0.{}", i % 200 + 2);
            let names: &[&str] = if i % 400 < 200 {
                &["g_a", "isolated_in"]
            } else {
                &[]
            };
            lock.note(&mut j, one(&a, names)).unwrap();
            let len = std::fs::metadata(shared.members_path()).unwrap().len();
            assert!(len as usize <= MEMBERS_COMPACT, "{len} bytes after {i}");
            assert_eq!(len as usize, j.len);
        }
        // A line that would end exactly one byte past the limit (its newline) compacts too.
        let amend = one("198.18.0.2", &["g_a"]);
        let line = serde_json::to_vec(&amend).unwrap().len();
        j.len = MEMBERS_COMPACT - line;
        lock.note(&mut j, amend).unwrap();
        assert!(j.len < MEMBERS_COMPACT / 2, "{} bytes", j.len);
        // The last round took every address out again, and one came back; rewritten whole,
        // the empty entries are dropped (absent and empty mean the same).
        let read = lock.members().unwrap();
        let held = read.0.values().filter(|s| !s.is_empty()).count();
        assert!(read.0.len() <= 200 && held == 1, "{read:?}");
        lock.write_members(&read).unwrap();
        assert_eq!(lock.members(), Some(one("198.18.0.2", &["g_a"])));
    }
}
