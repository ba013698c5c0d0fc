//! The record at `<prefix>/weft/config`: the config the network runs (a copy of the
//! `<prefix>/config` document that running hosts accepted), the backend migration under way,
//! and the newer document they refused. weftctl writes it with the config in one transaction;
//! weftd writes it when it finds a document written behind weftctl's back, and every host then
//! follows the record, so the fleet decides once. Versioned JSON; readers skip fields they do
//! not know.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::change::{classify, KeyChange, Verdict};
use crate::config::{BackendConfig, NetworkConfig};
use crate::lease::Lease;

/// The format this weft writes; a reader accepts it and later ones.
pub const RECORD_VERSION: u32 = 1;

/// The config the network runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningConfig {
    pub v: u32,
    /// The revision of `<prefix>/config` that held `config`; absent when the record was
    /// written in the same transaction as that document (then it is the record's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<i64>,
    /// The document as stored at `<prefix>/config`.
    pub config: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// A newer document running hosts do not run, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// A change of `Backend.Type` under way: hosts move from `from` as they are told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// The `Backend` object hosts move from, settings included (a host that has not moved,
    /// or restarts mid-way, runs it from here).
    pub from: Value,
    /// The config revision that ran `from`.
    pub from_rev: i64,
    /// Which hosts may move.
    pub hosts: Hosts,
}

/// Hosts told to move: all, or these (by IPv4 subnet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    All,
    Some(BTreeSet<Ipv4Net>),
}

/// `"all"` or a list of subnets, as an operator reads it in etcdctl.
impl Serialize for Hosts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Hosts::All => s.serialize_str("all"),
            Hosts::Some(set) => s.collect_seq(set.iter().map(|n| n.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hosts, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) if s == "all" => Ok(Hosts::All),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| D::Error::custom(format!("{v} is not an IPv4 subnet")))
                })
                .collect::<Result<_, _>>()
                .map(Hosts::Some),
            other => Err(D::Error::custom(format!(
                "hosts must be \"all\" or a list of subnets, not {other}"
            ))),
        }
    }
}

impl Hosts {
    pub fn contains(&self, subnet: Ipv4Net) -> bool {
        match self {
            Hosts::All => true,
            Hosts::Some(set) => set.contains(&subnet),
        }
    }
}

/// A document running hosts refused: its revision and a reason per refused key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub rev: i64,
    pub why: Vec<String>,
}

/// Why a stored record cannot be used; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("running config at {key}: {why}")]
pub struct RecordError {
    pub key: String,
    pub why: String,
}

/// What a host does next about the config, given the record and `<prefix>/config`.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run the record as it is.
    Run,
    /// Store `record` (over the record at mod revision `guard`, or where none is), then look
    /// again: the first host to get there decides for all.
    Write {
        record: Box<RunningConfig>,
        guard: Option<i64>,
    },
    /// Nothing to run yet: no usable document and no record (each reason a line).
    Wait(Vec<String>),
}

impl RunningConfig {
    /// A record of `config` as stored at revision `rev` (None: written with it).
    pub fn new(config: Value, rev: Option<i64>) -> RunningConfig {
        RunningConfig {
            v: RECORD_VERSION,
            rev,
            config,
            migration: None,
            refused: None,
        }
    }

    pub fn parse(key: &str, bytes: &[u8]) -> Result<RunningConfig, RecordError> {
        let err = |why: String| RecordError {
            key: key.to_string(),
            why,
        };
        let r: RunningConfig = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        if r.v < 1 {
            return Err(err(format!(
                "record version {} is not one weft writes",
                r.v
            )));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a running-config record always serializes")
    }

    /// The revision of `<prefix>/config` the record's config was, given the record's own mod
    /// revision.
    pub fn config_rev(&self, mod_revision: i64) -> i64 {
        self.rev.unwrap_or(mod_revision)
    }

    /// The config the record holds, as weft reads it.
    pub fn network(&self) -> Result<NetworkConfig, crate::json::ConfigErrors> {
        NetworkConfig::parse(&self.config.to_string())
    }

    /// The backend hosts move from, when a migration between two types is under way.
    pub fn from_backend(&self) -> Option<BackendConfig> {
        let m = self.migration.as_ref()?;
        BackendConfig::parse(Some(&m.from)).ok()
    }

    /// Whether the record holds `doc` (the same JSON, whatever its spacing).
    pub fn holds(&self, doc: &Value) -> bool {
        self.config == *doc
    }

    /// The record that follows an accepted change to `doc` (at revision `rev`): a changed
    /// `Backend.Type` starts a migration of `hosts` from the backend this record runs, or
    /// turns one under way around.
    pub fn accept(
        &self,
        old: &NetworkConfig,
        new: &NetworkConfig,
        doc: Value,
        rev: Option<i64>,
        own_rev: i64,
        hosts: Hosts,
    ) -> RunningConfig {
        let migration = if new.backend.type_name() == old.backend.type_name() {
            self.migration.clone()
        } else {
            Some(Migration {
                from: old.backend.to_json(),
                from_rev: self.config_rev(own_rev),
                hosts,
            })
        };
        RunningConfig {
            v: RECORD_VERSION,
            rev,
            config: doc,
            migration,
            refused: None,
        }
    }
}

/// The current document at `<prefix>/config`: its text and mod revision.
pub type Current<'a> = Option<(&'a str, i64)>;

/// What to do about `current` given the record (with its mod revision) and the leases: run
/// the record, store a new one (a first record, an accepted change, or a refusal written once
/// for every host to read), or wait for a usable document. A change written behind weftctl's
/// back that running hosts can apply moves every host at once: nobody is there to choose.
pub fn next(record: Option<(&RunningConfig, i64)>, current: Current, leases: &[Lease]) -> Next {
    let Some((text, rev)) = current else {
        return match record {
            Some(_) => Next::Run,
            None => Next::Wait(vec!["no network config yet".into()]),
        };
    };
    let parsed = NetworkConfig::parse(text);
    let Some((rec, rec_rev)) = record else {
        return match parsed {
            Ok(cfg) => Next::Write {
                record: Box::new(RunningConfig::new(cfg.raw, Some(rev))),
                guard: None,
            },
            Err(problems) => {
                Next::Wait(problems.problems().iter().map(|p| p.to_string()).collect())
            }
        };
    };
    let new = match parsed {
        Ok(cfg) if rec.holds(&cfg.raw) => return Next::Run,
        Ok(cfg) => cfg,
        // A broken document is refused by every host alike, each on its own.
        Err(_) => return Next::Run,
    };
    if rec.refused.as_ref().is_some_and(|r| r.rev == rev) {
        return Next::Run;
    }
    let Ok(old) = rec.network() else {
        // A record weft cannot read any more: the document replaces it.
        return Next::Write {
            record: Box::new(RunningConfig::new(new.raw, Some(rev))),
            guard: Some(rec_rev),
        };
    };
    let j = judge(rec, rec_rev, &old, &new, Some(rev), leases, Hosts::All);
    let record = match j.accepted {
        Some(r) => r,
        None => RunningConfig {
            refused: Some(Refusal {
                rev,
                why: j.refusals(),
            }),
            ..rec.clone()
        },
    };
    Next::Write {
        record: Box::new(record),
        guard: Some(rec_rev),
    }
}

/// What running hosts do with a new document: each changed key with its verdict, and the
/// record that follows when no key is refused. weftd (through [`next`]) and `weftctl config
/// set` both decide here, so what weftctl promises is what hosts do.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub changes: Vec<KeyChange>,
    pub accepted: Option<RunningConfig>,
}

impl Judgement {
    /// A line per refused key: `KEY OLD → NEW: why`.
    pub fn refusals(&self) -> Vec<String> {
        (self.changes.iter())
            .filter_map(|c| match &c.verdict {
                Verdict::Refused(why) => Some(format!("{} {} → {}: {why}", c.key, c.old, c.new)),
                _ => None,
            })
            .collect()
    }

    /// Whether some key's change disturbs traffic (the operator confirms it).
    pub fn disturbs(&self) -> bool {
        (self.changes.iter()).any(|c| matches!(c.verdict, Verdict::Disturbs(_)))
    }
}

/// Judges `new` (stored at `rev`; None: in one transaction with its record) against `old`,
/// the config of `rec` (at mod revision `rec_rev`), given the leases; a changed
/// `Backend.Type` moves `hosts`.
pub fn judge(
    rec: &RunningConfig,
    rec_rev: i64,
    old: &NetworkConfig,
    new: &NetworkConfig,
    rev: Option<i64>,
    leases: &[Lease],
    hosts: Hosts,
) -> Judgement {
    let changes = classify(old, new, leases);
    let refused = changes.iter().any(|c| c.verdict.is_refused());
    let accepted = (!refused).then(|| {
        let mut r = rec.accept(old, new, new.raw.clone(), rev, rec_rev, hosts);
        // A network without leases has no host to move: the new backend is simply the
        // network's (a migration would leave the first hosts waiting to be told to move).
        if leases.is_empty() {
            r.migration = None;
        }
        r
    });
    Judgement { changes, accepted }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VX: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#;

    fn doc(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn lease(subnet: &str) -> Lease {
        crate::plan::testing::lease(subnet, "198.18.0.2", Some("0e:00:00:00:00:02"), 3)
    }

    #[test]
    fn a_first_document_is_recorded_a_broken_one_waited_out() {
        let n = next(None, Some((VX, 4)), &[]);
        let Next::Write {
            record,
            guard: None,
        } = n
        else {
            panic!("{n:?}")
        };
        assert_eq!((record.rev, &record.config), (Some(4), &doc(VX)));
        let n = next(None, Some((r#"{"Network":"198.19.0.0/16"}"#, 4)), &[]);
        assert!(
            matches!(&n, Next::Wait(why) if why[0].contains("Backend.Type")),
            "{n:?}"
        );
    }

    #[test]
    fn a_refused_change_is_written_once_and_then_run_around() {
        let rec = RunningConfig::new(doc(VX), Some(4));
        let vni2 = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#;
        let leases = [lease("198.19.2.0/24")];
        let Next::Write { record, guard } = next(Some((&rec, 5)), Some((vni2, 9)), &leases) else {
            panic!()
        };
        assert_eq!(guard, Some(5));
        assert_eq!(record.config, doc(VX), "the running config stays");
        let r = record.refused.clone().unwrap();
        assert_eq!(r.rev, 9);
        assert!(r.why[0].starts_with("Backend.VNI 1 → 2: "), "{:?}", r.why);
        assert_eq!(
            next(Some((&*record, 10)), Some((vni2, 9)), &leases),
            Next::Run
        );
        // The network's own document back: nothing to decide.
        assert_eq!(
            next(Some((&*record, 10)), Some((VX, 11)), &leases),
            Next::Run
        );
    }

    #[test]
    fn a_new_backend_for_a_network_without_leases_is_no_migration() {
        let rec = RunningConfig::new(doc(VX), Some(4));
        let wg = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard"}}"#;
        let Next::Write { record, .. } = next(Some((&rec, 5)), Some((wg, 9)), &[]) else {
            panic!()
        };
        assert_eq!((record.rev, &record.config), (Some(9), &doc(wg)));
        assert_eq!(record.migration, None);
    }

    #[test]
    fn a_live_change_is_accepted_and_a_new_backend_starts_a_migration_of_all() {
        let rec = RunningConfig::new(doc(VX), Some(4));
        let wg = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard"}}"#;
        let leases = [lease("198.19.2.0/24")];
        let Next::Write { record, .. } = next(Some((&rec, 5)), Some((wg, 9)), &leases) else {
            panic!()
        };
        assert_eq!((record.rev, &record.config), (Some(9), &doc(wg)));
        let m = record.migration.clone().unwrap();
        assert_eq!((m.from["Type"].as_str(), m.from_rev), (Some("vxlan"), 4));
        assert_eq!(m.hosts, Hosts::All);
        assert_eq!(record.from_backend().unwrap().type_name(), "vxlan");
    }

    #[test]
    fn hosts_read_and_write_as_an_operator_would() {
        let mut r = RunningConfig::new(doc(VX), None);
        r.migration = Some(Migration {
            from: doc(r#"{"Type":"vxlan","VNI":1}"#),
            from_rev: 3,
            hosts: Hosts::Some(["198.19.2.0/24".parse().unwrap()].into()),
        });
        let json = r.to_json();
        assert!(json.contains(r#""hosts":["198.19.2.0/24"]"#), "{json}");
        assert_eq!(RunningConfig::parse("k", json.as_bytes()), Ok(r.clone()));
        assert_eq!(r.config_rev(17), 17);
        let bad = json.replace(r#"["198.19.2.0/24"]"#, r#"["nope"]"#);
        let e = RunningConfig::parse("/p/weft/config", bad.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("\"nope\" is not an IPv4 subnet"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn props_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = RunningConfig::parse("k", &bytes) {
                prop_assert_eq!(e.key.as_str(), "k");
            }
        }

        #[test]
        fn props_records_round_trip(rev in proptest::option::of(any::<i64>()), subnets in proptest::collection::btree_set(any::<u32>(), 0..4), all in any::<bool>(), refused in proptest::option::of((any::<i64>(), proptest::collection::vec(".{0,20}", 0..3)))) {
            let hosts = if all { Hosts::All } else {
                Hosts::Some(subnets.into_iter().map(|n| Ipv4Net::new(n.into(), 24).unwrap().trunc()).collect())
            };
            let r = RunningConfig {
                v: RECORD_VERSION,
                rev,
                config: doc(VX),
                migration: Some(Migration { from: doc(r#"{"Type":"host-gw"}"#), from_rev: 2, hosts }),
                refused: refused.map(|(rev, why)| Refusal { rev, why }),
            };
            prop_assert_eq!(RunningConfig::parse("k", r.to_json().as_bytes()), Ok(r));
        }
    }
}
