//! weft on real systemd machines: three Debian 12 systems booted with systemd (scripts/machines),
//! weft installed from its package and run by its unit as shipped, through the life an
//! operator gives it: start, restart, a killed daemon, a reboot, an upgrade, a purge, a wrong
//! etcd endpoint. One lab, one test: booting it is the expensive part.

use std::time::{Duration, Instant};

use testkit::machines::{package, Machines};
use testkit::wait::wait_for;
use testkit::wg::{WG_CONFIG, WG_DEVICE};

/// weftd's capabilities as the unit grants them: CAP_NET_ADMIN (12) and CAP_NET_RAW (13).
const UNIT_CAPS: &str = "0000000000003000";

#[test]
fn weft_from_its_package_on_systemd_machines() {
    let deb = package("WEFT_TEST_DEB");
    let newer = package("WEFT_TEST_DEB_NEWER");
    let started = Instant::now();
    let lab = Machines::up(3, &deb);
    eprintln!(
        "machines: booted and provisioned in {:?}",
        started.elapsed()
    );

    runs_ready_under_the_hardened_unit(&lab);
    let ctr: Vec<_> = (1..=3).map(|n| lab.add_container(n, "c1")).collect();
    containers_reach_each_other(&lab, &ctr);
    journal_and_weftctl(&lab);
    restart_and_kill_lose_nothing(&lab, &ctr);
    reboot_keeps_subnet_and_mac(&lab, &ctr);
    upgrade_loses_nothing(&lab, &ctr, &newer);
    purge_leaves_the_datapath(&lab, &ctr);
    wrong_endpoint_stays_activating(&lab);

    let prefix = lab.prefix().to_string();
    let out = lab.down();
    assert!(
        out.status.success(),
        "scripts/machines down failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nothing_left(&prefix);
}

/// The wireguard backend under the unit as shipped, on two machines whose kernel (this one's)
/// may lack WireGuard: weftd then starts wireguard-go inside its sandbox, wireguard-go outlives
/// a restart of weftd, and the key survives a reboot.
#[test]
fn wireguard_from_its_package_on_systemd_machines() {
    let deb = package("WEFT_TEST_DEB");
    let started = Instant::now();
    let lab = Machines::up(2, &deb);
    lab.use_network(WG_CONFIG);
    eprintln!(
        "machines (wireguard): booted, provisioned and on the wireguard backend in {:?}",
        started.elapsed()
    );
    let kernel = lab
        .exec(1, &["test", "-d", "/sys/module/wireguard"])
        .status
        .success();
    eprintln!(
        "WireGuard mode: {}",
        if kernel {
            "kernel module"
        } else {
            "userspace (wireguard-go under the unit): this kernel has no WireGuard module"
        }
    );

    let public: Vec<String> = (1..=2).map(|n| wg_public_key(&lab, n)).collect();
    for (n, other) in [(1, 2), (2, 1)] {
        let ok = wait_for(Duration::from_secs(10), || {
            let peers = lab.sh(n, &format!("wg show {WG_DEVICE} endpoints"));
            peers
                .lines()
                .any(|l| {
                    l.starts_with(&public[other - 1])
                        && l.ends_with(&format!("{}:51820", lab.ip(other)))
                })
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "machine {n}: `wg show {WG_DEVICE}` does not list machine {other} ({}) as a peer:\n{}\n{}",
            public[other - 1],
            lab.sh(n, &format!("wg show {WG_DEVICE}")),
            lab.journal(n)
        );
    }
    if !kernel {
        for n in 1..=2 {
            let uid = process_uid(&lab, n, &lab.weftd_property(n, "MainPID"));
            let wg_uid = process_uid(&lab, n, &wireguard_go_pid(&lab, n));
            assert_eq!(
                wg_uid, uid,
                "machine {n}: wireguard-go runs as another user than weftd"
            );
        }
    }

    let ctr: Vec<_> = (1..=2).map(|n| lab.add_container(n, "c1")).collect();
    for (from, to) in [(1, 2), (2, 1)] {
        let ok = wait_for(Duration::from_secs(10), || {
            lab.ping_once(from, "c1", ctr[to - 1]).then_some(())
        });
        assert!(
            ok.is_some(),
            "container in machine {from} cannot reach {} in machine {to} over WireGuard:\n{}",
            ctr[to - 1],
            lab.journal(from)
        );
    }

    wireguard_restart_loses_nothing(&lab, &ctr, kernel);
    wireguard_key_survives_reboot(&lab, &public);

    let prefix = lab.prefix().to_string();
    let out = lab.down();
    assert!(
        out.status.success(),
        "scripts/machines down failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nothing_left(&prefix);
}

/// The IPv4 address of device `dev` in machine `n` (a backend device's `<subnet ip>/32`).
fn device_ipv4(lab: &Machines, n: usize, dev: &str) -> std::net::Ipv4Addr {
    lab.sh(n, &format!("ip -4 -o addr show dev {dev}"))
        .split_whitespace()
        .nth(3)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{dev}'s address in machine {n}"))
}

/// Reboots machine `n` and waits until weftd runs there again, saying how long that took.
fn reboot(lab: &Machines, n: usize, what: &str) {
    let rebooted = Instant::now();
    lab.reboot(n);
    lab.wait_weftd_running(n, Duration::from_secs(20));
    eprintln!(
        "{what}: machine {n} rebooted and ready in {:?}",
        rebooted.elapsed()
    );
}

/// `wg show flannel-wg public-key` in machine `n`.
fn wg_public_key(lab: &Machines, n: usize) -> String {
    let key = lab
        .sh(n, &format!("wg show {WG_DEVICE} public-key"))
        .trim()
        .to_string();
    assert_eq!(key.len(), 44, "machine {n}: public key {key:?}");
    key
}

/// The pid of the one wireguard-go in machine `n`.
fn wireguard_go_pid(lab: &Machines, n: usize) -> String {
    let pids = lab.sh(n, "pgrep -x wireguard-go || true");
    let pids: Vec<&str> = pids.split_whitespace().collect();
    assert_eq!(
        pids.len(),
        1,
        "machine {n}: not exactly one wireguard-go: {pids:?}"
    );
    pids[0].to_string()
}

/// The real UID of process `pid` in machine `n`.
fn process_uid(lab: &Machines, n: usize, pid: &str) -> String {
    lab.sh(
        n,
        &format!("awk '/^Uid:/ {{ print $2 }}' /proc/{pid}/status"),
    )
    .trim()
    .to_string()
}

/// `systemctl restart weftd` in machine 1 while containers ping each other every 10 ms: no
/// ping lost, and wireguard-go (when it carries the device) is the same process afterwards,
/// adopted by the new weftd through its socket, under the same dynamic UID.
fn wireguard_restart_loses_nothing(lab: &Machines, ctr: &[std::net::Ipv4Addr], kernel: bool) {
    let wg_pid = (!kernel).then(|| wireguard_go_pid(lab, 1));
    let old_pid = lab.weftd_property(1, "MainPID");
    let old_uid = process_uid(lab, 1, &old_pid);
    across(
        lab,
        ctr,
        (1, 2),
        "a restart of weftd (wireguard)",
        150,
        || {
            let restarted = Instant::now();
            lab.sh(1, "systemctl restart weftd");
            lab.wait_weftd_running(1, Duration::from_secs(10));
            eprintln!(
                "machines (wireguard): weftd restarted and ready in {:?}",
                restarted.elapsed()
            );
        },
    );
    let new_pid = lab.weftd_property(1, "MainPID");
    assert_ne!(new_pid, old_pid, "weftd was not restarted");
    assert_eq!(
        process_uid(lab, 1, &new_pid),
        old_uid,
        "the restarted weftd has another dynamic UID"
    );
    if let Some(wg_pid) = wg_pid {
        assert_eq!(
            wireguard_go_pid(lab, 1),
            wg_pid,
            "wireguard-go did not outlive weftd's restart:\n{}",
            lab.journal(1)
        );
    }
}

/// Containers in machines `a` and `b` ping each other every 10 ms from a second before `op`
/// until a second after it (pacing: the pings must cover it); neither way may lose one, and
/// at least `at_least` must go each way.
fn across(
    lab: &Machines,
    ctr: &[std::net::Ipv4Addr],
    (a, b): (usize, usize),
    what: &str,
    at_least: u64,
    op: impl FnOnce(),
) {
    let there = lab.start_pinging(b, "c1", ctr[b - 1], ctr[a - 1]);
    let back = lab.start_pinging(a, "c1", ctr[a - 1], ctr[b - 1]);
    std::thread::sleep(Duration::from_secs(1));
    op();
    std::thread::sleep(Duration::from_secs(1));
    there
        .finish()
        .assert_no_loss(&format!("machine {b} -> {a} across {what}"), at_least);
    back.finish()
        .assert_no_loss(&format!("machine {a} -> {b} across {what}"), at_least);
}

/// The key file is weftd's alone (0400 in its state directory) and machine 2 keeps its public
/// key across a reboot; machine 1 reaches it again without learning a new key.
fn wireguard_key_survives_reboot(lab: &Machines, public: &[String]) {
    let key_file = "/var/lib/private/weft/wgkey";
    let stat = |n: usize| lab.sh(n, &format!("stat -c '%a %u' {key_file}"));
    let before = stat(2);
    let uid = process_uid(lab, 2, &lab.weftd_property(2, "MainPID"));
    assert_eq!(
        before.trim(),
        format!("400 {uid}"),
        "machine 2: {key_file}'s mode and owner (weftd's UID {uid})"
    );
    let address = device_ipv4(lab, 2, WG_DEVICE);

    reboot(lab, 2, "machines (wireguard)");
    assert_eq!(stat(2), before, "machine 2: {key_file} after the reboot");
    assert_eq!(
        wg_public_key(lab, 2),
        public[1],
        "machine 2's public key changed across the reboot"
    );
    let resumed = wait_for(Duration::from_secs(10), || {
        lab.ping_once(1, "c1", address).then_some(())
    });
    assert!(
        resumed.is_some(),
        "machine 1 cannot reach rebooted machine 2 at {address}:\n{}",
        lab.journal(2)
    );
    let peers = lab.sh(1, &format!("wg show {WG_DEVICE} peers"));
    assert_eq!(
        peers.split_whitespace().collect::<Vec<_>>(),
        [public[1].as_str()],
        "machine 1's peers after machine 2's reboot"
    );
}

fn runs_ready_under_the_hardened_unit(lab: &Machines) {
    for n in 1..=3 {
        lab.wait_weftd_running(n, Duration::from_secs(10));
        assert_eq!(lab.weftd_property(n, "Type"), "notify", "machine {n}");
        assert_eq!(
            lab.weftd_property(n, "FragmentPath"),
            "/lib/systemd/system/weftd.service"
        );
        let pid = lab.weftd_property(n, "MainPID");
        let status = lab.sh(n, &format!("cat /proc/{pid}/status"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        let uid = field("Uid:");
        assert!(
            !uid.starts_with("0\t") && !uid.starts_with("0 "),
            "machine {n}: weftd runs as root (Uid: {uid}); the unit gives it a user of its own"
        );
        assert_eq!(
            field("CapEff:"),
            UNIT_CAPS,
            "machine {n}: weftd's capabilities"
        );
        let env = lab.sh(n, "cat /run/flannel/subnet.env");
        assert!(
            env.contains("FLANNEL_SUBNET="),
            "machine {n}: subnet.env: {env}"
        );
    }
}

fn containers_reach_each_other(lab: &Machines, ctr: &[std::net::Ipv4Addr]) {
    for from in 1..=3 {
        for (to, dst) in ctr.iter().enumerate() {
            if to + 1 != from {
                assert!(
                    lab.ping_once(from, "c1", *dst),
                    "container in machine {from} cannot reach {dst} in machine {}:\n{}",
                    to + 1,
                    lab.journal(from)
                );
            }
        }
    }
}

fn journal_and_weftctl(lab: &Machines) {
    for n in 1..=3 {
        let journal = lab.journal(n);
        assert!(
            journal.contains("lease"),
            "machine {n}: weftd logged nothing about its lease:\n{journal}"
        );
        assert!(
            !journal.contains('\x1b'),
            "machine {n}: terminal escapes in the journal:\n{journal:?}"
        );
        let leases = lab.sh(n, "set -a; . /etc/default/weftd; weftctl leases");
        assert_eq!(
            leases.lines().skip(1).count(),
            3,
            "machine {n}: weftctl leases against the etcd service:\n{leases}"
        );
    }
}

/// `systemctl restart weftd`, then `systemctl kill -s KILL weftd` (systemd starts it again):
/// containers on two machines ping each other throughout and lose nothing.
fn restart_and_kill_lose_nothing(lab: &Machines, ctr: &[std::net::Ipv4Addr]) {
    across(lab, ctr, (1, 2), "restart and SIGKILL", 200, || {
        lab.sh(1, "systemctl restart weftd");
        lab.wait_weftd_running(1, Duration::from_secs(10));
        let restarts = lab.weftd_property(1, "NRestarts");
        let old_pid = lab.weftd_property(1, "MainPID");
        lab.sh(1, "systemctl kill -s KILL weftd");
        let back_up = wait_for(Duration::from_secs(15), || {
            let pid = lab.weftd_property(1, "MainPID");
            let state = lab.weftd_property(1, "SubState");
            (pid != "0" && pid != old_pid && state == "running").then_some(())
        });
        assert!(
            back_up.is_some(),
            "systemd did not start weftd again after SIGKILL:\n{}",
            lab.journal(1)
        );
        assert_ne!(
            lab.weftd_property(1, "NRestarts"),
            restarts,
            "systemd counted no restart"
        );
    });
}

/// Machine 2 reboots: it comes back with the same subnet and VTEP MAC, weftd starts by
/// itself, the other machines learn nothing new, and traffic to it resumes by itself.
fn reboot_keeps_subnet_and_mac(lab: &Machines, ctr: &[std::net::Ipv4Addr]) {
    let subnet_env = lab.sh(2, "cat /run/flannel/subnet.env");
    let mac = lab.sh(2, "cat /sys/class/net/flannel.1/address");
    let peer_lines = |n: usize| {
        lab.journal(n)
            .lines()
            .filter(|l| {
                ["peer joined", "peers joined", "peer left", "peers left"]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .count()
    };
    let before = [peer_lines(1), peer_lines(3)];
    let vtep = device_ipv4(lab, 2, "flannel.1");

    reboot(lab, 2, "machines");
    assert_eq!(
        lab.sh(2, "cat /run/flannel/subnet.env"),
        subnet_env,
        "subnet after reboot"
    );
    assert_eq!(
        lab.sh(2, "cat /sys/class/net/flannel.1/address"),
        mac,
        "VTEP MAC after reboot"
    );
    let resumed = wait_for(Duration::from_secs(10), || {
        lab.ping_once(1, "c1", vtep).then_some(())
    });
    assert!(
        resumed.is_some(),
        "machine 1 cannot reach rebooted machine 2 at {vtep}"
    );
    assert_eq!(
        [peer_lines(1), peer_lines(3)],
        before,
        "the other machines re-learnt machine 2 after its reboot:\n{}",
        lab.journal(1)
    );
    let _ = ctr;
}

/// The package upgraded to a newer build on machine 1 while containers ping across: nothing
/// lost, and the newer weftd runs.
fn upgrade_loses_nothing(lab: &Machines, ctr: &[std::net::Ipv4Addr], newer: &std::path::Path) {
    let inside = lab.copy_in(1, newer);
    across(lab, ctr, (1, 3), "the upgrade", 100, || {
        let old_pid = lab.weftd_property(1, "MainPID");
        lab.sh(
            1,
            &format!("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {inside}"),
        );
        lab.wait_weftd_running(1, Duration::from_secs(10));
        let version = lab.sh(1, "dpkg-query -W -f='${Version}' weft");
        assert!(
            newer.to_string_lossy().contains(&format!("_{version}_")),
            "installed version {version} is not the newer package's"
        );
        assert_ne!(
            lab.weftd_property(1, "MainPID"),
            old_pid,
            "the upgrade did not restart weftd"
        );
    });
}

/// `apt-get purge weft` on machine 3: weftd stopped, every file of the package gone, the
/// kernel datapath left as it was (containers there keep their connectivity).
fn purge_leaves_the_datapath(lab: &Machines, ctr: &[std::net::Ipv4Addr]) {
    let files = lab.sh(3, "dpkg-query -L weft");
    lab.sh(
        3,
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq weft",
    );
    let running = lab.exec(3, &["pgrep", "-x", "weftd"]);
    assert!(
        !running.status.success(),
        "weftd still runs after the purge"
    );
    let left = lab.sh(
        3,
        &format!(
            "for f in {}; do [ -f \"$f\" ] && echo \"$f\"; done; true",
            files.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    );
    assert!(
        left.trim().is_empty(),
        "files of the package left after purge:\n{left}"
    );
    assert!(
        !lab.exec(3, &["test", "-e", "/etc/default/weftd"])
            .status
            .success(),
        "/etc/default/weftd is still there after purge"
    );
    assert!(
        lab.exec(3, &["ip", "link", "show", "flannel.1"])
            .status
            .success(),
        "the purge took flannel.1"
    );
    assert!(
        lab.ping_once(3, "c1", ctr[0]),
        "after the purge the container in machine 3 cannot reach machine 1"
    );
}

/// A wrong etcd endpoint: the unit stays activating (never ready) and the journal names the
/// endpoint it cannot reach.
fn wrong_endpoint_stays_activating(lab: &Machines) {
    let bad = "http://198.18.0.99:2379";
    lab.sh(
        2,
        &format!("sed -i 's|^WEFTD_ETCD_ENDPOINTS=.*|WEFTD_ETCD_ENDPOINTS={bad}|' /etc/default/weftd && systemctl restart --no-block weftd"),
    );
    // The new weftd has tried the endpoint and said so: only then does "still activating"
    // mean it was never ready, rather than not yet started.
    let named = wait_for(Duration::from_secs(20), || {
        let journal = lab.journal(2);
        journal
            .lines()
            .rev()
            .take(20)
            .any(|l| l.contains("198.18.0.99:2379"))
            .then_some(())
    });
    assert!(
        named.is_some(),
        "the journal does not name the unreachable endpoint:\n{}",
        lab.journal(2)
    );
    assert_eq!(lab.weftd_property(2, "ActiveState"), "activating");
}

/// Nothing of the lab is left on this machine: namespaces, mounts, cgroups, processes.
fn nothing_left(prefix: &str) {
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(netns.is_empty(), "namespaces left: {netns:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    let state = format!("/run/weft-machines/{prefix}");
    assert!(!mounts.contains(&state), "mounts left under {state}");
    for h in ["systemd", "unified"] {
        let d = format!("/sys/fs/cgroup/{h}/{prefix}-1");
        assert!(!std::path::Path::new(&d).exists(), "cgroup {d} left");
    }
    let procs = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("-M {prefix}-")])
        .output()
        .expect("pgrep");
    assert!(
        !procs.status.success(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}
