//! The systemd machine lab (`scripts/machines`) as a test guard: Debian 12 machines booted with
//! systemd, weft installed from its package, each lab under a name of its own and powered off
//! and removed when the guard drops, also when a test fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::ping::Pinger;
use crate::wait::wait_for;

/// The CNI config the machines' containers are attached with: the plugin's defaults, which
/// are what the package's example conflist says.
const CNI_CONFIG: &str = r#"{"cniVersion":"1.0.0","name":"weft","type":"weft"}"#;

pub struct Machines {
    prefix: String,
    pub count: usize,
}

/// The workspace's `scripts/machines` (testkit lives one level below the workspace).
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/machines")
}

/// The package a test installs, from the variable `scripts/test` sets after `scripts/package`.
pub fn package(var: &str) -> PathBuf {
    let path = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with scripts/test, which builds the package with scripts/package and names it in {var}")
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    path
}

impl Machines {
    /// Boots `count` machines and provisions them with `deb` (vagrant/provision.sh).
    pub fn up(count: usize, deb: &Path) -> Machines {
        // Tests in one binary run in parallel, each with a lab of its own: the process id
        // tells runs apart, a letter the labs of one run.
        static LABS: AtomicU8 = AtomicU8::new(0);
        let lab = (b'a' + LABS.fetch_add(1, Ordering::SeqCst) % 26) as char;
        let prefix = format!("wm{}{lab}", std::process::id() % 100_000);
        let m = Machines { prefix, count };
        let out = m.script(&["up", &deb.to_string_lossy()]);
        assert!(
            out.status.success(),
            "scripts/machines up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        m
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The machine's address on the underlay.
    pub fn ip(&self, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 10 + n as u8)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(script());
        c.args(args)
            .env("WEFT_MACHINES", self.count.to_string())
            .env("WEFT_MACHINES_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        c
    }

    fn script(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()))
    }

    /// Runs `args` inside machine `n` as a service; the output whatever the exit status.
    pub fn exec(&self, n: usize, args: &[&str]) -> Output {
        let n = n.to_string();
        let mut full = vec!["exec", n.as_str()];
        full.extend_from_slice(args);
        self.script(&full)
    }

    /// Runs a shell script inside machine `n`, panicking with its output when it fails;
    /// returns its stdout.
    pub fn sh(&self, n: usize, script: &str) -> String {
        let out = self.exec(n, &["bash", "-c", script]);
        assert!(
            out.status.success(),
            "machine {n}: `{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -p NAME --value weftd` in machine `n`.
    pub fn weftd_property(&self, n: usize, name: &str) -> String {
        self.sh(n, &format!("systemctl show -p {name} --value weftd"))
            .trim()
            .to_string()
    }

    /// Waits until weftd in machine `n` is active (running): Type=notify makes that "ready".
    pub fn wait_weftd_running(&self, n: usize, timeout: Duration) {
        let ok = wait_for(timeout, || {
            let state = self.sh(
                n,
                "systemctl show -p ActiveState,SubState --value weftd | paste -sd/",
            );
            (state.trim() == "active/running").then_some(())
        });
        assert!(
            ok.is_some(),
            "weftd in machine {n} is not active (running):\n{}",
            self.journal(n)
        );
    }

    /// Moves the lab to the network config `config` (JSON), as an operator changes backends:
    /// weftd stopped everywhere, the old backend's device, subnet.env and leases removed, the
    /// config stored in etcd (machine 1), weftd started again by its unit and ready everywhere.
    pub fn use_network(&self, config: &str) {
        for n in 1..=self.count {
            self.sh(
                n,
                "systemctl stop weftd && { ip link del flannel.1 2>/dev/null || true; } \
                 && rm -f /run/flannel/subnet.env",
            );
        }
        self.sh(
            1,
            &format!(
                "set -a; . /etc/default/weftd; set +a; \
                 etcdctl --endpoints \"$WEFTD_ETCD_ENDPOINTS\" del --prefix /coreos.com/network/subnets >/dev/null && \
                 printf '%s' '{config}' >/var/tmp/weft/network.json && \
                 weftctl config set /var/tmp/weft/network.json"
            ),
        );
        for n in 1..=self.count {
            self.sh(n, "systemctl start weftd");
        }
        for n in 1..=self.count {
            self.wait_weftd_running(n, Duration::from_secs(10));
        }
    }

    /// weftd's journal in machine `n`, as the lines it logged.
    pub fn journal(&self, n: usize) -> String {
        String::from_utf8_lossy(
            &self
                .exec(n, &["journalctl", "-u", "weftd", "-o", "cat", "--no-pager"])
                .stdout,
        )
        .into_owned()
    }

    /// A container (network namespace `name`) in machine `n`, attached by the plugin as
    /// installed in /usr/lib/cni; returns its address.
    pub fn add_container(&self, n: usize, name: &str) -> Ipv4Addr {
        let out = self.sh(
            n,
            &format!(
                "ip netns add {name} && CNI_COMMAND=ADD CNI_CONTAINERID={name} \
                 CNI_NETNS=/run/netns/{name} CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
                 /usr/lib/cni/weft <<<'{CNI_CONFIG}'"
            ),
        );
        let result: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("machine {n}: the plugin's ADD result is not JSON ({e}): {out}")
        });
        let cidr = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("machine {n}: no address in the plugin's result: {out}"));
        cidr.split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!("machine {n}: the plugin's address {cidr} is not an IPv4 CIDR")
            })
    }

    /// One ping from container `from` in machine `n` to `dst`.
    pub fn ping_once(&self, n: usize, from: &str, dst: Ipv4Addr) -> bool {
        self.exec(
            n,
            &[
                "ip",
                "netns",
                "exec",
                from,
                "ping",
                "-c1",
                "-W2",
                "-q",
                &dst.to_string(),
            ],
        )
        .status
        .success()
    }

    /// Pings every 10 ms from container `from` (address `src`) in machine `n` until finished.
    pub fn start_pinging(&self, n: usize, from: &str, src: Ipv4Addr, dst: Ipv4Addr) -> Pinger {
        let prefix = [
            "env".to_string(),
            format!("WEFT_MACHINES={}", self.count),
            format!("WEFT_MACHINES_PREFIX={}", self.prefix),
            script().to_string_lossy().into_owned(),
            "exec".into(),
            n.to_string(),
            "ip".into(),
            "netns".into(),
            "exec".into(),
            from.into(),
        ];
        Pinger::start_with(prefix.to_vec(), src, dst)
    }

    /// Copies a file from this machine into machine `n` (under /var/tmp, which outlives a reboot
    /// and is not hidden by a private /tmp); returns the path inside.
    pub fn copy_in(&self, n: usize, file: &Path) -> String {
        let name = file.file_name().expect("a file name").to_string_lossy();
        let inside = format!("/var/tmp/weft/{name}");
        let dest = PathBuf::from(format!(
            "/run/weft-machines/{}/m{n}/root{inside}",
            self.prefix
        ));
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir in the machine");
        std::fs::copy(file, &dest)
            .unwrap_or_else(|e| panic!("copying {} into machine {n}: {e}", file.display()));
        inside
    }

    pub fn reboot(&self, n: usize) {
        let out = self.script(&["reboot", &n.to_string()]);
        assert!(
            out.status.success(),
            "rebooting machine {n} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Powers the machines off and removes the lab; what `Drop` does, with its outcome.
    pub fn down(&self) -> Output {
        self.script(&["down"])
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        let _ = self.down();
    }
}
