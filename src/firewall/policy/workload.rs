//! A workload: a container the weft plugin attached, with the address(es) it got, its
//! namespace, name and labels. The plugin writes one file per workload next to subnet.env;
//! weftd publishes the same record in etcd, where every other host reads it. Records come
//! from other hosts, so reading one checks everything and never trusts sizes.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::model::{check_namespace, DEFAULT_NAMESPACE};
use super::selector::{check_key, check_value, Labels};

/// Whether `a` is in one of `subnets`.
pub fn in_subnets(subnets: &[IpNet], a: &IpAddr) -> bool {
    subnets.iter().any(|n| n.contains(a))
}

/// The most labels and addresses a record may carry; far above what a container has.
const MAX_LABELS: usize = 64;
const MAX_ADDRESSES: usize = 4;
/// A record larger than this is refused before it is parsed.
pub const MAX_RECORD: usize = 16 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub namespace: String,
    /// `K8S_POD_NAME`, or the container ID when the runtime passed no name.
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// One per family, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// The lease key name of the host it runs on (`198.19.3.0-24`), for people to read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

impl Workload {
    pub fn new(
        namespace: Option<&str>,
        name: &str,
        labels: Labels,
        addresses: Vec<IpAddr>,
    ) -> Self {
        Workload {
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_string(),
            name: name.to_string(),
            labels,
            addresses,
            host: String::new(),
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the record holds an address of `subnets` (a host's own: its plugin's).
    pub fn holds_address_in(&self, subnets: &[IpNet]) -> bool {
        self.addresses.iter().any(|a| in_subnets(subnets, a))
    }

    /// The address the record is keyed by in etcd: its first one.
    pub fn key_address(&self) -> Option<IpAddr> {
        self.addresses.first().copied()
    }

    /// Reads a record written by a plugin or another host, checking every part.
    pub fn decode(bytes: &[u8]) -> Result<Workload, String> {
        if bytes.len() > MAX_RECORD {
            return Err(format!(
                "{} bytes, more than a record may hold",
                bytes.len()
            ));
        }
        let w: Workload = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        w.check()?;
        Ok(w)
    }

    pub fn check(&self) -> Result<(), String> {
        check_namespace("namespace", &self.namespace).map_err(|e| e.to_string())?;
        if self.name.is_empty() || self.name.len() > 253 || self.name.contains(char::is_control) {
            return Err(format!(
                "name {:?} is empty, too long or not text",
                self.name
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "{} labels, more than {MAX_LABELS}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            check_key("labels", k).map_err(|e| e.to_string())?;
            check_value(&format!("labels.{k}"), v).map_err(|e| e.to_string())?;
        }
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(format!(
                "{} addresses; a workload has 1 or 2",
                self.addresses.len()
            ));
        }
        Ok(())
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a workload always encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_is_a_hosts_own_when_any_address_is_in_its_subnets() {
        let addrs = vec![
            "198.18.9.5".parse().unwrap(),
            "2001:db8:1::5".parse().unwrap(),
        ];
        let w = Workload::new(None, "w", Labels::new(), addrs);
        let nets = |s: &[&str]| -> Vec<IpNet> { s.iter().map(|n| n.parse().unwrap()).collect() };
        assert!(w.holds_address_in(&nets(&["198.18.1.0/24", "2001:db8:1::/64"])));
        assert!(w.holds_address_in(&nets(&["198.18.9.0/24"])));
        assert!(!w.holds_address_in(&nets(&["198.18.1.0/24", "2001:db8:2::/64"])));
        assert!(!w.holds_address_in(&[]));
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let mut labels = Labels::new();
        labels.insert("app".into(), "web".into());
        let w = Workload::new(None, "web-1", labels, vec!["198.19.3.5".parse().unwrap()]);
        assert_eq!(Workload::decode(w.encode().as_bytes()).unwrap(), w);
        assert_eq!(w.id(), "default/web-1");
        for bad in [
            &br#"{"namespace":"Bad","name":"x","addresses":["198.19.3.5"]}"#[..],
            br#"{"namespace":"a","name":"x","addresses":[]}"#,
            br#"{"namespace":"a","name":"x","addresses":["198.19.3.5"],"labels":{"a b":"c"}}"#,
            br#"{"namespace":"a","name":"x","addresses":["198.19.3.5"],"extra":1}"#,
            b"[]",
        ] {
            assert!(
                Workload::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        /// Whatever another host wrote, reading it returns (never panics), and what it
        /// accepts is a record whose every part was checked.
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(w) = Workload::decode(&bytes) {
                prop_assert!(w.check().is_ok());
            }
        }

        #[test]
        fn json_shaped_records_decode_without_panicking(
            ns in "[a-z-]{0,8}", name in "\\PC{0,12}", key in "[a-zA-Z./_-]{0,10}",
            value in "\\PC{0,8}", addrs in proptest::collection::vec("[0-9a-f.:]{0,16}", 0..6),
        ) {
            let json = serde_json::json!({
                "namespace": ns, "name": name, "labels": {key: value}, "addresses": addrs,
            });
            let _ = Workload::decode(json.to_string().as_bytes());
        }
    }
}
