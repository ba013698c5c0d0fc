//! flannel's etcd layout as the tests write and read it: where the leases live, their keys,
//! and a host's lease attributes.

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use weft::lease::LeaseAttrs;

/// The network config's key under flannel's default prefix.
pub const CONFIG_KEY: &str = "/coreos.com/network/config";
/// Where flannel (and weft) keep the leases.
pub const SUBNETS_PREFIX: &str = "/coreos.com/network/subnets/";

/// The full key of the lease of `subnet` (and `subnet6` for a dual-stack lease).
pub fn key(subnet: Ipv4Net, subnet6: Option<Ipv6Net>) -> String {
    format!(
        "{SUBNETS_PREFIX}{}",
        weft::subnet::lease_key_name(subnet, subnet6)
    )
}

/// VXLAN host number `i` of address group `group`: public IP 198.18.`group`.`i`, VNI 1, VTEP
/// MAC 0e:2a:00:00:`group`:`i`. Each test file takes a group of its own, so addresses seen in
/// a failure tell which file wrote them.
pub fn vxlan_host(group: u8, i: u8) -> LeaseAttrs {
    weft::backend::vxlan::lease_attrs(
        Ipv4Addr::new(198, 18, group, i),
        1,
        &format!("0e:2a:00:00:{group:02x}:{i:02x}"),
    )
}
