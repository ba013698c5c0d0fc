//! The plugin's own integration tests (`cni/tests`): a simulated "host" with its own
//! namespace, subnet.env (as weftd would write it), data dir and bridge, and the plugin run as
//! a runtime runs it (CNI_* variables, config on stdin, inside the host's namespace).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::cmd::{unique, Output};
use crate::netns::Netns;

/// What the plugin's tests read from a namespace beyond the shared guard: addresses and
/// link details as iproute2's JSON shows them.
pub trait NetnsExt {
    /// `ip -j -n <ns> <args>` parsed.
    fn ip_json(&self, args: &[&str]) -> Value;
    /// The IPv4 addresses (with prefix) of a device.
    fn addrs(&self, dev: &str) -> Vec<String>;
    /// `ip -d link show dev <dev>` as JSON, or `None` when there is no such device.
    fn link(&self, dev: &str) -> Option<Value>;
    /// The global IPv6 addresses of a device as iproute2's `addr_info` objects (`local`,
    /// `prefixlen`, and flags such as `tentative` or `dadfailed` when set).
    fn addrs6(&self, dev: &str) -> Vec<Value>;
    /// A sysctl of this namespace, read from /proc/sys (e.g. "net/ipv6/conf/all/forwarding").
    fn sysctl(&self, key: &str) -> String;
}

impl NetnsExt for Netns {
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).expect("ip -j prints JSON")
    }

    fn addrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["-4", "addr", "show", "dev", dev]);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    fn addrs6(&self, dev: &str) -> Vec<Value> {
        let v = self.ip_json(&["-6", "addr", "show", "dev", dev, "scope", "global"]);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            // iproute2 lists the addresses the filter left out as empty objects.
            .filter(|a| a.get("local").is_some())
            .collect()
    }

    fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{key}");
        let out = self.exec(&["cat", &path]);
        assert!(
            out.status.success(),
            "cannot read {path} in {}",
            self.name()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn link(&self, dev: &str) -> Option<Value> {
        let out = self.try_ip(&["-j", "-d", "link", "show", "dev", dev]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
        v.as_array().and_then(|a| a.first().cloned())
    }
}

pub const NETWORK: &str = "198.19.0.0/16";
/// The IPv6 overlay network of the dual-stack tests; hosts get /64s (or smaller) inside it.
pub const NETWORK6: &str = "2001:db8::/32";
pub const MTU: u32 = 1400;

/// What one plugin run printed and how it ended, read as a CNI result or error.
impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns the printed result (Null when nothing was printed).
    pub fn ok(self) -> Value {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a CNI error with `code` and returns its message.
    pub fn err(self, code: u64) -> String {
        assert_ne!(
            self.code, 0,
            "plugin succeeded where it should fail: {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"], code, "wrong error code: {v}");
        v["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// Runs a CNI plugin binary the way a runtime does, inside the network namespace at `netns`
/// (the "host"), with `vars` and nothing else of this process's environment but a PATH.
pub fn exec_plugin(binary: &Path, netns: &Path, vars: &[(&str, String)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Output::from(crate::cmd::with_stdin(&mut cmd, stdin))
}

/// The addresses reserved in one network's IPAM store `dir` (the files whose names are
/// addresses), sorted; none when the store does not exist.
pub fn reservations(dir: &Path) -> BTreeSet<IpAddr> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A simulated host: its own namespace, subnet.env, data dir, bridge and network name.
pub struct Host {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    pub network: String,
}

impl Host {
    /// A host whose subnet is `subnet` (e.g. "198.19.5.0/24"), or none yet when `None`.
    pub fn new(subnet: Option<&str>) -> Host {
        let host = Host {
            ns: Netns::new("h"),
            dir: tempfile::tempdir().expect("tempdir"),
            bridge: unique("b"),
            network: unique("net"),
        };
        if let Some(s) = subnet {
            host.write_subnet_env(s);
        }
        host
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn network_dir(&self) -> PathBuf {
        self.data_dir().join(&self.network)
    }

    /// Writes subnet.env as weftd would for a lease of `subnet`.
    pub fn write_subnet_env(&self, subnet: &str) {
        self.write_subnet_env_dual(Some(subnet), None);
    }

    /// A host with IPv4 and IPv6 subnets (e.g. "198.19.5.0/24", "2001:db8:5::/64"), or one
    /// family alone when the other is `None`.
    pub fn new_dual(v4: Option<&str>, v6: Option<&str>) -> Host {
        let host = Host::new(None);
        host.write_subnet_env_dual(v4, v6);
        host
    }

    /// Writes subnet.env as weftd would for a lease of either family or both, in flannel's
    /// order: each subnet as its first address with its prefix.
    pub fn write_subnet_env_dual(&self, v4: Option<&str>, v6: Option<&str>) {
        let mut text = String::new();
        if let Some(subnet) = v4 {
            let net: ipnet::Ipv4Net = subnet.parse().unwrap();
            let gw = std::net::Ipv4Addr::from(u32::from(net.network()) + 1);
            text += &format!(
                "FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={gw}/{}\n",
                net.prefix_len()
            );
        }
        if let Some(subnet) = v6 {
            let net: ipnet::Ipv6Net = subnet.parse().unwrap();
            let gw = std::net::Ipv6Addr::from(u128::from(net.network()) + 1);
            text += &format!(
                "FLANNEL_IPV6_NETWORK={NETWORK6}\nFLANNEL_IPV6_SUBNET={gw}/{}\n",
                net.prefix_len()
            );
        }
        text += &format!("FLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=true\n");
        std::fs::write(self.subnet_file(), text).unwrap();
    }

    /// The plugin's config for this host at `version`.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.network,
            "type": "weft",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
            "bridge": self.bridge,
        })
    }

    /// Runs the weft plugin in this host.
    pub fn plugin(&self, command: &str, id: &str, netns: Option<&Path>, conf: &Value) -> Output {
        self.plugin_with(command, id, netns, "eth0", conf, &[])
    }

    pub fn plugin_with(
        &self,
        command: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
        extra: &[(&str, String)],
    ) -> Output {
        let mut vars = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_IFNAME", ifname.to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ];
        if let Some(n) = netns {
            vars.push(("CNI_NETNS", n.display().to_string()));
        }
        vars.extend(extra.iter().cloned());
        exec_plugin(
            &crate::bins::plugin(),
            &self.ns.path(),
            &vars,
            conf.to_string().as_bytes(),
        )
    }

    /// Addresses reserved on disk (file names that are addresses), sorted.
    pub fn reservations(&self) -> BTreeSet<IpAddr> {
        reservations(&self.network_dir())
    }

    /// weft's attachment records left on disk.
    pub fn records(&self) -> usize {
        std::fs::read_dir(self.network_dir().join("weft"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}
