//! A real container runtime for the tests: podman with its CNI backend, run inside a host
//! namespace with `nsenter --net` (as LAB.md says, `ip netns exec` would hide the cgroups),
//! with storage, run dirs, containers.conf and conflist of its own, so parallel tests and
//! several simulated hosts never share anything. Everything goes when the guard drops.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::cmd::{unique, Output};
use crate::netns::Netns;

pub struct Podman {
    netns: PathBuf,
    dir: tempfile::TempDir,
    pub network: String,
    pub image: String,
}

impl Podman {
    /// A podman for the host `netns` whose only network is `conflist` (its `name` is the
    /// network's); `plugin` is the weft binary, found by podman as type "weft".
    pub fn new(netns: &Netns, plugin: &Path, conflist: &Value) -> Podman {
        let dir = tempfile::tempdir().expect("tempdir");
        let network = conflist["name"]
            .as_str()
            .expect("the conflist has a name")
            .to_string();
        let bin = dir.path().join("bin");
        let net_d = dir.path().join("net.d");
        for d in [&bin, &net_d] {
            std::fs::create_dir_all(d).unwrap();
        }
        symlink(plugin, bin.join("weft")).unwrap();
        std::fs::write(
            net_d.join(format!("{network}.conflist")),
            serde_json::to_string_pretty(conflist).unwrap(),
        )
        .unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        // crun fails on these machines (cgroups hybrid mode); runc with cgroupfs works, and
        // the default ulimits are refused without explicit ones.
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n\
                 events_logger = \"none\"\n\
                 tmp_dir = \"{}\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n",
                tmp.display(),
                bin.display(),
                net_d.display()
            ),
        )
        .unwrap();
        let podman = Podman {
            netns: netns.path(),
            dir,
            network,
            image: format!("localhost/{}:test", unique("img")),
        };
        podman.import_busybox();
        podman
    }

    /// A one-binary image: busybox-static with the applets the tests use.
    fn import_busybox(&self) {
        let tar = crate::cmd::busybox_tar(self.dir.path());
        self.ok(&["import", "--quiet", &tar.display().to_string(), &self.image]);
    }

    /// `podman <args>` in the host namespace with this instance's storage and config.
    pub fn cmd(&self, args: &[&str]) -> Output {
        let root = self.dir.path().join("root");
        let runroot = self.dir.path().join("runroot");
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .expect("cannot run nsenter podman (install podman and util-linux)");
        Output::from(out)
    }

    /// Like `cmd`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert_eq!(out.code, 0, "podman {args:?} failed: {out:?}");
        out.stdout
    }

    /// Starts a long-running container named `name` on the network.
    pub fn start(&self, name: &str) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            "--cap-add",
            "NET_RAW",
            &self.image,
            "sleep",
            "600",
        ]);
    }

    /// The container's IPv4 address on eth0, as the container itself sees it.
    pub fn address(&self, name: &str) -> String {
        let out = self.ok(&[
            "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on eth0 in {name}: {out}"))
            .to_string()
    }

    /// The container's global IPv6 address on eth0, as the container itself sees it.
    pub fn address6(&self, name: &str) -> String {
        let out = self.ok(&[
            "exec", name, "ip", "-6", "-o", "addr", "show", "dev", "eth0",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().skip_while(|w| *w != "inet6");
                words.nth(1)?.split('/').next().map(str::to_string)
            })
            .find(|a| !a.starts_with("fe80"))
            .unwrap_or_else(|| panic!("no global IPv6 address on eth0 in {name}: {out}"))
    }

    /// Whether `ping` from inside container `name` reaches `addr`.
    pub fn ping(&self, name: &str, addr: &str) -> bool {
        self.cmd(&["exec", name, "ping", "-c1", "-W2", addr]).code == 0
    }

    /// The process id of the container's first process, whose namespaces are the container's.
    pub fn pid(&self, name: &str) -> u32 {
        let out = self.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid for {name}: {out:?}"))
    }

    pub fn rm(&self, name: &str) {
        self.ok(&["rm", "-f", "-t", "0", name]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (they release their CNI attachments), then the image.
        let _ = self.cmd(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.cmd(&["rmi", "-a", "-f"]);
    }
}
