//! weftd's life cycle and self-healing across hosts in network namespaces, against a real
//! etcd: a revoked host leaves its peers' kernels, objects deleted by hand come back, a restart
//! or an etcd outage costs no packet, and a host whose own lease vanished takes it back.

use std::time::{Duration, Instant};

use testkit::lab::{assert_within, keep_running, Host, Lab, Peer, VXLAN_CONFIG, VXLAN_DEVICE};
use testkit::wait::{time_until, wait_for};

/// How fast peers must forget a revoked host and drift must be repaired.
const BOUND: Duration = Duration::from_secs(2);
/// How long to keep polling past the bound, so a failure says how late it was.
const PATIENCE: Duration = Duration::from_secs(10);

fn assert_pings(from: &Host, to: &Host, what: &str) {
    from.reach_within(to, Duration::from_secs(5), what);
}

#[test]
fn a_revoked_host_vanishes_from_its_peers_within_2s() {
    let mut lab = Lab::new(3, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let gone = lab.hosts[2].as_peer();
    for h in &lab.hosts[..2] {
        assert_eq!(h.objects_for(&gone), [true; 3], "{}", h.ns.name());
        assert_pings(h, &lab.hosts[2], "before the revoke");
    }

    // The host is dead; a running weftd would take its lease straight back (tested below).
    let status = lab.hosts[2].stop();
    assert!(status.success(), "weftd exited with {status}");
    let revoked = lab.revoke_lease(gone.subnet);
    for h in &lab.hosts[..2] {
        let took = time_until(PATIENCE, revoked, || h.objects_for(&gone) == [false; 3]);
        assert_within(
            took,
            BOUND,
            PATIENCE,
            "removing the revoked host's route, neighbour and FDB entry",
            h,
        );
    }
    assert!(lab.lease_value(gone.subnet).is_none());
    // The survivors are untouched.
    assert_pings(&lab.hosts[0], &lab.hosts[1], "after the revoke");
    assert_pings(&lab.hosts[1], &lab.hosts[0], "after the revoke");
    assert_eq!(lab.hosts[0].metric("weft_peers_programmed"), Some(1.0));
}

#[test]
fn objects_deleted_by_hand_come_back_and_are_counted() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let peer: Peer = b.as_peer();
    assert_eq!(a.objects_for(&peer), [true; 3]);

    let subnet = peer.subnet.to_string();
    let gw = peer.subnet.network().to_string();
    let deletions: [(&str, Vec<&str>); 3] = [
        ("route", vec!["ip", "route", "del", &subnet]),
        (
            "neighbour",
            vec!["ip", "neigh", "del", &gw, "dev", VXLAN_DEVICE],
        ),
        (
            "FDB entry",
            vec![
                "bridge",
                "fdb",
                "del",
                &peer.mac,
                "dev",
                VXLAN_DEVICE,
                "dst",
                &peer.ip,
            ],
        ),
    ];
    for (what, cmd) in &deletions {
        a.assert_mends(
            &format!("a deleted {what}"),
            BOUND,
            PATIENCE,
            || {
                let out = a.ns.exec(cmd);
                assert!(
                    out.status.success(),
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            },
            || a.objects_for(&peer) == [true; 3],
        );
    }
    assert_pings(a, b, "after the repairs");

    // The device taken down (which drops its routes) and its address removed.
    let own_addr = format!("{}/32", a.subnet().network());
    let has_addr = || {
        a.ns.ip(&["-o", "-4", "addr", "show", "dev", VXLAN_DEVICE])
            .contains(&own_addr)
    };
    let is_up = || {
        a.ns.ip(&["-o", "link", "show", VXLAN_DEVICE])
            .contains(",UP,")
    };
    let changes: [(&str, Vec<&str>); 2] = [
        (
            "the device taken down",
            vec!["link", "set", VXLAN_DEVICE, "down"],
        ),
        (
            "the device's address removed",
            vec!["addr", "del", &own_addr, "dev", VXLAN_DEVICE],
        ),
    ];
    for (what, cmd) in &changes {
        a.assert_mends(
            what,
            BOUND,
            PATIENCE,
            || {
                a.ns.ip(cmd);
            },
            || is_up() && has_addr() && a.objects_for(&peer) == [true; 3],
        );
    }
    assert_pings(a, b, "after the device was repaired");

    // The device itself: recreated with the MAC the lease advertises, so no peer has to
    // learn a new one.
    let mac = a.vtep_mac();
    let device_back = || {
        a.ns.try_ip(&["link", "show", VXLAN_DEVICE])
            .status
            .success()
    };
    a.assert_mends(
        "the deleted VXLAN device, with its peers",
        Duration::from_secs(5),
        PATIENCE,
        || {
            a.ns.ip(&["link", "del", VXLAN_DEVICE]);
        },
        || device_back() && a.objects_for(&peer) == [true; 3],
    );
    assert_eq!(a.vtep_mac(), mac, "the recreated device has another MAC");
    let addr = a.ns.ip(&["-o", "-4", "addr", "show", "dev", VXLAN_DEVICE]);
    assert!(
        addr.contains(&format!("{}/32", a.subnet().network())),
        "{addr}"
    );
    assert_pings(a, b, "after the device was recreated");
    assert_pings(b, a, "after the device was recreated");
    let lease = lab.lease_value(a.subnet()).expect("a's lease");
    assert_eq!(lease["BackendData"]["VtepMAC"], mac.as_str());
    assert!(a.repairs() >= 6.0, "{}", a.http_get("/metrics").1);
    assert_eq!(a.http_get("/readyz").0, 200, "{}", a.http_get("/readyz").1);
}

#[test]
fn a_restart_loses_no_packet_and_leaves_the_datapath_alone() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let peer = lab.hosts[1].as_peer();
    let mac = lab.hosts[0].vtep_mac();
    let there = lab.hosts[0].start_pinging(lab.hosts[1].container_ip());
    let back = lab.hosts[1].start_pinging(lab.hosts[0].container_ip());
    std::thread::sleep(Duration::from_millis(500));

    let a = &mut lab.hosts[0];
    let asked = Instant::now();
    let status = a.stop();
    let took = asked.elapsed();
    eprintln!("weftd exited {took:?} after SIGTERM");
    assert!(
        status.success(),
        "weftd exited with {status}:\n{}",
        a.logs()
    );
    assert!(
        took < BOUND,
        "weftd took {took:?} to exit on SIGTERM:\n{}",
        a.logs()
    );
    // Down: nothing answers, and the kernel keeps everything weftd made.
    assert_eq!(a.http_get("/healthz").0, 0, "something still answers");
    for _ in 0..5 {
        assert_eq!(a.objects_for(&peer), [true; 3], "while weftd is down");
        std::thread::sleep(Duration::from_millis(200));
    }

    a.start(&[]);
    a.wait_ready();
    // A full pass begun after the start has looked at the device: had weftd meant to
    // replace it, it would have by now.
    a.wait_next_reconcile("after the restart");
    assert_eq!(a.vtep_mac(), mac, "the restart replaced the device");
    assert_eq!(a.objects_for(&peer), [true; 3], "after the restart");
    let there = there.finish();
    let back = back.finish();
    there.assert_no_loss("host 1 -> host 2 across the restart", 60);
    back.assert_no_loss("host 2 -> host 1 across the restart", 60);
}

#[test]
fn an_etcd_outage_loses_no_packet_and_hosts_join_afterwards() {
    const OUTAGE: Duration = Duration::from_secs(20);
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let there = lab.hosts[0].start_pinging(lab.hosts[1].container_ip());
    let back = lab.hosts[1].start_pinging(lab.hosts[0].container_ip());

    lab.etcd.stop();
    keep_running(&mut lab.hosts, OUTAGE, "while etcd was down");
    for h in &lab.hosts {
        assert_eq!(h.http_get("/healthz").0, 200, "{}", h.ns.name());
        let logs = h.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("WARN") && l.contains("retrying")),
            "weftd on {} does not warn that it is retrying:\n{logs}",
            h.ns.name(),
        );
        // The log goes to a file here, as under systemd: colour escapes would be noise in it.
        assert!(
            !logs.contains('\x1b'),
            "weftd's log file on {} holds terminal escapes:\n{logs:?}",
            h.ns.name(),
        );
    }
    lab.etcd.start();
    // An operator reading the logs learns the outage is over without waiting for a lease
    // to change.
    for h in &lab.hosts {
        let resumed = wait_for(Duration::from_secs(10), || {
            h.logs()
                .lines()
                .any(|l| l.contains("INFO") && l.contains("lease watch resumed"))
                .then_some(())
        });
        assert!(
            resumed.is_some(),
            "weftd on {} does not say the lease watch resumed after etcd came back:\n{}",
            h.ns.name(),
            h.logs()
        );
    }
    let there = there.finish();
    let back = back.finish();
    there.assert_no_loss("host 1 -> host 2 across the etcd outage", 800);
    back.assert_no_loss("host 2 -> host 1 across the etcd outage", 800);

    // A host joining once etcd is back is learnt by the old ones, and learns them.
    let n = lab.add_host();
    lab.hosts[n].start(&[]);
    lab.hosts[n].wait_ready();
    lab.hosts[n].add_container();
    let newcomer = lab.hosts[n].as_peer();
    for h in &lab.hosts[..n] {
        let learnt = wait_for(Duration::from_secs(15), || {
            (h.objects_for(&newcomer) == [true; 3]).then_some(())
        });
        assert!(
            learnt.is_some(),
            "{} did not learn the new host:\n{}",
            h.ns.name(),
            h.logs()
        );
        assert_pings(h, &lab.hosts[n], "old host to the new one");
        assert_pings(&lab.hosts[n], h, "new host to an old one");
    }
    for h in &mut lab.hosts {
        assert!(h.is_running(), "{}:\n{}", h.ns.name(), h.logs());
    }
}

#[test]
fn a_host_whose_lease_was_revoked_takes_it_back() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    let a = lab.hosts[0].as_peer();
    let old_id = lab.lease_id(a.subnet).expect("host 1's lease in etcd");

    lab.revoke_lease(a.subnet);
    let new_id = wait_for(PATIENCE, || {
        lab.lease_id(a.subnet).filter(|id| *id != old_id)
    });
    assert!(
        new_id.is_some_and(|id| id != 0),
        "host 1 did not take {} back:\n{}",
        a.subnet,
        lab.hosts[0].logs()
    );
    let lease = lab.lease_value(a.subnet).expect("host 1's lease");
    assert_eq!(lease["PublicIP"], a.ip.as_str());
    assert_eq!(lease["BackendData"]["VtepMAC"], a.mac.as_str());
    assert_eq!(lab.hosts[0].subnet(), a.subnet, "subnet.env changed");
    assert_eq!(lab.hosts[0].vtep_mac(), a.mac);

    let b = &lab.hosts[1];
    let learnt = wait_for(Duration::from_secs(5), || {
        (b.objects_for(&a) == [true; 3]).then_some(())
    });
    assert!(
        learnt.is_some(),
        "host 2 did not learn host 1 again:\n{}",
        b.logs()
    );
    assert_pings(b, &lab.hosts[0], "after the lease came back");
    assert_pings(&lab.hosts[0], b, "after the lease came back");
    assert_eq!(lab.hosts[0].http_get("/readyz").0, 200);
    assert_eq!(
        lab.hosts[0].metric("weft_lease_acquisitions_total"),
        Some(2.0)
    );
}
