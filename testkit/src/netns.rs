//! Network namespaces for integration tests, built with iproute2 and removed when the guard
//! drops (also when the test panics).
//!
//! ```no_run
//! use testkit::netns::{veth_pair, Netns};
//! let h1 = Netns::new("h1");
//! let h2 = Netns::new("h2");
//! veth_pair(&h1, "v1", "198.18.0.1/24", &h2, "v2", "198.18.0.2/24");
//! h1.ip(&["route", "add", "198.19.2.0/24", "via", "198.18.0.2"]);
//! assert!(h1.exec(&["ping", "-c1", "-W1", "198.18.0.2"]).status.success());
//! ```
//!
//! Names are `w<pid % 100000>-<n>-<tag>`: unique per test process and call, short, and easy to
//! spot (`ip netns list | grep ^w`) should a killed test leave one behind.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that exists for the guard's lifetime. Only the namespace is deleted on
/// drop; processes a test started inside it are the test's to stop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with `lo` up. `tag` (letters and digits, shortened to 8) only
    /// makes the name readable.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        let name = format!("w{}-{n}-{tag}", std::process::id() % 100_000);
        let out = run("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, for `ip -n NAME` or `ip netns exec NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for setns() or `Netlink::in_netns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// An open handle on the namespace (e.g. for `create_veth`'s peer namespace).
    pub fn file(&self) -> std::fs::File {
        std::fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()))
    }

    /// Runs a command inside the namespace (`ip netns exec NAME ...`) and returns its output,
    /// whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n NAME ARGS...`; panics with iproute2's stderr on failure, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.tool("ip", args)
    }

    /// `ip -n NAME ARGS...` whatever its exit status.
    pub fn try_ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `bridge -n NAME ARGS...`; panics with stderr on failure, returns stdout.
    pub fn bridge(&self, args: &[&str]) -> String {
        self.tool("bridge", args)
    }

    /// Whether `ping -c1` to `addr` from inside the namespace gets an answer within 2 s.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c1", "-W2", addr]).status.success()
    }

    /// The MAC address of `dev` inside the namespace.
    pub fn mac_of(&self, dev: &str) -> String {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in {out:?}"))
            .to_string()
    }

    /// The MTU of `dev` inside the namespace.
    pub fn mtu_of(&self, dev: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no mtu in {out:?}"))
    }

    fn tool(&self, tool: &str, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        let out = run(tool, &full);
        assert!(
            out.status.success(),
            "{tool} {} failed: {}",
            full.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run("ip", &["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Joins two namespaces with a veth pair: `a_if` in `a` with `a_addr` (CIDR), `b_if` in `b` with
/// `b_addr`, both up. Addresses may be "" for none.
pub fn veth_pair(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, dev, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", dev]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// Plugs `ns` into `bridge` inside `underlay` with a veth: `dev` in `ns` with address `cidr`
/// ("" for none), `port` on the bridge, both up. A host's NIC on a lab's underlay, a router's
/// leg, an etcd member's link.
pub fn plug(ns: &Netns, dev: &str, underlay: &Netns, port: &str, bridge: &str, cidr: &str) {
    ns.ip(&[
        "link",
        "add",
        dev,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        underlay.name(),
    ]);
    underlay.ip(&["link", "set", port, "master", bridge, "up"]);
    if !cidr.is_empty() {
        ns.ip(&["addr", "add", cidr, "dev", dev]);
    }
    ns.ip(&["link", "set", dev, "up"]);
}

fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {tool} (is iproute2 installed? apt-get install iproute2): {e}")
    })
}

/// A mount namespace with private /run/wireguard and /run/flannel, held by a process that
/// sleeps in it. Entering it through that process (`nsenter --target`) keeps the caller's root
/// directory: CI runs the tests in a chroot, which entering a namespace by a pinned file
/// would leave.
pub struct MountNs {
    holder: Child,
}

impl MountNs {
    pub fn new() -> MountNs {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mkdir -p /run/wireguard /run/flannel && mount -t tmpfs tmpfs /run/wireguard \
                 && mount -t tmpfs tmpfs /run/flannel && echo ready && exec sleep infinity",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running unshare (util-linux)");
        let mut line = String::new();
        let out = holder.stdout.take().expect("the holder's stdout");
        let _ = BufReader::new(out).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let status = holder.wait();
            panic!("making a mount namespace failed: {status:?}");
        }
        MountNs { holder }
    }

    /// `nsenter` arguments that enter this mount namespace (keeping the root directory) and
    /// `ns`'s network namespace.
    pub fn enter_args(&self, ns: &Netns) -> Vec<String> {
        let wd = std::env::current_dir().expect("the current directory");
        vec![
            format!("--target={}", self.holder.id()),
            "--mount".into(),
            "--root".into(),
            format!("--wd={}", wd.display()),
            format!("--net={}", ns.path().display()),
        ]
    }
}

/// A fresh mount namespace, as [`MountNs::new`] makes it.
impl Default for MountNs {
    fn default() -> MountNs {
        MountNs::new()
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Kills every process in `ns` (wireguard-go, left running by design) and waits for them.
pub fn kill_netns_processes(ns: &Netns) {
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["netns", "pids", ns.name()])
            .output()
            .expect("ip netns pids");
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("warning: processes still run in {}", ns.name());
}
