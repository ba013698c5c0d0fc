//! The weft CNI plugin on a lab host, run as a runtime runs it: in the host's namespace, with
//! the CNI_* variables and the network config on stdin. Each container is a namespace of its
//! own, attached with ADD and detached with DEL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::lab::Host;
use crate::netns::Netns;
use crate::plugin::exec_plugin;

/// The plugin configured for one lab host: its subnet.env, an IPAM store of its own and the
/// bridge `cni0`.
pub struct Plugin {
    host_ns: PathBuf,
    pub conf: Value,
}

/// A container the plugin attached: its namespace, id, IPv4 address (and IPv6 address on a
/// dual-stack host), and the MAC of its port on the bridge (the host end of its veth).
pub struct Container {
    pub ns: Netns,
    pub id: String,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    pub port_mac: String,
}

impl Container {
    /// The command prefix that runs a program inside the container.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", self.ns.name()]
            .map(String::from)
            .to_vec()
    }
}

impl Plugin {
    pub fn new(host: &Host, data_dir: &Path) -> Plugin {
        Plugin {
            host_ns: host.ns.path(),
            conf: json!({
                "cniVersion": "1.0.0",
                "name": format!("weftlab{}", std::process::id()),
                "type": "weft",
                "subnetFile": host.subnet_file,
                "dataDir": data_dir,
                "bridge": "cni0",
            }),
        }
    }

    /// Runs the plugin's `command` for container `id` in `netns`; panics unless it succeeds.
    pub fn run(&self, command: &str, id: &str, netns: &Path) -> Value {
        self.run_with(command, id, netns, "", &self.conf)
    }

    /// [`Plugin::run`] with `CNI_ARGS` and a config of the caller's.
    pub fn run_with(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        args: &str,
        conf: &Value,
    ) -> Value {
        let vars = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", netns.display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            ("CNI_ARGS", args.to_string()),
        ];
        let conf = conf.to_string();
        let out = exec_plugin(
            &crate::bins::plugin(),
            &self.host_ns,
            &vars,
            conf.as_bytes(),
        );
        assert_eq!(
            out.code, 0,
            "plugin {command} for {id} failed: {}{}",
            out.stdout, out.stderr
        );
        serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
    }

    /// A new container attached with ADD.
    pub fn add(&self, tag: &str) -> Container {
        self.add_workload(tag, None, &[])
    }

    /// A new container attached with ADD as a runtime attaches a Kubernetes pod: named
    /// `tag` in `namespace` (CNI_ARGS `K8S_POD_NAMESPACE`, `K8S_POD_NAME`) with `labels`
    /// (`args.cni.labels`).
    pub fn add_workload(
        &self,
        tag: &str,
        namespace: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Container {
        let ns = Netns::new(tag);
        let id = format!("{}-{tag}", ns.name());
        let mut conf = self.conf.clone();
        let labels: Vec<Value> = labels
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        conf["args"] = json!({"cni": {"labels": labels}});
        let mut args = format!("IgnoreUnknown=1;K8S_POD_NAME={tag}");
        if let Some(n) = namespace {
            args.push_str(&format!(";K8S_POD_NAMESPACE={n}"));
        }
        let result = self.run_with("ADD", &id, &ns.path(), &args, &conf);
        let ips: Vec<IpAddr> = (result["ips"].as_array().into_iter().flatten())
            .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
            .collect();
        let ip = (ips.iter())
            .find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .unwrap_or_else(|| panic!("no IPv4 address in the ADD result: {result}"));
        let ip6 = ips.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        let port_mac = result["interfaces"][1]["mac"]
            .as_str()
            .unwrap_or_else(|| panic!("no host veth MAC in the ADD result: {result}"))
            .to_string();
        Container {
            ns,
            id,
            ip,
            ip6,
            port_mac,
        }
    }

    /// Detaches a container with DEL, then removes its namespace.
    pub fn del(&self, c: Container) {
        self.run("DEL", &c.id, &c.ns.path());
    }
}
