//! One internal model of an ADD result, a writer per spec version, and a reader for the
//! `prevResult` a runtime hands back on CHECK and DEL (which arrives in the config's version).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use crate::error::{CniError, Result};
use crate::version::Version;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// The netns path for a container-side interface; `None` on the host.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteEntry>,
    /// Passed through from the network config's `dns` as it was given.
    pub dns: Map<String, Value>,
}

impl CniResult {
    /// The result as the asked version spells it.
    pub fn write(&self, version: Version) -> Value {
        match version {
            Version::V0_3_0 | Version::V0_3_1 | Version::V0_4_0 => self.write_v0_4(version),
            Version::V1_0_0 => self.write_v1_0(),
            Version::V1_1_0 => self.write_v1_1(),
        }
    }

    /// 0.3.0 to 0.4.0 share one shape: every IP carries its family as `version`.
    fn write_v0_4(&self, version: Version) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = ip_object(ip);
                let family = if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                o.insert("version".into(), family.into());
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": self.interfaces.iter().map(|i| interface_object(i, false)).collect::<Vec<_>>(),
            "ips": ips,
            "routes": self.routes.iter().map(route_object).collect::<Vec<_>>(),
            "dns": self.dns,
        })
    }

    /// 1.0.0 dropped `ips[].version`.
    fn write_v1_0(&self) -> Value {
        json!({
            "cniVersion": Version::V1_0_0.as_str(),
            "interfaces": self.interfaces.iter().map(|i| interface_object(i, false)).collect::<Vec<_>>(),
            "ips": self.ips.iter().map(|ip| Value::Object(ip_object(ip))).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(route_object).collect::<Vec<_>>(),
            "dns": self.dns,
        })
    }

    /// 1.1.0 added the interfaces' MTU.
    fn write_v1_1(&self) -> Value {
        json!({
            "cniVersion": Version::V1_1_0.as_str(),
            "interfaces": self.interfaces.iter().map(|i| interface_object(i, true)).collect::<Vec<_>>(),
            "ips": self.ips.iter().map(|ip| Value::Object(ip_object(ip))).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(route_object).collect::<Vec<_>>(),
            "dns": self.dns,
        })
    }

    /// Reads a `prevResult` of any supported version; unknown keys are ignored.
    pub fn parse(value: &Value) -> Result<CniResult> {
        let bad = |what: String| CniError::config(format!("prevResult: {what}"));
        let obj = value
            .as_object()
            .ok_or_else(|| bad(format!("{value} is not an object")))?;
        let mut result = CniResult::default();
        for (i, iface) in array(obj, "interfaces").map_err(bad)?.iter().enumerate() {
            let o = iface
                .as_object()
                .ok_or_else(|| bad(format!("interfaces[{i}] = {iface} is not an object")))?;
            result.interfaces.push(Interface {
                name: string(o, "name")
                    .map_err(|e| bad(format!("interfaces[{i}]: {e}")))?
                    .unwrap_or_default(),
                mac: string(o, "mac").map_err(|e| bad(format!("interfaces[{i}]: {e}")))?,
                // A number too big for an MTU is refused, not cut down to a wrong one.
                mtu: match o.get("mtu").and_then(Value::as_u64) {
                    None => None,
                    Some(m) => Some(
                        u32::try_from(m)
                            .map_err(|_| bad(format!("interfaces[{i}].mtu {m} is not an MTU")))?,
                    ),
                },
                sandbox: string(o, "sandbox")
                    .map_err(|e| bad(format!("interfaces[{i}]: {e}")))?
                    .filter(|s| !s.is_empty()),
            });
        }
        for (i, ip) in array(obj, "ips").map_err(bad)?.iter().enumerate() {
            let o = ip
                .as_object()
                .ok_or_else(|| bad(format!("ips[{i}] = {ip} is not an object")))?;
            let address = string(o, "address")
                .map_err(|e| bad(format!("ips[{i}]: {e}")))?
                .ok_or_else(|| bad(format!("ips[{i}] has no address")))?;
            result.ips.push(IpConfig {
                address: address
                    .parse()
                    .map_err(|_| bad(format!("ips[{i}].address {address:?} is not a CIDR")))?,
                gateway: parse_opt_ip(o, "gateway").map_err(|e| bad(format!("ips[{i}]: {e}")))?,
                interface: o
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
            });
        }
        for (i, route) in array(obj, "routes").map_err(bad)?.iter().enumerate() {
            let o = route
                .as_object()
                .ok_or_else(|| bad(format!("routes[{i}] = {route} is not an object")))?;
            let dst = string(o, "dst")
                .map_err(|e| bad(format!("routes[{i}]: {e}")))?
                .ok_or_else(|| bad(format!("routes[{i}] has no dst")))?;
            result.routes.push(RouteEntry {
                dst: dst
                    .parse()
                    .map_err(|_| bad(format!("routes[{i}].dst {dst:?} is not a CIDR")))?,
                gw: parse_opt_ip(o, "gw").map_err(|e| bad(format!("routes[{i}]: {e}")))?,
            });
        }
        if let Some(Value::Object(dns)) = obj.get("dns") {
            result.dns = dns.clone();
        }
        Ok(result)
    }
}

fn interface_object(i: &Interface, with_mtu: bool) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), i.name.clone().into());
    if let Some(mac) = &i.mac {
        o.insert("mac".into(), mac.clone().into());
    }
    if with_mtu {
        if let Some(mtu) = i.mtu {
            o.insert("mtu".into(), mtu.into());
        }
    }
    if let Some(sandbox) = &i.sandbox {
        o.insert("sandbox".into(), sandbox.clone().into());
    }
    Value::Object(o)
}

fn ip_object(ip: &IpConfig) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("address".into(), ip.address.to_string().into());
    if let Some(gw) = ip.gateway {
        o.insert("gateway".into(), gw.to_string().into());
    }
    if let Some(index) = ip.interface {
        o.insert("interface".into(), index.into());
    }
    o
}

fn route_object(r: &RouteEntry) -> Value {
    let mut o = Map::new();
    o.insert("dst".into(), r.dst.to_string().into());
    if let Some(gw) = r.gw {
        o.insert("gw".into(), gw.to_string().into());
    }
    Value::Object(o)
}

fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> std::result::Result<&'a [Value], String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("{key} = {other} is not an array")),
    }
}

fn string(obj: &Map<String, Value>, key: &str) -> std::result::Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} = {other} is not a string")),
    }
}

fn parse_opt_ip(
    obj: &Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<IpAddr>, String> {
    match string(obj, key)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{key} {s:?} is not an IP address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("aa:bb:cc:dd:ee:01".into()),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:dd:ee:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "198.19.3.2/24".parse().unwrap(),
                gateway: Some("198.19.3.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![RouteEntry {
                dst: "198.19.0.0/16".parse().unwrap(),
                gw: Some("198.19.3.1".parse().unwrap()),
            }],
            dns: Map::new(),
        }
    }

    #[test]
    fn each_version_has_its_shape() {
        let r = sample();
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let out = r.write(v);
            assert_eq!(out["cniVersion"], v.as_str());
            assert_eq!(out["ips"][0]["version"], "4");
            assert!(out["interfaces"][0].get("mtu").is_none());
        }
        let out = r.write(Version::V1_0_0);
        assert!(out["ips"][0].get("version").is_none());
        assert!(out["interfaces"][1].get("mtu").is_none());
        assert_eq!(out["interfaces"][1]["sandbox"], "/run/netns/x");
        let out = r.write(Version::V1_1_0);
        assert_eq!(out["interfaces"][1]["mtu"], 1450);
        assert_eq!(out["ips"][0]["interface"], 1);
        assert!(out["interfaces"][0].get("sandbox").is_none());
    }

    #[test]
    fn reads_back_what_every_writer_wrote() {
        let r = sample();
        for v in crate::version::SUPPORTED {
            let mut back = CniResult::parse(&r.write(v)).unwrap();
            if v < Version::V1_1_0 {
                for (b, i) in back.interfaces.iter_mut().zip(&r.interfaces) {
                    b.mtu = i.mtu;
                }
            }
            assert_eq!(back, r, "{v:?}");
        }
        let err = CniResult::parse(&json!({"interfaces": [{"mtu": 4294968746u64}]})).unwrap_err();
        assert!(err.msg.contains("4294968746"), "{err}");
        let err = CniResult::parse(&json!({"ips": [{"address": "nope"}]})).unwrap_err();
        assert_eq!(err.code, 7);
        assert!(err.msg.contains("\"nope\""), "{err}");
    }
}
