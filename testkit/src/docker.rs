//! Docker engine on a simulated host: Debian's dockerd started in a host namespace with
//! `nsenter --net` (`ip netns exec` would hide the cgroups), with data, exec root, pid file,
//! socket and cgroup parent of its own, and the options `weftctl docker-opts` prints. The
//! guard removes its containers, stops dockerd and removes what it left, also on failure.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::cmd::{run, unique};
use crate::netns::Netns;
use crate::ping::Pinger;
use crate::wait::wait_for;

/// Debian's client, which matches Debian's dockerd.
const DOCKER: &str = "/usr/bin/docker";

/// dockerds alive in this test process: the last one to go removes what all of them share.
static ALIVE: AtomicUsize = AtomicUsize::new(0);
/// What every dockerd leaves behind, shared by all of them.
const SHARED: [&str; 4] = [
    "/etc/docker/key.json",
    "/run/docker",
    "/run/containerd",
    "/opt/containerd",
];
/// Which of [`SHARED`] were there before the first dockerd: those are someone else's.
static PREEXISTING: std::sync::Mutex<Vec<&str>> = std::sync::Mutex::new(Vec::new());

pub struct Dockerd {
    netns: PathBuf,
    dir: tempfile::TempDir,
    cgroup: String,
    /// dockerd's own options: the weft ones plus --iptables.
    args: Vec<String>,
    child: Option<Child>,
    pub image: String,
}

/// The options in `DOCKER_OPTS="..."` as weftctl docker-opts writes them, split the way
/// systemd splits an unquoted $DOCKER_OPTS.
pub fn docker_opts(weftctl: &Path, subnet_file: &Path) -> Vec<String> {
    let text = run(
        &weftctl.to_string_lossy(),
        &["docker-opts", "-c", "-f", &subnet_file.to_string_lossy()],
    );
    let value = text
        .trim()
        .strip_prefix("DOCKER_OPTS=\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("weftctl docker-opts printed {text:?}"));
    value.split_whitespace().map(String::from).collect()
}

impl Dockerd {
    /// Starts dockerd in `ns` with `opts` (from [`docker_opts`]) and imports a busybox image.
    pub fn start(ns: &Netns, opts: Vec<String>, iptables: bool) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("weft-docker-")
            .tempdir()
            .expect("tempdir");
        let mut args = opts;
        args.push(format!("--iptables={iptables}"));
        if ALIVE.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut pre = PREEXISTING.lock().unwrap_or_else(|p| p.into_inner());
            *pre = SHARED
                .into_iter()
                .filter(|p| Path::new(p).exists())
                .collect();
        }
        let mut d = Dockerd {
            netns: ns.path(),
            cgroup: unique("dk"),
            dir,
            args,
            child: None,
            image: "weft-busybox".into(),
        };
        d.spawn();
        d.import_busybox();
        d
    }

    fn sock(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn spawn(&mut self) {
        let p = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("dockerd.log"))
            .expect("dockerd log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("dockerd")
            .args(["--data-root", &p.join("data").to_string_lossy()])
            .args(["--exec-root", &p.join("exec").to_string_lossy()])
            .args(["--pidfile", &p.join("docker.pid").to_string_lossy()])
            .args(["-H", &self.sock()])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .args(["--cgroup-parent", &format!("/{}", self.cgroup)])
            // vfs works on every file system, an overlay root (CI's) included.
            .args(["--storage-driver", "vfs"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("cannot run dockerd (Debian package docker.io; scripts/setup installs it)");
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(30), || {
            self.docker(&["info"]).status.success().then_some(())
        });
        assert!(up.is_some(), "dockerd did not come up:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS` against this dockerd, whatever its exit status.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .args(["-H", &self.sock()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run docker (Debian package docker.io)")
    }

    /// `docker ARGS`, panicking with its output on failure; returns stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}\ndockerd's log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn import_busybox(&self) {
        let tar = crate::cmd::busybox_tar(self.dir.path());
        self.ok(&["import", &tar.to_string_lossy(), &self.image]);
    }

    /// Starts a container that dockerd brings back after a restart; returns its address.
    pub fn run_container(&self, name: &str) -> Ipv4Addr {
        self.ok(&[
            "run",
            "-d",
            "--restart=always",
            "--name",
            name,
            &self.image,
            "sleep",
            "100000",
        ]);
        self.address(name)
    }

    pub fn address(&self, name: &str) -> Ipv4Addr {
        let ip = self.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]);
        ip.parse()
            .unwrap_or_else(|_| panic!("container {name} has no IPv4 address: {ip:?}"))
    }

    /// The container's network namespace, for tools of this machine (iputils' ping).
    pub fn netns_of(&self, name: &str) -> String {
        let pid = self.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
        format!("/proc/{pid}/ns/net")
    }

    pub fn ping_once(&self, name: &str, dst: Ipv4Addr) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns_of(name)))
            .args(["ping", "-c1", "-W2", "-q", &dst.to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Pings every 10 ms from container `name` until finished.
    pub fn start_pinging(&self, name: &str, dst: Ipv4Addr) -> Pinger {
        let src = self.address(name);
        let prefix = vec![
            "nsenter".to_string(),
            format!("--net={}", self.netns_of(name)),
        ];
        Pinger::start_with(prefix, src, dst)
    }

    /// Stops dockerd (containers keep their configuration); `start_again` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let stopped = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
            if stopped.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    fn remove_leftovers(&self) {
        // A failed start can leave the data root mounted on itself.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.path().to_string_lossy().into_owned();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        for h in [
            "systemd", "unified", "cpu", "cpuacct", "memory", "pids", "blkio", "devices",
            "freezer", "cpuset",
        ] {
            let d = format!("/sys/fs/cgroup/{h}/{}", self.cgroup);
            let _ = Command::new("find")
                .args([&d, "-depth", "-type", "d", "-exec", "rmdir", "{}", "+"])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let names = String::from_utf8_lossy(&self.docker(&["ps", "-aq"]).stdout).into_owned();
            for id in names.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.stop();
        self.remove_leftovers();
        if ALIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
            // What every dockerd shares, gone with the last one (unless it was there before).
            let pre = PREEXISTING
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for p in SHARED.into_iter().filter(|p| !pre.contains(p)) {
                let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
            }
            let _ = std::fs::remove_dir("/etc/docker");
        }
    }
}
