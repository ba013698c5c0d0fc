//! Leases, hosts and configs for the planner's unit tests, and the check that an incremental
//! update gives what the full computation gives.

use crate::backend::Host;
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs};

use super::{desired, diff_applied, diff_tunnel, update};

pub fn cfg(backend: &str) -> NetworkConfig {
    NetworkConfig::parse(&format!(
        r#"{{"Network":"198.19.0.0/16","Backend":{backend}}}"#
    ))
    .unwrap()
}

/// A VXLAN lease with `mac`, a host-gw one without.
pub fn lease(subnet: &str, ip: &str, mac: Option<&str>, rev: i64) -> Lease {
    Lease {
        subnet: subnet.parse().unwrap(),
        subnet6: None,
        attrs: LeaseAttrs {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: if mac.is_some() { "vxlan" } else { "host-gw" }.into(),
            backend_data: mac.map(|m| serde_json::json!({"VNI": 1, "VtepMAC": m})),
            backend_v6_data: None,
            weft_backends: None,
        },
        expiration: None,
        etcd_lease_id: None,
        mod_revision: rev,
    }
}

/// A lease of the toy backend (see `backend::toy`) whose identity is `id`.
pub fn toy_lease(subnet: &str, ip: &str, id: &str, rev: i64) -> Lease {
    let mut l = lease(subnet, ip, None, rev);
    l.attrs.backend_type = "toy".into();
    l.attrs.backend_data = Some(serde_json::json!({ "id": id }));
    l
}

/// The config's backend on [`host`], alone.
pub fn run(c: &NetworkConfig) -> super::Speakers {
    super::Speakers::one(c.backend.clone(), host())
}

/// Host 198.18.0.1 on 198.18.0.0/24, external interface 2, the backend's device 7.
pub fn host() -> Host {
    Host {
        public_ip: "198.18.0.1".parse().unwrap(),
        ext_index: 2,
        ext_networks: vec!["198.18.0.0/24".parse().unwrap()],
        device: Some(7),
        other_public_ip: None,
    }
}

/// Moves between every pair of `states` with [`update`] and checks it against the full
/// computation (ops, tunnel change, resulting state), or that it declined a change that
/// meets a lease skipped. Gives how many took the incremental path.
pub fn updates_match_full(c: &NetworkConfig, own: &Lease, states: &[Vec<Lease>]) -> usize {
    let key = |l: &Lease| (l.subnet, l.mod_revision);
    let sorted = |mut t: crate::backend::TunnelChange| {
        t.set.sort_by_key(|p| p.id());
        t.remove.sort_by_key(|p| p.id());
        t
    };
    let mut fast = 0;
    for old in states {
        for new in states {
            let gone: Vec<Lease> = (old.iter())
                .filter(|l| !new.iter().any(|n| key(n) == key(l)))
                .cloned()
                .collect();
            let added: Vec<Lease> = (new.iter())
                .filter(|l| !old.iter().any(|o| key(o) == key(l)))
                .cloned()
                .collect();
            let before = desired(c, &run(c), own, old);
            let want = desired(c, &run(c), own, new);
            let mut applied = before.clone();
            match update(c, &run(c), own, &mut applied, &gone, &added) {
                Some(u) => {
                    fast += 1;
                    assert_eq!(u.ops, diff_applied(&want, &before), "{old:?} -> {new:?}");
                    assert_eq!(
                        sorted(u.tunnel),
                        sorted(diff_tunnel(&want.tunnel, before.tunnel.values())),
                        "{old:?} -> {new:?}"
                    );
                    assert_eq!(applied, want, "{old:?} -> {new:?}");
                }
                None => assert!(
                    !before.skipped.is_empty() || !want.skipped.is_empty(),
                    "declined a plain change {old:?} -> {new:?}"
                ),
            }
        }
    }
    fast
}
