//! A backend that exists only in the unit tests, to show that a backend with a device kind and
//! per-peer objects of its own plugs in as a module and one registry line: the planner, the
//! diff and the incremental update handle its peers without naming its types. Its device
//! holds its peers in memory.

use std::any::Any;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{
    Backend, Device, DeviceError, DeviceKind, DevicePeer, DeviceSpec, Host, HostSecrets, Identity,
    Peer, PeerId, PeerObjects, Summary, Tunnel, TunnelChange, TunnelPeer,
};
use crate::iface::ExtIface;
use crate::json::ConfigErrors;
use crate::netlink::{Mac, Netlink, Route, RouteScope};
use crate::subnet::Family;

pub const TYPE: &str = "toy";
pub const SUMMARY: Option<Summary> = None;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyConfig;

impl ToyConfig {
    pub fn parse(_: &Map<String, Value>) -> Result<ToyConfig, ConfigErrors> {
        Ok(ToyConfig)
    }
}

/// A toy peer: its id (from the lease's `{"id": ...}`), where it is reached and its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyPeer {
    pub id: String,
    pub at: IpAddr,
    pub subnet: IpNet,
}

impl DevicePeer for ToyPeer {
    fn id(&self) -> PeerId {
        self.id.as_bytes().to_vec()
    }
    fn same(&self, other: &dyn DevicePeer) -> bool {
        other.as_any().downcast_ref::<ToyPeer>() == Some(self)
    }
    fn describe(&self) -> String {
        format!("toy peer {} at {} for {}", self.id, self.at, self.subnet)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The toy device: its peers live in `peers`, shared with every tunnel made for it.
#[derive(Debug, Default)]
pub struct ToyDevice {
    pub peers: Arc<Mutex<BTreeMap<PeerId, TunnelPeer>>>,
}

impl DeviceKind for ToyDevice {
    fn ensure(
        &self,
        _: &mut Netlink,
        _: &DeviceSpec,
        _: Option<Mac>,
    ) -> Result<Device, DeviceError> {
        Ok(Device {
            index: 7,
            mac: None,
            mtu: 1400,
            created: false,
        })
    }
    fn tunnel(&self, _: &DeviceSpec) -> Option<Box<dyn Tunnel>> {
        Some(Box::new(ToyTunnel(self.peers.clone())))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct ToyTunnel(Arc<Mutex<BTreeMap<PeerId, TunnelPeer>>>);

impl Tunnel for ToyTunnel {
    fn read(&mut self, _: &mut Netlink) -> Result<Vec<TunnelPeer>, DeviceError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    fn write(
        &mut self,
        _: &mut Netlink,
        change: &TunnelChange,
        _: &dyn Fn(&PeerId) -> bool,
    ) -> Result<Vec<PeerId>, DeviceError> {
        let mut peers = self.0.lock().unwrap();
        for p in &change.set {
            peers.insert(p.id(), p.clone());
        }
        for p in &change.remove {
            peers.remove(&p.id());
        }
        Ok(Vec::new())
    }
}

impl Backend for ToyConfig {
    fn type_name(&self) -> &'static str {
        TYPE
    }
    fn params(&self) -> Map<String, Value> {
        Map::new()
    }
    fn mtu_overhead(&self, _: Family) -> u32 {
        100
    }
    fn device(
        &self,
        ext: &ExtIface,
        _: Option<&str>,
        _: Family,
        _: &HostSecrets,
    ) -> Option<DeviceSpec> {
        Some(DeviceSpec {
            name: "toy0".into(),
            mtu: ext.mtu - 100,
            kind: Arc::new(ToyDevice::default()),
        })
    }
    fn identity(&self, data: Option<&Value>) -> Option<Identity> {
        Some(Identity {
            what: "toy id",
            value: data?.get("id")?.as_str()?.to_string(),
        })
    }
    fn peer(&self, _: &Host, peer: &Peer) -> Result<PeerObjects, String> {
        let id = self.identity(peer.data).ok_or("no toy id")?.value;
        Ok(PeerObjects {
            tunnel: Some(TunnelPeer(Arc::new(ToyPeer {
                id,
                at: peer.public_ip,
                subnet: peer.subnet,
            }))),
            ..PeerObjects::default()
        })
    }
    fn device_routes(&self, host: &Host, network: IpNet) -> Vec<Route> {
        let mut r = Route::new(network).scope(RouteScope::Link);
        r.oif = host.device;
        vec![r]
    }
    fn lease_data(&self, _: Option<&DeviceSpec>, _: Option<Mac>) -> Option<Value> {
        Some(serde_json::json!({"id": "this host"}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testing::{cfg, run, toy_lease, updates_match_full};
    use crate::plan::{desired, diff_tunnel};

    #[test]
    fn a_new_backend_plugs_in_and_its_peers_go_through_the_one_diff() {
        let c = cfg(r#"{"Type":"toy"}"#);
        let own = toy_lease("198.19.1.0/24", "198.18.0.1", "me", 1);
        let a = toy_lease("198.19.2.0/24", "198.18.0.2", "a", 2);
        let b = toy_lease("198.19.3.0/24", "198.18.0.3", "b", 3);
        let twin = toy_lease("198.19.4.0/24", "198.18.0.4", "a", 4);
        let mine = toy_lease("198.19.5.0/24", "198.18.0.5", "me", 5);
        let d = desired(&c, &run(&c), &own, &[own.clone(), a.clone(), b, twin, mine]);
        assert_eq!((d.peers, d.tunnel.len(), d.routes.len()), (2, 2, 1));
        let reasons: Vec<&str> = d.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "toy id is already used by an older lease",
                "toy id me is this host's own"
            ]
        );

        // The device's own code reads and writes its peers; the core only diffs them.
        let dev = ToyDevice::default();
        let spec = c
            .backend
            .backend()
            .device(&ext(), None, Family::V4, &HostSecrets::default())
            .unwrap();
        let mut tunnel = dev.tunnel(&spec).unwrap();
        let mut nl = Netlink::new().unwrap();
        let change = diff_tunnel(&d.tunnel, &tunnel.read(&mut nl).unwrap());
        assert_eq!((change.set.len(), change.remove.len()), (2, 0));
        tunnel.write(&mut nl, &change, &|_| false).unwrap();
        assert!(diff_tunnel(&d.tunnel, &tunnel.read(&mut nl).unwrap()).is_empty());

        // Lease events move its peers incrementally, as they do VXLAN's objects.
        let a_moved = toy_lease("198.19.2.0/24", "198.18.0.22", "a", 6);
        let states = [
            vec![],
            vec![a.clone()],
            vec![a_moved],
            vec![a.clone(), toy_lease("198.19.9.0/24", "198.18.0.9", "a", 7)],
        ];
        assert_eq!(updates_match_full(&c, &own, &states), 9);
    }

    fn ext() -> ExtIface {
        ExtIface {
            index: 2,
            name: "eth0".into(),
            mtu: 1500,
            iface_addr: "198.18.0.1".parse().unwrap(),
            public_ip: "198.18.0.1".parse().unwrap(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
            networks: vec!["198.18.0.0/24".parse().unwrap()],
            v6: None,
        }
    }
}
