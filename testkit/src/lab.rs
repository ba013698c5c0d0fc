//! A multi-host lab: an "underlay" namespace holding a bridge that joins every host, etcd
//! inside it at 198.18.0.254, and hosts (namespaces with `eth0` at 198.18.0.N/24) each running
//! a real weftd. Everything goes when the lab drops: weftd processes first, then etcd, then
//! the namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft::subnet_env::SubnetEnv;

use crate::etcd::Etcd;
use crate::etcd_cluster::EtcdCluster;
use crate::leases::CONFIG_KEY;
use crate::netns::{plug, Netns};
use crate::ping::Pinger;
use crate::wait::wait_for;

pub const NETWORK: &str = "198.19.0.0/16";
pub const VXLAN_CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#;
pub const ETCD_IP: &str = "198.18.0.254";
pub const HEALTHZ_PORT: u16 = 8471;
/// The VXLAN device weftd makes for VXLAN_CONFIG (VNI 1).
pub const VXLAN_DEVICE: &str = "flannel.1";
/// The lab's resync interval (`--resync-interval`): the longest a host goes without a full
/// reconciliation.
pub const RESYNC: Duration = Duration::from_secs(5);

/// Makes `flannel.1` inside `ns` exactly as flanneld does, with iproute2 rather than weft's
/// netlink layer: VNI 1, `local` on `eth0`, port 8472, no learning, MTU 1450, the address
/// `<subnet ip>/32`, up. Returns the device's MAC.
pub fn make_flannel_device(ns: &Netns, local: &str, subnet: Ipv4Net) -> String {
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        local,
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1450"]);
    let addr = format!("{}/32", subnet.network());
    ns.ip(&["addr", "add", &addr, "dev", "flannel.1"]);
    ns.ip(&["link", "set", "flannel.1", "up"]);
    ns.mac_of("flannel.1")
}

pub struct Host {
    pub ns: Netns,
    /// The host's underlay address (198.18.0.N).
    pub ip: String,
    pub subnet_file: PathBuf,
    log: PathBuf,
    weftd: Option<Child>,
    etcd_url: String,
    /// The `--iface` weftd is started with; None lets it choose by the default route.
    pub iface: Option<String>,
    /// A WireGuard host's own mount namespace (see [`crate::wg`]).
    pub mnt: Option<crate::netns::MountNs>,
    /// Variables weftd is started with besides the lab's.
    pub env: Vec<(String, String)>,
}

impl Host {
    /// Starts weftd with the lab's standard flags plus `extra`.
    pub fn start(&mut self, extra: &[&str]) {
        assert!(
            self.weftd.is_none(),
            "weftd already runs on {}",
            self.ns.name()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the weftd log");
        // A WireGuard host enters its own mount namespace (nsenter execs weftd, as `ip netns
        // exec` does, so the child's pid is weftd's either way).
        let (program, mut args): (&str, Vec<String>) = match &self.mnt {
            Some(m) => ("nsenter", m.enter_args(&self.ns)),
            None => (
                "ip",
                vec!["netns".into(), "exec".into(), self.ns.name().into()],
            ),
        };
        args.extend([
            crate::bins::weftd().display().to_string(),
            "--etcd-endpoints".into(),
            self.etcd_url.clone(),
            "--subnet-file".into(),
            self.subnet_file.display().to_string(),
            "--healthz-port".into(),
            HEALTHZ_PORT.to_string(),
            "--resync-interval".into(),
            format!("{}s", RESYNC.as_secs()),
            "--log-level".into(),
            "info,weft=debug".into(),
        ]);
        if let Some(iface) = &self.iface {
            args.extend(["--iface".to_string(), iface.clone()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(program)
            .args(&args)
            .env("WIREGUARD_KEY_FILE", self.wg_key_file())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting weftd with {program}: {e}"));
        self.weftd = Some(child);
    }

    /// Waits until /readyz answers 200 and returns what weftd wrote to subnet.env.
    pub fn wait_ready(&mut self) -> SubnetEnv {
        let ready = wait_for(Duration::from_secs(20), || {
            if let Some(child) = self.weftd.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "weftd on {} exited with {status}:\n{}",
                        self.ns.name(),
                        self.logs()
                    );
                }
            }
            (self.http_get("/readyz").0 == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "weftd on {} not ready within 20 s:\n{}",
            self.ns.name(),
            self.logs()
        );
        SubnetEnv::read(&self.subnet_file).expect("reading the subnet.env weftd wrote")
    }

    /// This host's subnet, from its subnet.env.
    pub fn subnet(&self) -> Ipv4Net {
        SubnetEnv::read(&self.subnet_file)
            .expect("reading subnet.env")
            .subnet_network()
            .expect("subnet.env has FLANNEL_SUBNET")
    }

    /// The address a "container" on this host has: the subnet's first address on a bridge
    /// `cni0`, as the CNI plugin sets it up.
    pub fn container_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet().network()) + 1)
    }

    /// Gives the host a container address (idempotent): bridge `cni0` with the gateway address.
    pub fn add_container(&self) {
        let have = self.ns.try_ip(&["link", "show", "cni0"]).status.success();
        if !have {
            self.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
            self.ns.ip(&["link", "set", "cni0", "up"]);
        }
        let addr = format!("{}/{}", self.container_ip(), self.subnet().prefix_len());
        self.ns.ip(&["addr", "replace", &addr, "dev", "cni0"]);
    }

    /// One ping from this host's container address to `dst`, 1 s timeout.
    pub fn ping_from_container(&self, dst: Ipv4Addr) -> bool {
        let src = self.container_ip().to_string();
        self.ns
            .exec(&["ping", "-c1", "-W1", "-I", &src, &dst.to_string()])
            .status
            .success()
    }

    /// SIGTERM and wait (up to 10 s) for weftd to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.weftd.take().expect("weftd is not running");
        // `ip netns exec` execs weftd, so the child's pid is weftd's.
        let pid = child.id() as i32;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
        status.unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "weftd on {} did not exit within 10 s of SIGTERM",
                self.ns.name()
            )
        })
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(&mut self) {
        let mut child = self.weftd.take().expect("weftd is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.weftd
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `weftctl` inside the host against the lab's etcd; `args` follow the global flags.
    pub fn weftctl(&self, args: &[&str]) -> std::process::Output {
        let weftctl = crate::bins::weftctl().display().to_string();
        let mut full = vec![weftctl.as_str(), "--etcd-endpoints", &self.etcd_url];
        full.extend_from_slice(args);
        exec(self, &full)
    }

    /// `weftctl check` of this host's kernel state against the leases, as an operator runs
    /// it on the host (`--iface eth0`, the host's subnet.env).
    pub fn weftctl_check(&self, extra: &[&str]) -> std::process::Output {
        let subnet_file = self.subnet_file.display().to_string();
        let mut args = extra.to_vec();
        args.extend(["check", "--iface", "eth0", "--subnet-file", &subnet_file]);
        self.weftctl(&args)
    }

    /// Waits up to `timeout` for weftd to exit by itself; None while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.weftd.as_mut().expect("weftd is not running");
        let status = wait_for(timeout, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.weftd = None;
        }
        status
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A GET against weftd's health endpoint from inside the host: (status, body); status 0
    /// when nothing answers.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = SocketAddr::from(([127, 0, 0, 1], HEALTHZ_PORT));
        crate::http::get(Some(&self.ns.path()), addr, path)
    }

    /// A metric's value from /metrics.
    pub fn metric(&self, name: &str) -> Option<f64> {
        crate::http::metric(&self.http_get("/metrics").1, name)
    }

    /// `ip route show` for one destination.
    pub fn route_to(&self, subnet: Ipv4Net) -> String {
        self.ns
            .ip(&["route", "show", &subnet.to_string()])
            .trim()
            .to_string()
    }
}

impl Host {
    /// The MAC of this host's VXLAN device (its VTEP MAC).
    pub fn vtep_mac(&self) -> String {
        self.ns.mac_of(VXLAN_DEVICE)
    }

    /// `ip neigh show` for the gateway address of `subnet` on the VXLAN device.
    pub fn neighbour_to(&self, subnet: Ipv4Net) -> String {
        let gw = subnet.network().to_string();
        let out = self.ns.try_ip(&["neigh", "show", &gw, "dev", VXLAN_DEVICE]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The VXLAN device's FDB entries for `mac` that send to a remote (`dst`), one a line.
    pub fn fdb_for(&self, mac: &str) -> String {
        let out = self
            .ns
            .exec(&["bridge", "fdb", "show", "dev", VXLAN_DEVICE]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(mac) && l.contains(" dst "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Which of the three objects a VXLAN peer needs this host has for `peer`: the route to
    /// its subnet, the neighbour entry for its gateway with its MAC, the FDB entry sending
    /// its MAC to its underlay address.
    pub fn objects_for(&self, peer: &Peer) -> [bool; 3] {
        let neigh = self.neighbour_to(peer.subnet);
        [
            !self.route_to(peer.subnet).is_empty(),
            neigh.contains(&peer.mac),
            self.fdb_for(&peer.mac)
                .contains(&format!("dst {}", peer.ip)),
        ]
    }

    /// What flanneld programs on `dev` for one remote lease: the permanent neighbour of its
    /// gateway, the FDB entry to its public address, the onlink route to its subnet.
    pub fn flannel_programs(&self, dev: &str, subnet: &str, gw: &str, mac: &str, public: &str) {
        self.ns.ip(&[
            "neigh",
            "replace",
            gw,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
        self.ns.bridge(&[
            "fdb",
            "append",
            mac,
            "dev",
            dev,
            "dst",
            public,
            "self",
            "permanent",
        ]);
        self.ns
            .ip(&["route", "replace", subnet, "via", gw, "dev", dev, "onlink"]);
    }

    /// This host as its peers see it.
    pub fn as_peer(&self) -> Peer {
        Peer {
            subnet: self.subnet(),
            mac: self.vtep_mac(),
            ip: self.ip.clone(),
        }
    }

    /// weftd's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.weftd.as_ref().map(|c| c.id())
    }

    /// Pings `dst` from this host's container address every 10 ms until the pinger finishes.
    pub fn start_pinging(&self, dst: Ipv4Addr) -> Pinger {
        Pinger::in_netns(&self.ns, self.container_ip(), dst)
    }

    /// Waits up to `within` until this host's container reaches `to`'s, and gives how long
    /// it took; panics with both hosts' logs (and WireGuard devices) when it does not.
    pub fn reach_within(&self, to: &Host, within: Duration, what: &str) -> Duration {
        let started = Instant::now();
        let ok = wait_for(within, || {
            self.ping_from_container(to.container_ip()).then_some(())
        });
        if ok.is_none() {
            let devices = [self, to]
                .iter()
                .filter(|h| h.mnt.is_some())
                .map(|h| String::from_utf8_lossy(&exec(h, &["wg", "show"]).stdout).into_owned())
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{what}: {} cannot reach {} within {within:?}:\n{devices}\n{}\n{}",
                self.ns.name(),
                to.container_ip(),
                self.logs(),
                to.logs()
            );
        }
        started.elapsed()
    }
}

/// What a host needs to know to reach a VXLAN peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub mac: String,
    pub ip: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.weftd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.mnt.is_some() {
            // wireguard-go outlives weftd by design; the lab's must go with the host.
            crate::netns::kill_netns_processes(&self.ns);
        }
    }
}

/// Checks every 500 ms for `outage` (a duration the test is about: etcd down, a link cut)
/// that weftd still runs on every host; fails naming the one that exited.
pub fn keep_running(hosts: &mut [Host], outage: Duration, what: &str) {
    let started = Instant::now();
    while started.elapsed() < outage {
        std::thread::sleep(Duration::from_millis(500));
        for h in hosts.iter_mut() {
            assert!(
                h.is_running(),
                "weftd on {} died {what}:\n{}",
                h.ns.name(),
                h.logs()
            );
        }
    }
}

/// Prints how long `what` took on `host` and asserts it stayed within `bound`; `None` means it
/// did not happen within `patience`.
pub fn assert_within(
    took: Option<Duration>,
    bound: Duration,
    patience: Duration,
    what: &str,
    host: &Host,
) {
    let Some(d) = took else {
        panic!(
            "{what} did not happen within {patience:?}:\n{}",
            host.logs()
        );
    };
    eprintln!("{}: {what}: {d:?}", host.ns.name());
    assert!(
        d <= bound,
        "{what} took {d:?}, more than {bound:?}:\n{}",
        host.logs()
    );
}

impl Host {
    /// weft_drift_repairs_total of this host.
    pub fn repairs(&self) -> f64 {
        self.metric("weft_drift_repairs_total")
            .expect("weft_drift_repairs_total in /metrics")
    }

    /// Waits (1 s) for the repair counter to pass `before`: every repair must be counted.
    pub fn assert_repair_counted(&self, before: f64, what: &str) {
        let now = wait_for(Duration::from_secs(1), || {
            Some(self.repairs()).filter(|n| *n > before)
        });
        assert!(
            now.is_some(),
            "{what} was repaired but weft_drift_repairs_total stayed at {before}:\n{}",
            self.logs()
        );
    }

    /// Makes drift by hand with `drift`, then fails unless weftd mends it within `bound`
    /// (`mended` polled for up to `patience`, so a failure says how late) and counts the
    /// repair. Returns how long the mending took.
    pub fn assert_mends(
        &self,
        what: &str,
        bound: Duration,
        patience: Duration,
        drift: impl FnOnce(),
        mended: impl FnMut() -> bool,
    ) -> Duration {
        let before = self.repairs();
        let changed = Instant::now();
        drift();
        let took = crate::wait::time_until(patience, changed, mended);
        assert_within(took, bound, patience, &format!("mending {what}"), self);
        self.assert_repair_counted(before, what);
        took.unwrap_or_default()
    }

    /// weft_reconcile_runs_total of this host: reconciliations finished, fast or full.
    pub fn reconcile_runs(&self) -> f64 {
        self.metric("weft_reconcile_runs_total")
            .unwrap_or_else(|| panic!("no weft_reconcile_runs_total:\n{}", self.logs()))
    }

    /// Where this host's reconciliations stand now, for
    /// [`wait_reconciled_since`](Self::wait_reconciled_since).
    pub fn reconcile_mark(&self) -> ReconcileMark {
        ReconcileMark(self.reconcile_runs())
    }

    /// Waits until a reconciliation that began after `mark` was taken has finished: the
    /// count must pass the mark by two, since the first may be a pass that was under way
    /// (and had read the kernel) before. What a test changed before taking the mark has then
    /// been looked at, so an assertion that weftd left something alone means something.
    /// Without lease events the passes are full ones (the resync timer, kernel changes),
    /// which is what a test of drift or adoption needs. Panics when none comes within two
    /// resyncs of now.
    pub fn wait_reconciled_since(&self, mark: ReconcileMark, what: &str) {
        let patience = RESYNC * 2 + Duration::from_secs(5);
        let done = wait_for(patience, || {
            (self.reconcile_runs() >= mark.0 + 2.0).then_some(())
        });
        assert!(
            done.is_some(),
            "{what}: no reconciliation began and finished within {patience:?} (runs went \
             from {} to {}):\n{}",
            mark.0,
            self.reconcile_runs(),
            self.logs()
        );
    }

    /// [`wait_reconciled_since`](Self::wait_reconciled_since) a mark taken now.
    pub fn wait_next_reconcile(&self, what: &str) {
        self.wait_reconciled_since(self.reconcile_mark(), what);
    }
}

/// A host's reconciliation count at some moment (see [`Host::reconcile_mark`]).
#[derive(Debug, Clone, Copy)]
pub struct ReconcileMark(f64);

/// Hosts are declared first so they drop (killing weftd) before etcd and the underlay.
pub struct Lab {
    pub hosts: Vec<Host>,
    /// A router joining the underlay's first segment (198.18.0.0/24, bridge `br0`) to a second
    /// one (198.18.1.0/24, bridge `br1`), once [`Lab::add_router`] made it.
    pub router: Option<Netns>,
    pub etcd: Etcd,
    pub underlay: Netns,
    pub dir: tempfile::TempDir,
}

/// The router's address on the first segment and on the far one.
pub const ROUTER_NEAR_IP: &str = "198.18.0.253";
pub const ROUTER_FAR_IP: &str = "198.18.1.254";
pub const FAR_SEGMENT: &str = "198.18.1.0/24";

/// An underlay namespace with its bridge `br0` up.
fn new_underlay() -> Netns {
    let underlay = Netns::new("ul");
    // A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, so a host joining
    // later would change it and strand every ARP entry for etcd's address for ~30 s.
    underlay.ip(&[
        "link",
        "add",
        "br0",
        "address",
        "02:00:c6:12:00:fe",
        "type",
        "bridge",
    ]);
    underlay.ip(&["link", "set", "br0", "up"]);
    underlay
}

fn lab_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("weft-lab-")
        .tempdir()
        .expect("creating the lab dir")
}

impl Lab {
    /// An underlay with etcd holding `config`, and `n` hosts (weftd not started yet).
    pub fn new(n: usize, config: &str) -> Lab {
        let underlay = new_underlay();
        underlay.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
        let etcd = Etcd::start_in_netns(underlay.name(), ETCD_IP);
        etcd.put(CONFIG_KEY, config);
        let dir = lab_dir();
        let mut lab = Lab {
            hosts: Vec::new(),
            router: None,
            etcd,
            underlay,
            dir,
        };
        for _ in 0..n {
            lab.add_host();
        }
        lab
    }

    /// Adds host number len+1 at 198.18.0.<len+1> on the underlay bridge.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len() + 1;
        self.add_host_on("br0", &format!("198.18.0.{i}"))
    }

    /// Adds host number len+1 at 198.18.1.<len+1> on the far segment, behind the router, with
    /// its default route through the router. [`Lab::add_router`] must have run.
    pub fn add_far_host(&mut self) -> usize {
        assert!(self.router.is_some(), "add_far_host needs add_router first");
        let i = self.hosts.len() + 1;
        let h = self.add_host_on("br1", &format!("198.18.1.{i}"));
        self.hosts[h]
            .ns
            .ip(&["route", "add", "default", "via", ROUTER_FAR_IP]);
        h
    }

    /// Adds a second underlay segment (bridge `br1`) and a router namespace between it and the
    /// first; every host of the first segment, and etcd, reach the far one through it.
    pub fn add_router(&mut self) {
        assert!(self.router.is_none(), "the lab already has a router");
        let router = Netns::new("rt");
        self.underlay.ip(&[
            "link",
            "add",
            "br1",
            "address",
            "02:00:c6:12:01:fe",
            "type",
            "bridge",
        ]);
        self.underlay.ip(&["link", "set", "br1", "up"]);
        for (dev, port, bridge, addr) in [
            ("r0", "rp0", "br0", ROUTER_NEAR_IP),
            ("r1", "rp1", "br1", ROUTER_FAR_IP),
        ] {
            plug(
                &router,
                dev,
                &self.underlay,
                port,
                bridge,
                &format!("{addr}/24"),
            );
        }
        let out = router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        assert!(
            out.status.success(),
            "enabling forwarding in the router: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.underlay
            .ip(&["route", "add", FAR_SEGMENT, "via", ROUTER_NEAR_IP]);
        for h in self.hosts.iter().filter(|h| h.ip.starts_with("198.18.0.")) {
            h.ns.ip(&["route", "add", FAR_SEGMENT, "via", ROUTER_NEAR_IP]);
        }
        self.router = Some(router);
    }

    /// A host's namespace with `eth0` at `ip`/24 on `bridge` of the underlay.
    fn add_host_on(&mut self, bridge: &str, ip: &str) -> usize {
        let i = self.hosts.len() + 1;
        let host = new_host(
            &self.underlay,
            self.dir.path(),
            i,
            bridge,
            ip,
            &format!("http://{ETCD_IP}:2379"),
        );
        if self.router.is_some() && bridge == "br0" {
            host.ns
                .ip(&["route", "add", FAR_SEGMENT, "via", ROUTER_NEAR_IP]);
        }
        self.hosts.push(host);
        i - 1
    }

    /// Starts weftd on every host and waits until all are ready and every host has a route
    /// to every other host's subnet.
    pub fn start_all(&mut self, extra: &[&str]) {
        start_hosts(&mut self.hosts, extra);
    }

    /// Starts weftd on the first `n` hosts only (the others are the test's to build, say as
    /// flannel hosts) and waits until those are ready and route to each other's subnets.
    pub fn start_first(&mut self, n: usize, extra: &[&str]) {
        start_hosts(&mut self.hosts[..n], extra);
    }

    /// Waits (5 s) until every host routes to every other host's subnet.
    pub fn wait_converged(&self) {
        wait_hosts_converged(&self.hosts);
    }

    /// Gives every host a container address (see [`Host::add_container`]).
    pub fn add_containers(&self) {
        self.hosts.iter().for_each(Host::add_container);
    }
}

/// Every host's container reaches every other host's container with one ping; fails naming
/// the pair, with the sender's log.
pub fn assert_mesh(hosts: &[Host]) {
    for (i, a) in hosts.iter().enumerate() {
        for (j, b) in hosts.iter().enumerate() {
            if i != j {
                assert!(
                    a.ping_from_container(b.container_ip()),
                    "host {} ({}) cannot reach host {}'s container {}:\n{}",
                    i + 1,
                    a.ip,
                    j + 1,
                    b.container_ip(),
                    a.logs()
                );
            }
        }
    }
}

/// Host number `i`: a namespace with `eth0` at `ip`/24 on `bridge` of `underlay`, its files
/// under `dir`, and weftd (not started yet) pointed at `etcd_urls` (comma-separated).
fn new_host(
    underlay: &Netns,
    dir: &std::path::Path,
    i: usize,
    bridge: &str,
    ip: &str,
    etcd_urls: &str,
) -> Host {
    let ns = Netns::new(&format!("h{i}"));
    plug(
        &ns,
        "eth0",
        underlay,
        &host_port(i),
        bridge,
        &format!("{ip}/24"),
    );
    Host {
        ns,
        ip: ip.to_string(),
        subnet_file: dir.join(format!("h{i}/subnet.env")),
        log: dir.join(format!("h{i}.log")),
        weftd: None,
        etcd_url: etcd_urls.to_string(),
        iface: Some("eth0".into()),
        mnt: None,
        env: Vec::new(),
    }
}

/// The underlay's end of host `i`'s `eth0` (1-based).
pub fn host_port(i: usize) -> String {
    format!("p{i}")
}

fn start_hosts(hosts: &mut [Host], extra: &[&str]) {
    for h in hosts.iter_mut() {
        h.start(extra);
    }
    for h in hosts.iter_mut() {
        h.wait_ready();
    }
    wait_hosts_converged(hosts);
}

fn wait_hosts_converged(hosts: &[Host]) {
    let subnets: Vec<Ipv4Net> = hosts.iter().map(|h| h.subnet()).collect();
    for (i, h) in hosts.iter().enumerate() {
        for (j, s) in subnets.iter().enumerate() {
            if i == j {
                continue;
            }
            let ok = wait_for(Duration::from_secs(5), || {
                (!h.route_to(*s).is_empty()).then_some(())
            });
            assert!(
                ok.is_some(),
                "host {} has no route to {s} after 5 s:\n{}",
                i + 1,
                h.logs()
            );
        }
    }
}

/// A lab whose store is a three-member etcd cluster on the underlay (members at
/// [`CLUSTER_IPS`], each in its own namespace), and whose hosts' weftd and weftctl are given
/// all three endpoints. Hosts drop first, then the cluster, then the underlay.
pub struct ClusterLab {
    pub hosts: Vec<Host>,
    pub cluster: EtcdCluster,
    pub underlay: Netns,
    pub dir: tempfile::TempDir,
}

/// The etcd members' underlay addresses in a [`ClusterLab`].
pub const CLUSTER_IPS: [&str; 3] = ["198.18.0.251", "198.18.0.252", "198.18.0.253"];

impl ClusterLab {
    /// An underlay, the etcd cluster holding `config`, and `n` hosts (weftd not started).
    pub fn new(n: usize, config: &str) -> ClusterLab {
        let underlay = new_underlay();
        let cluster = EtcdCluster::start(&underlay, "br0", &CLUSTER_IPS);
        cluster.put(CONFIG_KEY, config);
        let dir = lab_dir();
        let mut lab = ClusterLab {
            hosts: Vec::new(),
            cluster,
            underlay,
            dir,
        };
        for _ in 0..n {
            lab.add_host();
        }
        lab
    }

    /// Adds host number len+1 at 198.18.0.<len+1> on the underlay bridge.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len() + 1;
        let host = new_host(
            &self.underlay,
            self.dir.path(),
            i,
            "br0",
            &format!("198.18.0.{i}"),
            &self.cluster.endpoints(),
        );
        self.hosts.push(host);
        i - 1
    }

    /// Starts weftd on every host and waits until all are ready and every host has a route
    /// to every other host's subnet.
    pub fn start_all(&mut self, extra: &[&str]) {
        start_hosts(&mut self.hosts, extra);
    }

    /// Gives every host a container address (see [`Host::add_container`]).
    pub fn add_containers(&self) {
        self.hosts.iter().for_each(Host::add_container);
    }
}

/// Sends UDP datagrams from address `src` inside namespace `from` to a receiver bound at `dst`
/// inside namespace `to`, and returns the source address the receiver saw: what a server
/// would log as its caller. None when nothing arrives within 3 s.
pub fn udp_source_seen<A: Into<IpAddr> + Copy + Send + 'static>(
    from: &Netns,
    src: A,
    to: &Netns,
    dst: A,
) -> Option<IpAddr> {
    udp_exchange(from, src.into(), to, dst.into(), b"weft probe").map(|(seen, _)| seen)
}

/// Sends `payload` by UDP from address `src` inside namespace `from` to a receiver bound at
/// `dst` inside namespace `to`, again and again until one datagram arrives (the first may
/// wait for ARP or a route) or 3 s pass: the source address the receiver saw, and what it
/// received.
pub fn udp_exchange(
    from: &Netns,
    src: IpAddr,
    to: &Netns,
    dst: IpAddr,
    payload: &[u8],
) -> Option<(IpAddr, Vec<u8>)> {
    use std::net::UdpSocket;
    // A socket stays in the namespace it was made in, whichever thread uses it later.
    let rx = weft::netlink::run_in_netns(&to.path(), move || UdpSocket::bind((dst, 0)))
        .expect("entering the receiver's namespace")
        .unwrap_or_else(|e| panic!("binding a UDP receiver at {dst} in {}: {e}", to.name()));
    let to_addr = rx.local_addr().expect("the receiver's address");
    let tx = weft::netlink::run_in_netns(&from.path(), move || UdpSocket::bind((src, 0)))
        .expect("entering the sender's namespace")
        .unwrap_or_else(|e| panic!("binding a UDP sender at {src} in {}: {e}", from.name()));
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("setting a read timeout");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let _ = tx.send_to(payload, to_addr);
        if let Ok((n, peer)) = rx.recv_from(&mut buf) {
            return Some((peer.ip(), buf[..n].to_vec()));
        }
    }
    None
}

/// A network policy the tests apply, found by its name in tests/data/test-policies.yaml.
pub fn test_policy(name: &str) -> String {
    let text = include_str!("../../tests/data/test-policies.yaml");
    let wanted = format!("\n  name: {name}\n");
    (text.split("\n---\n"))
        .find(|d| d.contains(&wanted))
        .unwrap_or_else(|| panic!("no policy {name} in tests/data/test-policies.yaml"))
        .to_string()
}

impl Lab {
    /// `weftctl policy apply` of `yaml` (into `namespace` when given), run inside the
    /// underlay as an operator's machine would; fails unless it succeeds.
    pub fn apply_policy(&self, yaml: &str, namespace: Option<&str>) {
        let path = self.dir.path().join("policy.yaml");
        std::fs::write(&path, yaml).expect("writing the policy file");
        let path = path.display().to_string();
        let mut args = vec!["policy", "apply", "-f", &path];
        args.extend(namespace.iter().flat_map(|n| ["-n", n]));
        self.weftctl_ok(&args);
    }

    /// Drops VXLAN (UDP 8472) between two underlay addresses, both ways, in the underlay's
    /// bridge (nftables table `bridge cut`): the pair's overlay path is cut, nothing else.
    pub fn cut_vxlan(&self, a: &str, b: &str) {
        self.nft(&["add", "table", "bridge", "cut"]);
        self.nft(&[
            "add", "chain", "bridge", "cut", "f", "{", "type", "filter", "hook", "forward",
            "priority", "0", ";", "}",
        ]);
        for (from, to) in [(a, b), (b, a)] {
            self.nft(&[
                "add", "rule", "bridge", "cut", "f", "ip", "saddr", from, "ip", "daddr", to, "udp",
                "dport", "8472", "drop",
            ]);
        }
    }

    /// Undoes [`Lab::cut_vxlan`].
    pub fn uncut_vxlan(&self) {
        self.nft(&["delete", "table", "bridge", "cut"]);
    }

    fn nft(&self, args: &[&str]) {
        let out = self.underlay.exec(&[&["nft"], args].concat());
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Revokes `subnet`'s lease as an operator would: `weftctl leases revoke` run inside the
    /// underlay. Returns the instant the command was started, to measure how fast the hosts
    /// follow.
    pub fn revoke_lease(&self, subnet: Ipv4Net) -> Instant {
        self.weftctl_ok(&["leases", "revoke", &subnet.to_string()])
    }

    /// Runs weftctl inside the underlay against the lab's etcd, as an operator's machine
    /// would, and fails unless it succeeds; returns the instant it was started.
    pub fn weftctl_ok(&self, args: &[&str]) -> Instant {
        let weftctl = crate::bins::weftctl().display().to_string();
        let url = self.etcd.client_url();
        let mut full = vec![weftctl.as_str(), "--etcd-endpoints", &url];
        full.extend_from_slice(args);
        let started = Instant::now();
        let out = self.underlay.exec(&full);
        assert!(
            out.status.success(),
            "weftctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        started
    }

    /// The lease of `subnet` as stored in etcd (flannel's JSON), if there is one.
    pub fn lease_value(&self, subnet: Ipv4Net) -> Option<serde_json::Value> {
        let key = crate::leases::key(subnet, None);
        let text = self.etcd.get(&key)?;
        Some(
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("lease {key} is not JSON ({e}): {text}")),
        )
    }

    /// The etcd lease id the lease of `subnet` hangs on (0 for a reservation), if it exists.
    pub fn lease_id(&self, subnet: Ipv4Net) -> Option<i64> {
        self.etcd.key_lease(&crate::leases::key(subnet, None))
    }
}

/// Sets host `fl` up as flanneld sets up a VXLAN host: its device, a bridge `cni0` holding
/// the container address (the subnet's first), and its lease at `subnet` in `etcd` (on an
/// hour's etcd lease). Gives the container address and the device's MAC; programming the
/// peers ([`Host::flannel_programs`]) is the test's.
pub fn flannel_vxlan_host(etcd: &Etcd, fl: &Host, subnet: Ipv4Net) -> (Ipv4Addr, String) {
    let container = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    let mac = make_flannel_device(&fl.ns, &fl.ip, subnet);
    fl.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    fl.ns
        .ip(&["addr", "add", &format!("{container}/24"), "dev", "cni0"]);
    fl.ns.ip(&["link", "set", "cni0", "up"]);
    let value = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
        fl.ip
    );
    etcd.put_on_lease(&crate::leases::key(subnet, None), &value, 3600);
    (container, mac)
}

/// Runs `args` inside the host's network namespace and its mount namespace (WireGuard hosts)
/// or with `ip netns exec` (the others).
pub fn exec(host: &Host, args: &[&str]) -> std::process::Output {
    let mut cmd = match &host.mnt {
        Some(m) => {
            let mut c = Command::new("nsenter");
            c.args(m.enter_args(&host.ns));
            c
        }
        None => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", host.ns.name()]);
            c
        }
    };
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?} in {}: {e}", host.ns.name()))
}
