//! Where a network's keys live in etcd: flannel's `<prefix>/config` and
//! `<prefix>/subnets/<lease key name>`, and weft's own keys under `<prefix>/weft/`, which
//! flannel never reads.

use ipnet::{Ipv4Net, Ipv6Net};

use crate::lease::Lease;
use crate::subnet::lease_key_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Without a trailing slash.
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub(crate) fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The key of the lease of `subnet` (and `subnet6`, dual stack).
    pub(crate) fn subnet_key(&self, subnet: Ipv4Net, subnet6: Option<Ipv6Net>) -> String {
        format!(
            "{}{}",
            self.subnets_prefix(),
            lease_key_name(subnet, subnet6)
        )
    }

    pub(crate) fn lease_key(&self, lease: &Lease) -> String {
        self.subnet_key(lease.subnet, lease.subnet6)
    }

    /// The lease key name of a full key under the subnets prefix; `None` for other keys and
    /// for keys deeper than a lease (not ours to judge).
    pub(crate) fn lease_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(&self.subnets_prefix())?;
        (!name.contains('/')).then_some(name)
    }

    pub(crate) fn weft_prefix(&self) -> String {
        format!("{}/weft/", self.prefix)
    }

    pub(crate) fn status_prefix(&self) -> String {
        format!("{}status/", self.weft_prefix())
    }

    pub(crate) fn status_key(&self, name: &str) -> String {
        format!("{}{name}", self.status_prefix())
    }

    /// The config the network runs (see [`crate::live::record`]).
    pub(crate) fn running_key(&self) -> String {
        format!("{}config", self.weft_prefix())
    }

    pub(crate) fn gone_prefix(&self) -> String {
        format!("{}gone/", self.weft_prefix())
    }

    pub(crate) fn gone_key(&self, name: &str) -> String {
        format!("{}{name}", self.gone_prefix())
    }

    /// Network policy's keys: `policies/<namespace>/<name>`, `namespaces/<name>` and
    /// `workloads/<address>` below it.
    pub(crate) fn policy_prefix(&self) -> String {
        format!("{}policy/", self.weft_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_flannels_and_weft_keeps_out_of_its_way() {
        let l = Layout::new("/coreos.com/network/");
        assert_eq!(l.prefix(), "/coreos.com/network");
        assert_eq!(l.config_key(), "/coreos.com/network/config");
        let key = l.subnet_key("198.19.5.0/24".parse().unwrap(), None);
        assert_eq!(key, "/coreos.com/network/subnets/198.19.5.0-24");
        assert_eq!(l.lease_name(&key), Some("198.19.5.0-24"));
        assert_eq!(l.lease_name("/coreos.com/network/subnets/a/b"), None);
        assert_eq!(l.lease_name("/coreos.com/network/config"), None);
        let status = l.status_key("198.19.5.0-24");
        assert_eq!(status, "/coreos.com/network/weft/status/198.19.5.0-24");
        assert!(!status.starts_with(&l.subnets_prefix()));
        assert_eq!(
            l.gone_key("198.19.5.0-24"),
            "/coreos.com/network/weft/gone/198.19.5.0-24"
        );
    }
}
