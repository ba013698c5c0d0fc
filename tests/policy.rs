//! Network policy end to end: real etcd, weftd on lab hosts, the plugin executed as
//! runtimes execute it, real nftables in the hosts' namespaces, TCP connections between
//! containers. Each test asserts what a user notices: a connection made or refused.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use testkit::cni::{Container, Plugin};
use testkit::lab::{test_policy, Lab, VXLAN_CONFIG};
use testkit::tcp::{connects, listen};
use testkit::wait::wait_for;

/// How long a refused connect is given: an allowed one on these labs takes milliseconds.
const REFUSED_AFTER: Duration = Duration::from_millis(400);

fn ip(c: &Container) -> IpAddr {
    IpAddr::V4(c.ip)
}

fn ok(from: &Container, to: &Container, port: u16) -> bool {
    connects(&from.ns, ip(to), port, Duration::from_secs(2))
}

fn refused(from: &Container, to: &Container, port: u16) -> bool {
    !connects(&from.ns, ip(to), port, REFUSED_AFTER)
}

/// Two hosts; the Kubernetes example isolates `db` on host 1. Checked: a remote frontend
/// and a local one get in on 6379, not on another port; a remote pod of another role is
/// refused; namespaceSelector admits a pod of a labelled namespace; a new remote frontend
/// gets in within 1 s of its ADD; a new db refuses forbidden traffic the moment its ADD
/// returns, also with weftd SIGKILLed and with etcd down; db's egress is refused outside
/// its rule; deleting the policy opens everything again.
#[test]
fn the_kubernetes_example_across_two_hosts() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    let dirs = [lab.dir.path().join("cni1"), lab.dir.path().join("cni2")];
    let p1 = Plugin::new(&lab.hosts[0], &dirs[0]);
    let p2 = Plugin::new(&lab.hosts[1], &dirs[1]);
    let db = p1.add_workload("db", None, &[("role", "db")]);
    let web = p1.add_workload("web", None, &[("role", "frontend")]);
    let front2 = p2.add_workload("front2", None, &[("role", "frontend")]);
    let other2 = p2.add_workload("other2", None, &[("role", "other")]);
    let _l = [6379, 7000].map(|port| listen(&db.ns, ip(&db), port));
    let _w = listen(&web.ns, ip(&web), 5978);
    assert!(
        ok(&other2, &db, 6379),
        "without a policy everything is open"
    );

    lab.weftctl_ok(&["namespace", "label", "team-a", "project=myproject"]);
    lab.apply_policy(&test_policy("test-network-policy"), None);
    let closed = wait_for(Duration::from_secs(5), || {
        refused(&other2, &db, 6379).then_some(())
    });
    assert!(
        closed.is_some(),
        "other2 still reaches db:\n{}",
        lab.hosts[0].logs()
    );
    assert!(ok(&front2, &db, 6379), "a remote frontend is allowed");
    assert!(ok(&web, &db, 6379), "a local frontend is allowed");
    assert!(refused(&web, &db, 7000), "another port is not");
    let team = p2.add_workload("teama", Some("team-a"), &[("role", "x")]);
    let started = Instant::now();
    // Fresh connects: one whose SYN was dropped would wait a second for TCP's retransmission.
    let quick = || connects(&team.ns, ip(&db), 6379, Duration::from_millis(100));
    let admitted = wait_for(Duration::from_secs(3), || quick().then_some(()));
    assert!(
        admitted.is_some(),
        "a pod of a namespace labelled project=myproject is allowed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "admitted after {:?}",
        started.elapsed()
    );
    assert!(
        refused(&db, &web, 6379),
        "db's egress allows only TCP 5978 to 198.18.0.0/24"
    );

    // A new db refuses a forbidden connection the moment its ADD returns.
    let db2 = p1.add_workload("db2", None, &[("role", "db")]);
    let _l2 = listen(&db2.ns, ip(&db2), 6379);
    assert!(refused(&other2, &db2, 6379), "a new db is closed at once");
    assert!(
        ok(&web, &db2, 6379),
        "...and open to a local frontend at once"
    );

    // weftd killed: enforcement stays, and new containers are admitted by the plugin alone.
    lab.hosts[0].kill();
    assert!(refused(&other2, &db, 6379) && ok(&front2, &db, 6379));
    let db3 = p1.add_workload("db3", None, &[("role", "db")]);
    let _l3 = listen(&db3.ns, ip(&db3), 6379);
    assert!(
        refused(&other2, &db3, 6379),
        "closed at ADD while weftd is down"
    );
    assert!(
        ok(&web, &db3, 6379),
        "a local frontend reaches it while weftd is down"
    );
    lab.hosts[0].start(&[]);
    lab.hosts[0].wait_ready();
    assert!(
        refused(&other2, &db3, 6379) && ok(&front2, &db3, 6379),
        "after the restart"
    );

    // etcd down for 10 s: nothing opens, the plugin still admits.
    lab.etcd.stop();
    let db4 = p1.add_workload("db4", None, &[("role", "db")]);
    let _l4 = listen(&db4.ns, ip(&db4), 6379);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert!(refused(&other2, &db4, 6379) && refused(&other2, &db, 6379));
        assert!(ok(&web, &db4, 6379));
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.etcd.start();

    // weftctl explains both verdicts and says which rule decided.
    let why = |src: &str| {
        let weftctl = testkit::bins::weftctl().display().to_string();
        let url = lab.etcd.client_url();
        let args = [
            weftctl.as_str(),
            "--etcd-endpoints",
            &url,
            "policy",
            "why",
            src,
            "db",
            "6379/tcp",
        ];
        lab.underlay.exec(&args)
    };
    let out = why("front2");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("allowed by default/test-network-policy ingress[0]"),
        "{said}"
    );
    let out = why("other2");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    lab.weftctl_ok(&["policy", "delete", "test-network-policy"]);
    let open = wait_for(Duration::from_secs(5), || {
        ok(&other2, &db, 6379).then_some(())
    });
    assert!(open.is_some(), "deleting the policy opens db again");
    for c in [db, web, db2, db3, db4] {
        p1.del(c);
    }
    for c in [front2, other2, team] {
        p2.del(c);
    }
}

/// A frontend whose DEL never came (its record and reservation gone, as after a host that
/// lost them) leaves its address in the sets that let it reach db. With weftd down, so that
/// only the plugin's ADD can clear it, a container of another role that gets the same
/// address must be refused by db as any other is.
#[test]
fn a_stale_address_grants_the_next_container_nothing() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    lab.start_all(&[]);
    let dir = lab.dir.path().join("cni1");
    let p = Plugin::new(&lab.hosts[0], &dir);
    let db = p.add_workload("db", None, &[("role", "db")]);
    let _l = listen(&db.ns, ip(&db), 6379);
    lab.apply_policy(&test_policy("test-network-policy"), None);
    let other = p.add_workload("other", None, &[("role", "other")]);
    let closed = wait_for(Duration::from_secs(5), || {
        refused(&other, &db, 6379).then_some(())
    });
    assert!(closed.is_some(), "{}", lab.hosts[0].logs());
    let front = p.add_workload("front", None, &[("role", "frontend")]);
    assert!(ok(&front, &db, 6379), "a frontend is allowed");

    lab.hosts[0].kill();
    let (stale, id) = (front.ip, front.id.clone());
    // Its namespace goes (and the veth with it), as when a runtime loses a container.
    drop(front);
    let records = lab.hosts[0].subnet_file.with_file_name("weft-workloads");
    std::fs::remove_file(records.join(format!("{id}+eth0.json"))).unwrap();
    let store = dir.join(p.conf["name"].as_str().unwrap());
    std::fs::remove_file(store.join(stale.to_string())).unwrap();
    let before = std::net::Ipv4Addr::from(u32::from(stale) - 1);
    std::fs::write(store.join("last_reserved_ip.0"), before.to_string()).unwrap();

    let next = p.add_workload("next", None, &[("role", "other")]);
    assert_eq!(
        next.ip, stale,
        "the plugin hands out the stale address again"
    );
    assert!(
        refused(&next, &db, 6379),
        "the frontend's stale address let a container of another role reach db"
    );
    lab.hosts[0].start(&[]);
    lab.hosts[0].wait_ready();
    for c in [db, other, next] {
        p.del(c);
    }
}
