//! The network config on stdin: the keys weft reads, their defaults and their validation.
//! Garbage is code 6, an unsupported `cniVersion` code 1, a bad value code 7 naming it;
//! unknown keys are ignored, as runtimes and chains add their own.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Map, Value};
use weft::firewall::policy::selector::{check_key, check_value, Labels};

use crate::env::validate_ifname;
use crate::error::{code, CniError, Result};
use crate::version::Version;

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub bridge: String,
    /// `None`: FLANNEL_MTU from subnet.env.
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub is_default_gateway: bool,
    pub dns: Map<String, Value>,
    /// `runtimeConfig.ips`: addresses the runtime asks for.
    pub runtime_ips: Vec<IpAddr>,
    /// `runtimeConfig.mac`.
    pub runtime_mac: Option<String>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments` (or the 1.1.0 tag's `cni.dev/attachments`).
    pub valid_attachments: Option<HashSet<(String, String)>>,
    /// `args.cni.labels` (`[{"key": "app", "value": "web"}]`): the workload's labels, which
    /// network policies select by.
    pub labels: Labels,
}

/// Decodes stdin into a JSON object (code 6 on failure).
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        let shown = String::from_utf8_lossy(&stdin[..stdin.len().min(64)]).into_owned();
        CniError::new(
            code::DECODE,
            format!("the network config on stdin is not JSON ({e}): {shown:?}"),
        )
    })?;
    match value {
        Value::Object(o) => Ok(o),
        other => Err(CniError::new(
            code::DECODE,
            format!("the network config on stdin is not a JSON object: {other}"),
        )),
    }
}

/// The `cniVersion` a decoded config asks for, if it is a string.
pub fn asked_version(obj: &Map<String, Value>) -> Option<&str> {
    obj.get("cniVersion").and_then(Value::as_str)
}

impl NetConf {
    pub fn parse(obj: &Map<String, Value>) -> Result<NetConf> {
        let cni_version = Version::require(asked_version(obj))?;
        match obj.get("type") {
            Some(Value::String(t)) if !t.is_empty() => {}
            Some(other) => {
                return Err(CniError::config(format!(
                    "type = {other} is not a plugin name (weft's is \"weft\")"
                )))
            }
            None => return Err(CniError::config("the network config has no type")),
        }
        let name = match obj.get("name") {
            Some(Value::String(n)) => n.clone(),
            Some(other) => return Err(CniError::config(format!("name = {other} is not a string"))),
            None => return Err(CniError::config("the network config has no name")),
        };
        // The name is a directory under dataDir, as host-local uses it.
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(CniError::config(format!(
                "name = {name:?} cannot name a directory under dataDir"
            )));
        }
        let subnet_file = opt_path(obj, "subnetFile")?.unwrap_or(DEFAULT_SUBNET_FILE.into());
        let data_dir = opt_path(obj, "dataDir")?.unwrap_or(DEFAULT_DATA_DIR.into());
        let bridge = opt_string(obj, "bridge")?.unwrap_or(DEFAULT_BRIDGE.into());
        validate_ifname(&bridge).map_err(|why| {
            CniError::config(format!(
                "bridge = {bridge:?} is not a valid interface name: {why}"
            ))
        })?;
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(m @ 68..=65535) => Some(m as u32),
                _ => {
                    return Err(CniError::config(format!(
                        "mtu = {v} is not a whole number between 68 and 65535"
                    )))
                }
            },
        };
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(d)) => d.clone(),
            Some(other) => return Err(CniError::config(format!("dns = {other} is not an object"))),
        };
        let (runtime_ips, runtime_mac) = runtime_config(obj)?;
        let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
        Ok(NetConf {
            cni_version,
            name,
            subnet_file,
            data_dir,
            bridge,
            mtu,
            hairpin_mode: opt_bool(obj, "hairpinMode")?,
            is_default_gateway: opt_bool(obj, "isDefaultGateway")?,
            dns,
            runtime_ips,
            runtime_mac,
            prev_result,
            valid_attachments: valid_attachments(obj)?,
            labels: labels(obj)?,
        })
    }

    /// The directory of this network's reservations, shared with host-local.
    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(CniError::config(format!(
            "{key} = {other} is not a non-empty string"
        ))),
    }
}

fn opt_path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>> {
    Ok(opt_string(obj, key)?.map(PathBuf::from))
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(CniError::config(format!(
            "{key} = {other} is not true or false"
        ))),
    }
}

/// `runtimeConfig.ips` (CIDRs or bare addresses, as the "ips" capability allows) and
/// `runtimeConfig.mac`.
fn runtime_config(obj: &Map<String, Value>) -> Result<(Vec<IpAddr>, Option<String>)> {
    let Some(rc) = obj.get("runtimeConfig").filter(|v| !v.is_null()) else {
        return Ok((Vec::new(), None));
    };
    let rc = rc
        .as_object()
        .ok_or_else(|| CniError::config(format!("runtimeConfig = {rc} is not an object")))?;
    let mut ips = Vec::new();
    match rc.get("ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for item in list {
                let parsed = item.as_str().and_then(|s| {
                    let addr = s.split_once('/').map_or(s, |(a, _)| a);
                    addr.parse::<IpAddr>().ok()
                });
                ips.push(parsed.ok_or_else(|| {
                    CniError::config(format!("runtimeConfig.ips: {item} is not an IP address"))
                })?);
            }
        }
        Some(other) => {
            return Err(CniError::config(format!(
                "runtimeConfig.ips = {other} is not a list"
            )))
        }
    }
    let mac = match rc.get("mac") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            crate::link::parse_mac(m).map_err(|_| {
                CniError::config(format!("runtimeConfig.mac = {m:?} is not a MAC address"))
            })?;
            Some(m.clone())
        }
        Some(other) => {
            return Err(CniError::config(format!(
                "runtimeConfig.mac = {other} is not a MAC address"
            )))
        }
    };
    Ok((ips, mac))
}

/// `args.cni.labels`, the CNI conventions' list of key/value pairs; each label is checked
/// as Kubernetes checks a pod's.
fn labels(obj: &Map<String, Value>) -> Result<Labels> {
    let found = (obj.get("args"))
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("labels"));
    let Some(list) = found.filter(|v| !v.is_null()) else {
        return Ok(Labels::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| CniError::config(format!("args.cni.labels = {list} is not a list")))?;
    let mut out = Labels::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("args.cni.labels[{i}]");
        let pair = item
            .as_object()
            .and_then(|o| Some((o.get("key")?.as_str()?, o.get("value")?.as_str()?)));
        let (k, v) = pair.ok_or_else(|| {
            CniError::config(format!(
                "{field} = {item} is not {{\"key\": …, \"value\": …}}"
            ))
        })?;
        check_key(&format!("{field}.key"), k)
            .and_then(|()| check_value(&format!("{field}.value"), v))
            .map_err(|e| CniError::config(e.to_string()))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn valid_attachments(obj: &Map<String, Value>) -> Result<Option<HashSet<(String, String)>>> {
    let mut found = None;
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let Some(v) = obj.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let list = v
            .as_array()
            .ok_or_else(|| CniError::config(format!("{key} = {v} is not a list")))?;
        let set = found.get_or_insert_with(HashSet::new);
        for item in list {
            let pair = item.as_object().and_then(|o| {
                Some((
                    o.get("containerID")?.as_str()?.to_string(),
                    o.get("ifname")?.as_str()?.to_string(),
                ))
            });
            set.insert(pair.ok_or_else(|| {
                CniError::config(format!(
                    "{key}: {item} is not an object with containerID and ifname"
                ))
            })?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NetConf> {
        NetConf::parse(v.as_object().unwrap())
    }

    #[test]
    fn defaults() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "weft", "x": 1})).unwrap();
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.network_dir(), PathBuf::from("/var/lib/cni/networks/n"));
        assert_eq!(c.bridge, "cni0");
        assert_eq!(c.mtu, None);
        assert!(!c.hairpin_mode && !c.is_default_gateway);
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn bad_values_are_code_7_and_named() {
        let base = json!({"cniVersion": "1.0.0", "name": "n", "type": "weft"});
        for (key, value, needle) in [
            ("mtu", json!(20), "mtu = 20"),
            ("mtu", json!("x"), "mtu = \"x\""),
            ("bridge", json!("a b"), "\"a b\""),
            ("hairpinMode", json!("yes"), "hairpinMode = \"yes\""),
            ("name", json!("../x"), "\"../x\""),
            ("runtimeConfig", json!({"ips": ["1.2.3"]}), "\"1.2.3\""),
            ("runtimeConfig", json!({"mac": "zz"}), "\"zz\""),
            (
                "cni.dev/valid-attachments",
                json!([1]),
                "cni.dev/valid-attachments",
            ),
            (
                "args",
                json!({"cni": {"labels": [{"key": "app", "value": "a b"}]}}),
                "args.cni.labels[0].value",
            ),
            (
                "args",
                json!({"cni": {"labels": {"app": "x"}}}),
                "args.cni.labels",
            ),
        ] {
            let mut v = base.clone();
            v[key] = value;
            let err = parse(v).unwrap_err();
            assert_eq!(err.code, 7, "{key}");
            assert!(err.msg.contains(needle), "{key}: {err}");
        }
        assert_eq!(decode(b"{nope").unwrap_err().code, 6);
        assert_eq!(decode(b"[1]").unwrap_err().code, 6);
        assert_eq!(parse(json!({"cniVersion": "9.0.0"})).unwrap_err().code, 1);
    }

    #[test]
    fn gc_takes_both_attachment_keys() {
        let c = parse(json!({
            "cniVersion": "1.1.0", "name": "n", "type": "weft",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}],
        }))
        .unwrap();
        let set = c.valid_attachments.unwrap();
        assert!(set.contains(&("a".into(), "eth0".into())));
        assert!(set.contains(&("b".into(), "eth0".into())));
    }
}
