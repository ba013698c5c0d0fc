//! The host-gw backend: no device and no encapsulation; every peer's subnet is routed via the
//! peer's public IP on the external interface, so all hosts must share one L2 network.

use serde_json::{Map, Value};

use super::{Backend, Summary};
use crate::subnet::Family;
#[cfg(feature = "daemon")]
use {
    super::{DeviceSpec, Host, HostSecrets, Peer, PeerObjects},
    crate::iface::ExtIface,
    crate::netlink::Mac,
};

/// The backend's name in `Backend.Type` and a lease's `BackendType`.
pub const TYPE: &str = "host-gw";

#[derive(Debug, Clone, Copy)]
pub struct HostGw;

/// host-gw has no settings: this is all of it.
pub const BACKEND: HostGw = HostGw;

/// Attributes of a host-gw host: no `BackendData`, as in flannel.
pub fn lease_attrs(public_ip: std::net::Ipv4Addr) -> crate::lease::LeaseAttrs {
    crate::lease::LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: TYPE.into(),
        backend_data: None,
        backend_v6_data: None,
        weft_backends: None,
    }
}

/// A host-gw lease carries no data to show.
pub const SUMMARY: Option<Summary> = None;

impl Backend for HostGw {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    /// No settings of its own.
    fn params(&self) -> Map<String, Value> {
        Map::new()
    }

    fn mtu_overhead(&self, _family: Family) -> u32 {
        0
    }

    /// Peers route to the public IP, so it must be an address of this host's interface.
    #[cfg(feature = "daemon")]
    fn usable(&self, ext: &ExtIface, family: Family) -> Result<(), String> {
        let Some(public_ip) = ext.public(family) else {
            return Ok(());
        };
        if ext.addresses_of(family).contains(&public_ip) {
            return Ok(());
        }
        let flag = match family {
            Family::V4 => "--public-ip",
            Family::V6 => "--public-ipv6",
        };
        Err(format!(
            "host-gw needs the public IP on the external interface, but {public_ip} is not an address of {}; drop {flag} or pick the interface that holds it",
            ext.name
        ))
    }

    #[cfg(feature = "daemon")]
    fn device(
        &self,
        _: &ExtIface,
        _: Option<&str>,
        _: Family,
        _: &HostSecrets,
    ) -> Option<DeviceSpec> {
        None
    }

    #[cfg(feature = "daemon")]
    fn peer(&self, host: &Host, peer: &Peer) -> Result<PeerObjects, String> {
        let public_ip = peer.public_ip;
        // The kernel refuses a gateway that is not on a connected network, so such a route
        // would fail on every reconciliation and keep this host from ever being programmed.
        if !host.reaches_directly(public_ip) {
            return Err(format!(
                "PublicIP {public_ip} is not on a network of the external interface; host-gw needs every host on one L2"
            ));
        }
        Ok(PeerObjects {
            route: Some(host.direct_route(peer.subnet, public_ip)),
            ..PeerObjects::default()
        })
    }

    #[cfg(feature = "daemon")]
    fn lease_data(&self, _: Option<&DeviceSpec>, _: Option<Mac>) -> Option<Value> {
        None
    }
}
