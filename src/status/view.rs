//! The cluster as `weftctl status` shows it, computed from one listing of the leases and one
//! of weft's keys: each host's state, the pairs that cannot reach each other, recent drift
//! repairs and the subnet pool. Pure: no etcd here, so it is tested without one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;

use super::record::{GoneMark, Stamp, StatusRecord};
use crate::config::NetworkConfig;
use crate::lease::Lease;
use crate::store::WeftKeys;
use crate::subnet::parse_lease_key_name;

/// What weft knows of the host behind a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    Ready,
    NotReady,
    /// Its status record expired while its lease stayed; `since` when that was seen.
    Gone {
        since: Stamp,
    },
    /// No record and no gone mark: not a weft host (e.g. flannel), or one that went while no
    /// other weftd was there to see it.
    NoStatus,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub lease: Lease,
    pub record: Option<StatusRecord>,
    pub state: HostState,
}

/// Subnets in SubnetMin..SubnetMax: `used` by leases, `reserved`, and `free`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub free: u64,
}

impl Pool {
    /// Free subnets as a share of all, in percent.
    pub fn free_percent(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.free as f64 * 100.0 / self.total as f64
    }
}

/// Two hosts of which one (or each) reports the other unreachable, since the earliest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub a: Ipv4Net,
    pub b: Ipv4Net,
    pub since: Stamp,
}

/// Unreachable peers the records count but do not name (a record names only its
/// [`crate::probe::NAMED`] longest unreachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unnamed {
    /// Peers counted and not named, over all records.
    pub peers: u64,
    /// Hosts whose record leaves some out.
    pub hosts: u64,
}

/// Pairs named one per line among the problems; the others are counted.
pub const PAIRS_SHOWN: usize = 10;

#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Sorted by subnet.
    pub hosts: Vec<Host>,
    /// The pairs the records name, each once.
    pub pairs: Vec<Pair>,
    pub unnamed: Unnamed,
    pub pool: Pool,
    /// Keys that could not be read, with why; a record that does not parse is skipped.
    pub unreadable: Vec<String>,
}

fn subnet_of(name: &str) -> Option<Ipv4Net> {
    parse_lease_key_name(name).ok().map(|(s, _)| s)
}

/// Parses the records and marks by the IPv4 subnet their name starts with (which names a
/// lease even when its IPv6 part changed).
fn by_subnet<T>(
    entries: &[(String, Vec<u8>)],
    parse: impl Fn(&str, &[u8]) -> Result<T, super::RecordError>,
    unreadable: &mut Vec<String>,
) -> BTreeMap<Ipv4Net, T> {
    let mut out = BTreeMap::new();
    for (name, bytes) in entries {
        match (subnet_of(name), parse(name, bytes)) {
            (Some(s), Ok(v)) => {
                out.insert(s, v);
            }
            (None, _) => unreadable.push(format!("{name}: not a lease key name")),
            (_, Err(e)) => unreadable.push(e.to_string()),
        }
    }
    out
}

/// The host behind each lease, from its status record or gone mark; with the keys that
/// could not be read.
pub fn hosts(leases: &[Lease], keys: &WeftKeys) -> (Vec<Host>, Vec<String>) {
    let mut unreadable = Vec::new();
    let mut records = by_subnet(&keys.status, StatusRecord::parse, &mut unreadable);
    let marks = by_subnet(&keys.gone, GoneMark::parse, &mut unreadable);
    let hosts = leases
        .iter()
        .map(|l| {
            let record = records.remove(&l.subnet);
            let state = match (&record, marks.get(&l.subnet)) {
                (Some(r), _) if r.ready => HostState::Ready,
                (Some(_), _) => HostState::NotReady,
                (None, Some(m)) => HostState::Gone { since: m.since },
                (None, None) => HostState::NoStatus,
            };
            Host {
                lease: l.clone(),
                record,
                state,
            }
        })
        .collect();
    (hosts, unreadable)
}

impl ClusterView {
    pub fn build(cfg: &NetworkConfig, leases: &[Lease], keys: &WeftKeys) -> ClusterView {
        let (hosts, unreadable) = hosts(leases, keys);
        ClusterView {
            pairs: pairs(&hosts),
            unnamed: unnamed(&hosts),
            pool: pool(cfg, leases),
            hosts,
            unreadable,
        }
    }

    /// Hosts gone for at least `gone_for` whose lease may be reclaimed (never reservations).
    pub fn reclaimable(&self, gone_for: Duration, now: SystemTime) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| !h.lease.is_reservation())
            .filter(|h| matches!(h.state, HostState::Gone { since } if since.age(now) >= gone_for))
            .collect()
    }

    /// Hosts with a drift repair within `window` of `now`.
    pub fn recent_repairs(&self, window: Duration, now: SystemTime) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| {
                let last = h.record.as_ref().and_then(|r| r.drift_repairs.last);
                last.is_some_and(|t| t.age(now) <= window)
            })
            .collect()
    }

    /// A host as an operator knows it: its subnet and its public address from its lease
    /// (records name peers by subnet only; the lease has the rest).
    pub fn name(&self, subnet: Ipv4Net) -> String {
        match self.hosts.iter().find(|h| h.lease.subnet == subnet) {
            Some(h) => format!("{subnet} ({})", h.lease.attrs.public_ip),
            None => format!("{subnet} (no lease)"),
        }
    }

    /// What keeps the cluster from being healthy, one line each; empty when it is.
    pub fn problems(&self, pool_warn_below: f64) -> Vec<String> {
        let mut out = Vec::new();
        for h in &self.hosts {
            let name = || self.name(h.lease.subnet);
            match h.state {
                HostState::NotReady => out.push(format!("{} is not ready", name())),
                HostState::Gone { since } => out.push(format!("{} is gone since {since}", name())),
                HostState::Ready | HostState::NoStatus => {}
            }
        }
        for p in self.pairs.iter().take(PAIRS_SHOWN) {
            out.push(format!(
                "{} and {} cannot reach each other since {}",
                self.name(p.a),
                self.name(p.b),
                p.since
            ));
        }
        match self.pairs.len().saturating_sub(PAIRS_SHOWN) {
            0 => {}
            1 => out.push(
                "1 more pair cannot reach each other (weftctl status -o json lists it)".into(),
            ),
            more => out.push(format!(
                "{more} more pairs cannot reach each other (weftctl status -o json lists them)"
            )),
        }
        let u = self.unnamed;
        if u.peers > 0 {
            out.push(format!(
                "{} hosts cannot reach {} more peers they do not name (a record names {}; \
                 /peers on each host lists all)",
                u.hosts,
                u.peers,
                crate::probe::NAMED
            ));
        }
        if self.pool.free_percent() < pool_warn_below {
            out.push(format!(
                "subnet pool low: {} of {} free ({:.1}% < {pool_warn_below}%)",
                self.pool.free,
                self.pool.total,
                self.pool.free_percent()
            ));
        }
        out
    }
}

/// Each unordered pair once, from every record that names a peer it cannot reach.
fn pairs(hosts: &[Host]) -> Vec<Pair> {
    let mut seen: BTreeMap<(Ipv4Net, Ipv4Net), Stamp> = BTreeMap::new();
    for h in hosts {
        let Some(r) = &h.record else { continue };
        for u in &r.unreachable {
            let Some(peer) = subnet_of(&u.peer) else {
                continue;
            };
            let key = (h.lease.subnet.min(peer), h.lease.subnet.max(peer));
            let since = seen.entry(key).or_insert(u.since);
            *since = (*since).min(u.since);
        }
    }
    seen.into_iter()
        .map(|((a, b), since)| Pair { a, b, since })
        .collect()
}

fn unnamed(hosts: &[Host]) -> Unnamed {
    let mut u = Unnamed::default();
    for r in hosts.iter().filter_map(|h| h.record.as_ref()) {
        let left_out = r.unreachable_total() - r.unreachable.len() as u64;
        if left_out > 0 {
            u.peers += left_out;
            u.hosts += 1;
        }
    }
    u
}

fn pool(cfg: &NetworkConfig, leases: &[Lease]) -> Pool {
    let total = cfg.subnet_count();
    let in_range: BTreeSet<(Ipv4Net, bool)> = leases
        .iter()
        .filter(|l| cfg.subnet_in_range(l.subnet))
        .map(|l| (l.subnet, l.is_reservation()))
        .collect();
    let reserved = in_range.iter().filter(|(_, r)| *r).count() as u64;
    let used = in_range.len() as u64 - reserved;
    Pool {
        total,
        used,
        reserved,
        free: total.saturating_sub(used + reserved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::record::{DriftRepairs, Unreachable, RECORD_VERSION};

    fn lease(subnet: &str, etcd_lease: Option<i64>) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            subnet6: None,
            attrs: crate::backend::hostgw::lease_attrs("198.18.0.1".parse().unwrap()),
            expiration: None,
            etcd_lease_id: etcd_lease,
            mod_revision: 1,
        }
    }

    fn record(ready: bool, unreachable: &[&str]) -> Vec<u8> {
        StatusRecord {
            v: RECORD_VERSION,
            version: "0.1.0".into(),
            backend: "host-gw".into(),
            ready,
            since: Stamp::from_unix(100),
            public_ip: None,
            alive_since: Stamp::from_unix(100),
            unreachable: (unreachable.iter())
                .map(|p| Unreachable {
                    peer: p.to_string(),
                    since: Stamp::from_unix(200),
                })
                .collect(),
            unreachable_count: None,
            drift_repairs: DriftRepairs::default(),
            last_error: None,
            policy: None,
            config: None,
        }
        .to_json()
        .into_bytes()
    }

    fn config() -> NetworkConfig {
        // 198.18.64.0/26 in /28s: SubnetMin .16, SubnetMax .48, three subnets.
        NetworkConfig::parse(
            r#"{"Network":"198.18.64.0/26","SubnetLen":28,"Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn huge_and_hostile_records_are_read_or_skipped_never_fatal() {
        let leases = [lease("198.18.64.16/28", Some(1))];
        let many: Vec<String> = (0..20_000)
            .map(|i| format!("198.{}.{}.0-24", i / 256 % 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let keys = WeftKeys {
            status: vec![
                ("198.18.64.16-28".into(), record(true, &many)),
                ("198.18.64.32-28".into(), vec![b'['; 1 << 20]),
                ("198.18.64.48-28".into(), vec![0xff; 1 << 20]),
            ],
            ..WeftKeys::default()
        };
        let v = ClusterView::build(&config(), &leases, &keys);
        assert_eq!(v.hosts[0].state, HostState::Ready);
        assert_eq!(v.pairs.len(), 20_000);
        assert_eq!(v.unreadable.len(), 2, "{:?}", v.unreadable.len());
    }

    #[test]
    fn states_pairs_and_pool_come_from_leases_records_and_marks() {
        let leases = [
            lease("198.18.64.16/28", Some(1)),
            lease("198.18.64.32/28", Some(2)),
            lease("198.18.64.48/28", None),
        ];
        let keys = WeftKeys {
            status: vec![
                ("198.18.64.16-28".into(), record(true, &["198.18.64.32-28"])),
                ("198.18.64.99-28".into(), record(true, &[])),
                ("bad".into(), b"{".to_vec()),
            ],
            gone: vec![(
                "198.18.64.32-28".into(),
                br#"{"v":1,"since":"2026-01-01T00:00:00Z"}"#.to_vec(),
            )],
            ..WeftKeys::default()
        };
        let v = ClusterView::build(&config(), &leases, &keys);
        let states: Vec<&HostState> = v.hosts.iter().map(|h| &h.state).collect();
        assert_eq!(states[0], &HostState::Ready);
        assert!(matches!(states[1], HostState::Gone { .. }));
        assert_eq!(states[2], &HostState::NoStatus);
        assert_eq!(v.unreadable.len(), 2, "{:?}", v.unreadable);
        assert_eq!(v.pairs.len(), 1);
        assert_eq!(v.pairs[0].since, Stamp::from_unix(200));
        assert_eq!(
            v.pool,
            Pool {
                total: 3,
                used: 2,
                reserved: 1,
                free: 0
            }
        );
        let problems = v.problems(10.0);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("198.18.64.32/28 (198.18.0.1) is gone since"),
            "a problem names the host by subnet and public address: {problems:?}"
        );
        let now = Stamp::from_unix(1_800_000_000).time();
        let gone = v.reclaimable(Duration::from_secs(60), now);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].lease.subnet.to_string(), "198.18.64.32/28");
    }
}
