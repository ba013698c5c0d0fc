//! The allocator's decisions against the in-memory registry: what a host gets, keeps and
//! loses, what an operator may change, and what happens when hosts race.

mod acquire;
mod ipv6;
mod races;
mod renew;
mod reserve;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use super::{Allocator, Previous};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs};
use crate::store::registry::memory::MemRegistry;
use crate::store::registry::Registry;
use crate::store::StoreError;

/// 198.19.1.0/24 to 198.19.255.0/24 (flannel's default range skips the first subnet).
const V4: &str = r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "host-gw"}}"#;
/// The same with IPv6: /64s of a /56.
const DUAL: &str = r#"{"Network": "198.19.0.0/16", "EnableIPv6": true, "IPv6Network": "2001:db8:100::/56", "Backend": {"Type": "host-gw"}}"#;
const TTL: Duration = Duration::from_secs(30);

fn cfg(json: &str) -> NetworkConfig {
    NetworkConfig::parse(json).expect("a valid test config")
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("a test subnet")
}

fn net6(s: &str) -> Ipv6Net {
    s.parse().expect("a test IPv6 subnet")
}

/// Host `n`'s attributes: PublicIP 198.18.0.n.
fn host(n: u8) -> LeaseAttrs {
    crate::backend::vxlan::lease_attrs(
        Ipv4Addr::new(198, 18, 0, n),
        1,
        &format!("0e:00:00:00:00:{n:02x}"),
    )
}

/// Host `n` with a public IPv6 address too.
fn host6(n: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n.into())),
        ..host(n)
    }
}

/// An allocator that takes the first free subnet, so its choices can be named in advance.
fn first_free(reg: &MemRegistry) -> Allocator<'_, MemRegistry> {
    Allocator { reg, pick: |_| 0 }
}

fn prev(subnet: &str) -> Previous {
    Previous::from(Some(net(subnet)))
}

/// The full key of a lease of `subnet` (and `subnet6`).
fn key(reg: &MemRegistry, subnet: &str, subnet6: Option<&str>) -> String {
    reg.layout().subnet_key(net(subnet), subnet6.map(net6))
}

/// Writes a lease as another writer would (on etcd lease `id`, or a reservation); its
/// revision.
fn put(reg: &MemRegistry, key: &str, attrs: &LeaseAttrs, id: Option<i64>) -> i64 {
    reg.state().put(key, &attrs.to_json(), id)
}

/// Another host's lease of `subnet` on an etcd lease of its own.
fn other_host(reg: &MemRegistry, n: u8, subnet: &str, subnet6: Option<&str>) -> (i64, i64) {
    let id = reg.state().grant(TTL.as_secs() as i64);
    let rev = put(reg, &key(reg, subnet, subnet6), &host(n), Some(id));
    (id, rev)
}

/// The keys under the subnets prefix, by name.
fn lease_names(reg: &MemRegistry) -> Vec<String> {
    let prefix = reg.layout().subnets_prefix();
    let state = reg.state();
    let names = state.keys.keys().filter_map(|k| k.strip_prefix(&prefix));
    names.map(str::to_string).collect()
}

async fn acquire(reg: &MemRegistry, cfg: &NetworkConfig, attrs: &LeaseAttrs) -> Lease {
    first_free(reg)
        .acquire(cfg, attrs, Previous::default(), TTL)
        .await
        .expect("a lease")
}

/// Stores the network config, for the operator actions that check against it.
fn store_config(reg: &MemRegistry, json: &str) {
    let key = reg.layout().config_key();
    reg.state().put(&key, json, None);
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, StoreError>) -> StoreError {
    r.expect_err("an error")
}
