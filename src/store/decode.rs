//! What the keys under `<prefix>/subnets/` hold: each decoded as far as it goes into a lease,
//! or set aside with the reason it is not one. Listing, watching and the allocator all judge
//! keys by these rules, so they never disagree about which leases exist.

use ipnet::Ipv4Net;

use super::registry::{Layout, Stored};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseError};
use crate::subnet::parse_lease_key_name;

/// The leases under `<prefix>/subnets/` at one revision.
#[derive(Debug, Clone, Default)]
pub struct LeaseList {
    /// Sorted by subnet.
    pub leases: Vec<Lease>,
    /// Keys that are not usable leases, with the reason.
    pub skipped: Vec<SkippedLease>,
    /// The etcd revision of the listing; watch from here to miss nothing.
    pub revision: i64,
    /// Whether the leases carry their expirations (a watch started from the listing then
    /// keeps them up to date).
    pub timed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLease {
    /// The full etcd key.
    pub key: String,
    pub reason: String,
    pub mod_revision: i64,
}

/// A raw key under the subnets prefix, decoded as far as it goes.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub stored: Stored,
    /// The IPv4 subnet its key names, when the key parses (even if the value does not).
    pub subnet: Option<Ipv4Net>,
    pub lease: Result<Lease, String>,
}

impl Entry {
    /// Decodes one key; `None` for keys that are not a lease's (deeper, or elsewhere).
    pub(super) fn decode(layout: &Layout, stored: Stored) -> Option<Entry> {
        let name = layout.lease_name(&stored.key)?;
        let subnet = parse_lease_key_name(name).ok().map(|(s, _)| s);
        let lease = Lease::parse(name, &stored.value)
            .map(|mut l| {
                l.etcd_lease_id = stored.lease;
                l.mod_revision = stored.mod_revision;
                l
            })
            .map_err(|e| match e {
                LeaseError::Value { why, .. } => format!("value is not a flannel lease: {why}"),
                other => other.to_string(),
            });
        Some(Entry {
            stored,
            subnet,
            lease,
        })
    }

    /// The PublicIP its lease names, for messages ("?" when the value does not parse).
    pub(super) fn public_ip(&self) -> String {
        self.lease
            .as_ref()
            .map(|l| l.attrs.public_ip.to_string())
            .unwrap_or_else(|_| "?".into())
    }

    /// The lease, or the error naming the key whose value is not one.
    pub(super) fn into_lease(self) -> Result<Lease, LeaseError> {
        let key = self.stored.key;
        self.lease.map_err(|why| LeaseError::Value { key, why })
    }
}

/// Decodes a listing's keys; keys that are not a lease's are left out.
pub(super) fn decode_all(layout: &Layout, kvs: Vec<Stored>) -> Vec<Entry> {
    kvs.into_iter()
        .filter_map(|kv| Entry::decode(layout, kv))
        .collect()
}

/// Why a lease is not part of `cfg`'s network, if it is not.
pub(super) fn outside_network(l: &Lease, cfg: Option<&NetworkConfig>) -> Option<String> {
    let cfg = cfg?;
    if cfg.contains_subnet(l.subnet) {
        return None;
    }
    Some(
        LeaseError::OutsideNetwork {
            key: l.key_name(),
            subnet: l.subnet.to_string(),
            network: cfg
                .network
                .map(|n| format!("{n} (SubnetLen {})", cfg.subnet_len))
                .unwrap_or_else(|| "(none)".into()),
        }
        .to_string(),
    )
}

/// Splits entries into usable leases, sorted by subnet, and skipped keys; with a config,
/// leases outside the network are skipped too.
pub(super) fn sort_entries(
    entries: Vec<Entry>,
    cfg: Option<&NetworkConfig>,
) -> (Vec<Lease>, Vec<SkippedLease>) {
    let mut leases = Vec::new();
    let mut skipped = Vec::new();
    for e in entries {
        let reason = match e.lease {
            Ok(l) => match outside_network(&l, cfg) {
                None => {
                    leases.push(l);
                    continue;
                }
                Some(reason) => reason,
            },
            Err(reason) => reason,
        };
        skipped.push(SkippedLease {
            key: e.stored.key,
            reason,
            mod_revision: e.stored.mod_revision,
        });
    }
    leases.sort_by_key(|l| (l.subnet.network(), l.subnet.prefix_len()));
    (leases, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, value: &str, lease: Option<i64>) -> Stored {
        Stored {
            key: format!("/coreos.com/network/subnets/{name}"),
            value: value.as_bytes().to_vec(),
            lease,
            mod_revision: 7,
        }
    }

    #[test]
    fn keys_become_leases_or_are_skipped_with_the_reason() {
        let layout = Layout::new("/coreos.com/network");
        let value = r#"{"PublicIP":"198.18.0.1","BackendType":"host-gw"}"#;
        let kvs = vec![
            stored("198.19.9.0-24", value, Some(0x70)),
            stored("198.19.2.0-24", value, None),
            stored("198.19.3.0-24", "{broken", None),
            stored("198.20.0.0-24", value, None),
            stored("198.19.4.0-24/extra", value, None),
        ];
        let entries = decode_all(&layout, kvs);
        assert_eq!(entries.len(), 4, "a deeper key is not a lease's");
        assert_eq!(entries[2].subnet, Some("198.19.3.0/24".parse().unwrap()));
        assert_eq!(entries[2].public_ip(), "?");
        let cfg =
            NetworkConfig::parse(r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "host-gw"}}"#)
                .unwrap();
        let (leases, skipped) = sort_entries(entries, Some(&cfg));
        let subnets: Vec<String> = leases.iter().map(|l| l.subnet.to_string()).collect();
        assert_eq!(subnets, ["198.19.2.0/24", "198.19.9.0/24"]);
        assert_eq!(leases[1].etcd_lease_id, Some(0x70));
        assert_eq!(leases[1].mod_revision, 7);
        assert!(leases[0].is_reservation());
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0]
            .reason
            .starts_with("value is not a flannel lease"));
        assert!(skipped[1]
            .reason
            .contains("not a subnet of the network 198.19.0.0/16"));
    }
}
