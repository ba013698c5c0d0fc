//! WireGuard lab hosts. wireguard-go's control socket lives at /run/wireguard/<device>.sock,
//! one path for every namespace: each WireGuard host therefore runs weftd, wireguard-go and
//! `wg` in a mount namespace of its own with private tmpfs on /run/wireguard and /run/flannel
//! (flannel's key file). The mount namespace outlives weftd, so a restarted weftd finds the
//! device's socket where wireguard-go left it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::lab::{Host, Lab};
use crate::wait::wait_for;

pub const WG_DEVICE: &str = "flannel-wg";
pub const WG_DEVICE6: &str = "flannel-wg-v6";
pub const WG_CONFIG: &str = r#"{"Network":"198.19.0.0/16","Backend":{"Type":"wireguard"}}"#;

/// How long two hosts may take to first reach each other once both hold the other as a
/// peer. When both ends send at once (a weftd's first probe and a test's first ping, or two
/// hosts programmed together), their handshake initiations cross, neither completes, and
/// WireGuard retries only after its 5 s rekey timeout: two retries are allowed.
pub const FIRST_CONTACT: Duration = Duration::from_secs(12);

pub use crate::lab::exec;
pub use crate::netns::{kill_netns_processes, MountNs};

/// Like [`exec`], panicking with the command's stderr when it fails; returns its stdout.
pub fn exec_ok(host: &Host, args: &[&str]) -> String {
    let out = exec(host, args);
    assert!(
        out.status.success(),
        "{args:?} on {}: {}",
        host.ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Host {
    /// Makes this a WireGuard host: its own mount namespace and key file. Before `start`.
    pub fn use_wireguard(&mut self) {
        if self.mnt.is_none() {
            self.mnt = Some(MountNs::new());
        }
    }

    /// `wg ARGS` on this host; panics with its stderr on failure.
    pub fn wg(&self, args: &[&str]) -> String {
        let mut full = vec!["wg"];
        full.extend_from_slice(args);
        exec_ok(self, &full)
    }

    /// The peers of `dev` as `wg show DEV dump` lists them: (public key, endpoint, allowed
    /// IPs, preshared key, keepalive), sorted by key.
    pub fn wg_peers(&self, dev: &str) -> Vec<WgDumpPeer> {
        let out = self.wg(&["show", dev, "dump"]);
        let mut peers: Vec<WgDumpPeer> = out
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                WgDumpPeer {
                    public_key: f[0].into(),
                    psk: f[1].into(),
                    endpoint: f[2].into(),
                    allowed_ips: f[3].into(),
                    keepalive: f[7].into(),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
        peers
    }

    /// This host's public key as its device has it.
    pub fn wg_public_key(&self, dev: &str) -> String {
        self.wg(&["show", dev, "public-key"]).trim().to_string()
    }

    /// The key file weftd keeps this host's private key in.
    pub fn wg_key_file(&self) -> PathBuf {
        self.subnet_file
            .parent()
            .expect("subnet.env has a directory")
            .join("wgkey")
    }
}

/// One line of `wg show DEV dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDumpPeer {
    pub public_key: String,
    pub psk: String,
    pub endpoint: String,
    pub allowed_ips: String,
    pub keepalive: String,
}

/// Says which WireGuard ran: kernel WireGuard is used where the module exists, and the tests
/// then exercise it instead of wireguard-go.
pub fn say_mode() {
    let kernel = Path::new("/sys/module/wireguard").exists();
    eprintln!(
        "WireGuard mode: {}",
        if kernel {
            "kernel module"
        } else {
            "userspace (wireguard-go): this kernel has no WireGuard module"
        }
    );
}

/// A lab of `n` WireGuard hosts running weftd with `config`, each ready, with a container
/// address, and holding every other host as a peer.
pub fn wg_lab(n: usize, config: &str, extra: &[&str]) -> Lab {
    say_mode();
    let mut lab = Lab::new(n, config);
    start_wireguard(&mut lab, n, extra);
    wait_wg_converged(&lab.hosts);
    lab
}

/// [`wg_lab`] over a dual-stack underlay, with IPv6 container addresses too.
pub fn wg_lab_dual(n: usize, config: &str) -> Lab {
    say_mode();
    let mut lab = Lab::dual(n, config);
    start_wireguard(&mut lab, n, &[]);
    wait_wg_converged(&lab.hosts);
    lab
}

/// Makes every host of `lab` a WireGuard host (its own mount namespace) and starts weftd with
/// `extra` on the first `weft` of them, each then ready and with a container address (IPv6
/// too when the host has an IPv6 underlay address). The other hosts are the test's, to build
/// by hand.
pub fn start_wireguard(lab: &mut Lab, weft: usize, extra: &[&str]) {
    for h in &mut lab.hosts {
        h.use_wireguard();
    }
    for h in &mut lab.hosts[..weft] {
        h.start(extra);
    }
    for h in &mut lab.hosts[..weft] {
        h.wait_ready();
        if h.has_ipv6() {
            h.add_container6();
        } else {
            h.add_container();
        }
    }
}

/// Waits (10 s) until every host's device has every other host's subnet among a peer's
/// allowed IPs.
pub fn wait_wg_converged(hosts: &[Host]) {
    let subnets: Vec<String> = hosts.iter().map(|h| h.subnet().to_string()).collect();
    for (i, h) in hosts.iter().enumerate() {
        let ok = wait_for(Duration::from_secs(10), || {
            let peers = h.wg_peers(WG_DEVICE);
            let all = (subnets.iter().enumerate())
                .filter(|(j, _)| *j != i)
                .all(|(_, s)| {
                    peers
                        .iter()
                        .any(|p| p.allowed_ips.split(',').any(|a| a == s))
                });
            all.then_some(())
        });
        assert!(
            ok.is_some(),
            "host {} does not have all peers after 10 s: {:?}\n{}",
            i + 1,
            h.wg_peers(WG_DEVICE),
            h.logs()
        );
    }
}

/// The pids of the wireguard-go processes running in the host's network namespace.
pub fn wireguard_go_pids(host: &Host) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", host.ns.name()])
        .output()
        .expect("ip netns pids");
    let mut pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "wireguard-go")
        })
        .collect();
    pids.sort();
    pids
}

/// The interface index of `dev` on the host, None when it does not exist.
pub fn ifindex(host: &Host, dev: &str) -> Option<u32> {
    let out = host.ns.try_ip(&["-o", "link", "show", dev]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()?
        .trim()
        .parse()
        .ok()
}
