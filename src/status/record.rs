//! The status record a weftd keeps at `<prefix>/weft/status/<lease key name>`, and the mark
//! another host leaves at `<prefix>/weft/gone/<lease key name>` when that record expires.
//! Both are versioned JSON; fields may be added, so readers ignore what they do not know.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The record format this weft writes; a reader accepts this and newer ones.
pub const RECORD_VERSION: u32 = 1;

/// A point in time, written as RFC 3339 in whole seconds (`2026-11-28T14:05:00Z`), so a
/// record reads well in `etcdctl get` and compares equal after a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp::from(SystemTime::now())
    }

    pub fn from_unix(secs: u64) -> Stamp {
        Stamp(secs)
    }

    pub fn unix(self) -> u64 {
        self.0
    }

    pub fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }

    /// How long ago this was (zero for a time in the future, e.g. another host's clock).
    pub fn age(self, now: SystemTime) -> Duration {
        now.duration_since(self.time()).unwrap_or_default()
    }
}

impl From<SystemTime> for Stamp {
    fn from(t: SystemTime) -> Stamp {
        Stamp(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.time()))
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map(Stamp::from)
            .map_err(|e| serde::de::Error::custom(format!("time {text:?}: {e}")))
    }
}

/// A peer this host cannot reach, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    /// The peer's lease key name (e.g. `198.19.5.0-24`).
    pub peer: String,
    pub since: Stamp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRepairs {
    /// Kernel objects put back since this weftd started.
    pub count: u64,
    pub last: Option<Stamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub text: String,
    pub at: Stamp,
}

/// Network policy on one host: a few counts, bounded whatever the number of policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Policies the host enforces.
    pub policies: u64,
    /// Containers on this host the plugin attached.
    pub local_workloads: u64,
    /// When the policies last changed in the host's tables.
    pub applied: Option<Stamp>,
    /// Packets refused at the host's containers, all policies together.
    pub dropped: u64,
    /// The policies that refused most there, most first, at most [`TOP_DROPS`].
    #[serde(default)]
    pub top_drops: Vec<PolicyDrops>,
}

/// How many policies a record names with their drops.
pub const TOP_DROPS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDrops {
    /// `namespace/name`.
    pub policy: String,
    pub packets: u64,
}

impl PolicyStatus {
    /// The status of `policies` policies and `local` containers, from drops by policy.
    pub fn new(
        policies: u64,
        local: u64,
        applied: Option<Stamp>,
        drops: &std::collections::BTreeMap<String, u64>,
    ) -> PolicyStatus {
        let mut top: Vec<PolicyDrops> = (drops.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| PolicyDrops {
                policy: p.clone(),
                packets: *n,
            })
            .collect();
        top.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.policy.cmp(&b.policy)));
        top.truncate(TOP_DROPS);
        PolicyStatus {
            policies,
            local_workloads: local,
            applied,
            dropped: drops.values().sum(),
            top_drops: top,
        }
    }
}

/// Which config revision a host runs, and a newer one it does not run yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigState {
    /// The revision of `<prefix>/config` whose config the host runs entirely.
    pub rev: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer: Option<Newer>,
}

/// A newer config revision a host does not run yet: `state` is `refused`, `waiting` (for
/// `weftctl migrate`), `moving` (its pairs are moving to the new backend) or `failed` (the new
/// backend cannot run here); `why` in a line (cut at 200 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Newer {
    pub rev: i64,
    pub state: String,
    pub why: String,
}

/// One host's status record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The record format.
    pub v: u32,
    /// weft's version on the host.
    pub version: String,
    pub backend: String,
    pub ready: bool,
    /// When `ready` last changed (or weftd started).
    pub since: Stamp,
    pub public_ip: Option<IpAddr>,
    /// When the record's etcd lease was granted: since then the host has been seen alive
    /// without a gap longer than the liveness TTL.
    pub alive_since: Stamp,
    /// The longest unreachable of the hosts this host cannot reach, at most
    /// [`crate::probe::NAMED`], the oldest first; `unreachable_count` counts them all.
    #[serde(default)]
    pub unreachable: Vec<Unreachable>,
    /// Hosts this host cannot reach, named or not. Absent from records of weft before the
    /// list was bounded (their list is complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_count: Option<u64>,
    #[serde(default)]
    pub drift_repairs: DriftRepairs,
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Network policy on the host; absent before its first pass (and from older weft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,
    /// The config revision the host runs; absent from records of weft before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigState>,
}

/// Left by the first host that sees a status record vanish while its subnet lease stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoneMark {
    pub v: u32,
    /// When the record was seen vanishing: within a moment of its etcd lease expiring.
    pub since: Stamp,
}

/// Why a stored record could not be read; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("status key {key}: {why}")]
pub struct RecordError {
    pub key: String,
    pub why: String,
}

fn parse_versioned<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, RecordError> {
    let err = |why: String| RecordError {
        key: key.to_string(),
        why,
    };
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let v: Version = serde_json::from_slice(bytes)
        .map_err(|e| err(format!("not a versioned weft record: {e}")))?;
    if v.v < 1 {
        return Err(err(format!(
            "record version {} is not one weft writes",
            v.v
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))
}

impl StatusRecord {
    /// Hosts this host cannot reach, named or not.
    pub fn unreachable_total(&self) -> u64 {
        let named = self.unreachable.len() as u64;
        self.unreachable_count.map_or(named, |n| n.max(named))
    }

    pub fn parse(key: &str, bytes: &[u8]) -> Result<StatusRecord, RecordError> {
        parse_versioned(key, bytes)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a status record always serializes")
    }
}

impl GoneMark {
    pub fn parse(key: &str, bytes: &[u8]) -> Result<GoneMark, RecordError> {
        parse_versioned(key, bytes)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a gone mark always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> StatusRecord {
        StatusRecord {
            v: RECORD_VERSION,
            version: "0.1.0".into(),
            backend: "vxlan".into(),
            ready: true,
            since: Stamp::from_unix(1_800_000_000),
            public_ip: Some("198.18.0.1".parse().unwrap()),
            alive_since: Stamp::from_unix(1_800_000_000),
            unreachable: vec![],
            unreachable_count: None,
            drift_repairs: DriftRepairs::default(),
            last_error: None,
            policy: None,
            config: None,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_shows_its_times_as_rfc3339() {
        let r = record();
        let json = r.to_json();
        assert!(json.contains(r#""since":"2027-01-15T08:00:00Z""#), "{json}");
        assert_eq!(StatusRecord::parse("k", json.as_bytes()), Ok(r));
    }

    #[test]
    fn the_policy_part_names_at_most_five_policies_most_refusing_first() {
        let drops = (1..=8u64).map(|i| (format!("ns/p{i}"), i * 10)).collect();
        let p = PolicyStatus::new(8, 3, None, &drops);
        assert_eq!(p.dropped, 360);
        let names: Vec<&str> = p.top_drops.iter().map(|d| d.policy.as_str()).collect();
        assert_eq!(names, ["ns/p8", "ns/p7", "ns/p6", "ns/p5", "ns/p4"]);
        let mut r = record();
        r.policy = Some(p);
        assert_eq!(StatusRecord::parse("k", r.to_json().as_bytes()), Ok(r));
    }

    #[test]
    fn a_newer_record_with_unknown_fields_is_read() {
        let mut v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        v["v"] = 2.into();
        v["future"] = "x".into();
        let r = StatusRecord::parse("k", v.to_string().as_bytes()).unwrap();
        assert_eq!(r.v, 2);
    }

    #[test]
    fn errors_name_the_key_and_the_bad_value() {
        let e = StatusRecord::parse("/p/weft/status/a", b"{\"v\":0}").unwrap_err();
        assert_eq!(e.key, "/p/weft/status/a");
        assert!(e.why.contains("version 0"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&record().to_json()).unwrap();
        v["since"] = "yesterday".into();
        let e = StatusRecord::parse("k", v.to_string().as_bytes()).unwrap_err();
        assert!(e.why.contains("\"yesterday\""), "{e}");
    }

    fn any_record() -> impl Strategy<Value = StatusRecord> {
        (
            any::<bool>(),
            0u64..4_000_000_000,
            proptest::option::of(any::<std::net::IpAddr>()),
            proptest::collection::vec(("[0-9.a-f:&-]{1,30}", 0u64..4_000_000_000), 0..4),
            any::<u64>(),
            proptest::option::of((".{0,40}", 0u64..4_000_000_000)),
            proptest::option::of((
                any::<i64>(),
                proptest::option::of((any::<i64>(), "[a-z]{0,8}", ".{0,40}")),
            )),
        )
            .prop_map(|(ready, t, ip, peers, repairs, err, config)| StatusRecord {
                v: RECORD_VERSION,
                version: "0.1.0".into(),
                backend: "host-gw".into(),
                ready,
                since: Stamp::from_unix(t),
                public_ip: ip,
                alive_since: Stamp::from_unix(t / 2),
                unreachable: peers
                    .into_iter()
                    .map(|(peer, s)| Unreachable {
                        peer,
                        since: Stamp::from_unix(s),
                    })
                    .collect(),
                unreachable_count: None,
                drift_repairs: DriftRepairs {
                    count: repairs,
                    last: (repairs > 0).then_some(Stamp::from_unix(t)),
                },
                last_error: err.map(|(text, at)| LastError {
                    text,
                    at: Stamp::from_unix(at),
                }),
                policy: (repairs % 2 == 0).then(|| {
                    let drops = [("default/db".to_string(), repairs)].into();
                    PolicyStatus::new(repairs % 7, repairs % 3, Some(Stamp::from_unix(t)), &drops)
                }),
                config: config.map(|(rev, newer)| ConfigState {
                    rev,
                    newer: newer.map(|(rev, state, why)| Newer { rev, state, why }),
                }),
            })
    }

    proptest! {
        #[test]
        fn any_record_round_trips(r in any_record()) {
            prop_assert_eq!(StatusRecord::parse("k", r.to_json().as_bytes()), Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Whatever comes back, an error names the key it was read from.
            if let Err(e) = StatusRecord::parse("k", &bytes) {
                prop_assert_eq!(e.key.as_str(), "k");
            }
            if let Err(e) = GoneMark::parse("k", &bytes) {
                prop_assert_eq!(e.key.as_str(), "k");
            }
        }

        #[test]
        fn a_mangled_record_is_an_error_or_a_record(r in any_record(), cut in 0usize..400) {
            // Every proper prefix of a record's JSON object is cut short of its closing brace:
            // an error naming the key and why; only the whole record reads back, as written.
            let json = r.to_json();
            let cut = cut.min(json.len());
            match StatusRecord::parse("k", &json.as_bytes()[..cut]) {
                Ok(read) => {
                    prop_assert_eq!(cut, json.len(), "a cut record parsed: {:?}", read);
                    prop_assert_eq!(read, r);
                }
                Err(e) => {
                    prop_assert!(cut < json.len(), "the whole record was refused: {}", e);
                    prop_assert_eq!(e.key.as_str(), "k");
                    prop_assert!(!e.why.is_empty(), "{}", e);
                }
            }
        }
    }
}
