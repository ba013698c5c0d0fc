//! weftd and weftctl against a three-member etcd cluster, every member in its own namespace on
//! the underlay and every host given all three endpoints. Whatever happens to the members (the
//! leader killed, one member cut off, all of them down for 30 s) containers lose no packet,
//! every host keeps renewing the same lease, the watch keeps delivering, and weftd is never
//! restarted. Each test prints how long renewal and the watch took to work again.

use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use testkit::etcd_cluster::parse_status;
use testkit::lab::{keep_running, ClusterLab, Host, VXLAN_CONFIG};
use testkit::leases;
use testkit::ping::Pinger;
use testkit::wait::wait_for;

/// Short enough that a renewal stuck on a dead member for one TTL would lose the lease
/// (weftd renews at half the TTL, and retries a failed renewal after 5 s).
const LEASE_TTL: &str = "8s";
/// How long a host may take to renew, or to program a lease, after etcd can serve again.
const RECOVERY: Duration = Duration::from_secs(10);

/// What each host looked like before the fault: the process, its lease's etcd lease id, and
/// its renewal count.
struct Before {
    pids: Vec<u32>,
    lease_ids: Vec<i64>,
}

fn renewals(h: &Host) -> f64 {
    h.metric("weft_lease_renewals_total")
        .unwrap_or_else(|| panic!("no weft_lease_renewals_total from {}", h.ns.name()))
}

/// Starts weftd on three hosts with a short lease TTL, gives each a container address and
/// pings both ways between the first two every 10 ms.
fn lab_with_traffic() -> (ClusterLab, Vec<Pinger>, Before) {
    let mut lab = ClusterLab::new(3, VXLAN_CONFIG);
    lab.start_all(&["--subnet-lease-ttl", LEASE_TTL]);
    lab.add_containers();
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let reachable = wait_for(Duration::from_secs(5), || {
        a.ping_from_container(b.container_ip()).then_some(())
    });
    assert!(reachable.is_some(), "no overlay traffic:\n{}", a.logs());
    let pingers = vec![
        a.start_pinging(b.container_ip()),
        b.start_pinging(a.container_ip()),
    ];
    let before = Before {
        pids: lab
            .hosts
            .iter()
            .map(|h| h.pid().expect("weftd runs"))
            .collect(),
        lease_ids: lab
            .hosts
            .iter()
            .map(|h| {
                lab.cluster
                    .key_lease(&leases::key(h.subnet(), None))
                    .filter(|id| *id != 0)
                    .unwrap_or_else(|| panic!("{} has no expiring lease", h.ns.name()))
            })
            .collect(),
    };
    (lab, pingers, before)
}

/// A lease for a host that exists only in etcd, number `n`: subnet 198.19.(200+n).0/24.
/// Written through the cluster as flannel or another weftd would, with etcd leases of its own,
/// retrying while the cluster cannot take writes. Returns the subnet and when it was written.
fn write_lease(lab: &ClusterLab, n: u8) -> (Ipv4Net, Instant) {
    let subnet: Ipv4Net = format!("198.19.{}.0/24", 200 + n).parse().expect("subnet");
    let value = format!(
        r#"{{"PublicIP":"198.18.0.{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:c6:13:00:{n:02x}"}}}}"#,
        200 + n
    );
    let key = leases::key(subnet, None);
    let written = wait_for(Duration::from_secs(30), || {
        let out = lab.cluster.etcdctl(&[
            "lease",
            "grant",
            "300",
            "-w",
            "json",
            "--command-timeout=2s",
        ]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let id = v["ID"].as_i64()?;
        let out = lab.cluster.etcdctl(&[
            "put",
            &format!("--lease={id:x}"),
            "--command-timeout=2s",
            &key,
            &value,
        ]);
        out.status.success().then(Instant::now)
    });
    let at = written.unwrap_or_else(|| {
        panic!(
            "the cluster took no write within 30 s:\n{}",
            lab.cluster.logs()
        )
    });
    (subnet, at)
}

/// Waits until every host routes to `subnet` (written at `written`); the longest time since
/// `since`.
fn programmed_everywhere(
    lab: &ClusterLab,
    (subnet, written): (Ipv4Net, Instant),
    since: Instant,
    what: &str,
) -> Duration {
    let mut slowest = (Duration::ZERO, 0);
    for (i, h) in lab.hosts.iter().enumerate() {
        let took = wait_for(RECOVERY + Duration::from_secs(10), || {
            (!h.route_to(subnet).is_empty()).then(|| since.elapsed())
        });
        let took = took.unwrap_or_else(|| {
            panic!(
                "{what}: {} has no route to {subnet}:\n{}",
                h.ns.name(),
                h.logs()
            )
        });
        slowest = slowest.max((took, i));
    }
    let (took, i) = slowest;
    eprintln!(
        "{what}: {subnet} programmed on every host within {took:?} ({:?} after it was written)",
        written.elapsed().saturating_sub(since.elapsed() - took)
    );
    assert!(
        took <= RECOVERY,
        "{what}: programming {subnet} on {} took {took:?}, more than {RECOVERY:?}:\n{}",
        lab.hosts[i].ns.name(),
        lab.hosts[i].logs()
    );
    took
}

/// Waits until every host has renewed its lease after `since`, given the counts at that time;
/// the longest time any host took.
fn renewed_everywhere(lab: &ClusterLab, counts: &[f64], since: Instant, what: &str) -> Duration {
    let mut slowest = (Duration::ZERO, 0);
    for (i, (h, before)) in lab.hosts.iter().zip(counts).enumerate() {
        let took = wait_for(RECOVERY + Duration::from_secs(10), || {
            (renewals(h) > *before).then(|| since.elapsed())
        });
        let took = took
            .unwrap_or_else(|| panic!("{what}: {} renewed no more:\n{}", h.ns.name(), h.logs()));
        slowest = slowest.max((took, i));
    }
    let (took, i) = slowest;
    eprintln!("{what}: every host renewed within {took:?}");
    assert!(
        took <= RECOVERY,
        "{what}: renewing on {} took {took:?}, more than {RECOVERY:?}:\n{}",
        lab.hosts[i].ns.name(),
        lab.hosts[i].logs()
    );
    took
}

/// Every weftd still runs as the same process, every host still holds its lease on the same
/// etcd lease (it never expired), with time left.
fn assert_same_hosts_same_leases(lab: &mut ClusterLab, before: &Before) {
    for (i, h) in lab.hosts.iter_mut().enumerate() {
        assert!(
            h.is_running(),
            "weftd on {} exited:\n{}",
            h.ns.name(),
            h.logs()
        );
        assert_eq!(
            h.pid(),
            Some(before.pids[i]),
            "weftd on {} was restarted",
            h.ns.name()
        );
    }
    for (i, h) in lab.hosts.iter().enumerate() {
        let id = lab.cluster.key_lease(&leases::key(h.subnet(), None));
        assert_eq!(
            id,
            Some(before.lease_ids[i]),
            "{}'s lease is no longer the one it held (it expired and was taken again):\n{}",
            h.ns.name(),
            h.logs()
        );
        let ttl = lab.cluster.lease_ttl(before.lease_ids[i]);
        assert!(ttl > 0, "{}'s etcd lease has {ttl} s left", h.ns.name());
    }
}

/// How long after `since` every host took `url` out of its client's set, from weftd's log.
fn taken_out_everywhere(lab: &ClusterLab, url: &str, since: SystemTime, what: &str) {
    let mut slowest = Duration::ZERO;
    for h in &lab.hosts {
        let logs = h.logs();
        let at = logs
            .lines()
            .filter(|l| l.contains("etcd member unreachable") && l.contains(url))
            .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
            .find(|t| *t >= since);
        let Some(at) = at else {
            panic!("{what}: {} never took {url} out:\n{logs}", h.ns.name());
        };
        slowest = slowest.max(at.duration_since(since).unwrap_or_default());
    }
    eprintln!("{what}: every host took {url} out within {slowest:?}");
    assert!(
        slowest <= Duration::from_secs(3),
        "{what}: taking {url} out took {slowest:?}"
    );
}

/// With a quorum left, no renewal may fail: requests go to the members that answer.
fn assert_no_failed_renewal(lab: &ClusterLab) {
    for h in &lab.hosts {
        let logs = h.logs();
        assert!(
            !logs.contains("lease renewal failed"),
            "a renewal on {} failed while a quorum of etcd members answered:\n{logs}",
            h.ns.name()
        );
    }
}

fn finish(pingers: Vec<Pinger>, what: &str) {
    for p in pingers {
        p.finish().assert_no_loss(what, 300);
    }
}

/// weftctl, given all three endpoints, lists every lease while `lab` is in its current state.
fn weftctl_lists(lab: &ClusterLab, subnets: &[Ipv4Net]) {
    let out = lab.hosts[2].weftctl(&["leases", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "weftctl leases list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for s in subnets {
        assert!(
            text.contains(&s.network().to_string()),
            "weftctl does not list {s}: {text}"
        );
    }
}

#[test]
fn the_leader_killed_loses_nothing_and_renewal_and_the_watch_carry_on() {
    let (mut lab, pingers, before) = lab_with_traffic();
    let leader = lab.cluster.wait_leader(Duration::from_secs(10));
    let counts: Vec<f64> = lab.hosts.iter().map(renewals).collect();

    let killed = Instant::now();
    let killed_at = SystemTime::now();
    lab.cluster.kill(leader);
    let (subnet, written) = write_lease(&lab, 1);
    eprintln!(
        "leader killed: the cluster took a write {:?} later",
        written.duration_since(killed)
    );
    programmed_everywhere(&lab, (subnet, written), killed, "leader killed");
    let url = lab.cluster.members[leader].client_url();
    taken_out_everywhere(&lab, &url, killed_at, "leader killed");
    renewed_everywhere(&lab, &counts, killed, "leader killed");
    let new_leader = lab.cluster.wait_leader(Duration::from_secs(10));
    assert_ne!(new_leader, leader, "the killed member is still leader");

    // Two more renewals each on the surviving members: renewal did not just happen once.
    let counts: Vec<f64> = lab.hosts.iter().map(renewals).collect();
    renewed_everywhere(&lab, &counts, Instant::now(), "two members left");
    let mine: Vec<Ipv4Net> = lab.hosts.iter().map(|h| h.subnet()).collect();
    weftctl_lists(&lab, &[mine[0], mine[1], subnet]);

    // The killed member rejoins; nothing changes for the hosts.
    lab.cluster.restart(leader);
    lab.cluster.wait_healthy(Duration::from_secs(30));
    let (later, at) = write_lease(&lab, 2);
    programmed_everywhere(&lab, (later, at), at, "member back");
    assert_same_hosts_same_leases(&mut lab, &before);
    assert_no_failed_renewal(&lab);
    finish(pingers, "the etcd leader killed");
}

#[test]
fn a_member_cut_off_loses_nothing_and_sticks_nothing() {
    const CUT: Duration = Duration::from_secs(20);
    let (mut lab, pingers, before) = lab_with_traffic();
    // The leader: its loss forces an election, and every connection to it hangs rather than
    // being refused.
    let cut = lab.cluster.wait_leader(Duration::from_secs(10));
    let counts: Vec<f64> = lab.hosts.iter().map(renewals).collect();

    let at = Instant::now();
    let cut_at = SystemTime::now();
    lab.cluster.cut(cut);
    let (subnet, written) = write_lease(&lab, 3);
    eprintln!(
        "member cut off: the cluster took a write {:?} later",
        written.duration_since(at)
    );
    programmed_everywhere(&lab, (subnet, written), at, "member cut off");
    let url = lab.cluster.members[cut].client_url();
    taken_out_everywhere(&lab, &url, cut_at, "member cut off");
    renewed_everywhere(&lab, &counts, at, "member cut off");

    // Renewal keeps going for the rest of the cut, not just once.
    while at.elapsed() < CUT {
        let counts: Vec<f64> = lab.hosts.iter().map(renewals).collect();
        renewed_everywhere(&lab, &counts, Instant::now(), "while cut off");
    }
    let (during, written) = write_lease(&lab, 4);
    programmed_everywhere(&lab, (during, written), written, "late in the cut");
    let mine: Vec<Ipv4Net> = lab.hosts.iter().map(|h| h.subnet()).collect();
    weftctl_lists(&lab, &[mine[0], mine[1], subnet, during]);

    lab.cluster.reconnect(cut);
    lab.cluster.wait_healthy(Duration::from_secs(30));
    let back = lab.cluster.status();
    assert!(
        back[cut].is_some(),
        "the member cut off does not answer after its link came back"
    );
    let (later, at) = write_lease(&lab, 5);
    programmed_everywhere(&lab, (later, at), at, "member reconnected");
    assert_same_hosts_same_leases(&mut lab, &before);
    assert_no_failed_renewal(&lab);
    finish(pingers, "an etcd member cut off");
}

#[test]
fn all_members_down_for_30s_lose_nothing_and_the_agents_resume() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let (mut lab, pingers, before) = lab_with_traffic();

    lab.cluster.stop_all();
    keep_running(&mut lab.hosts, OUTAGE, "while etcd was down");
    let counts: Vec<f64> = lab.hosts.iter().map(renewals).collect();
    let started = Instant::now();
    lab.cluster.start_all();
    eprintln!(
        "all members back: cluster healthy {:?} after the start",
        started.elapsed()
    );
    let (subnet, written) = write_lease(&lab, 6);
    programmed_everywhere(&lab, (subnet, written), started, "after the outage");
    renewed_everywhere(&lab, &counts, started, "after the outage");
    assert_same_hosts_same_leases(&mut lab, &before);
    finish(pingers, "all etcd members down for 30 s");
}

#[test]
fn the_leader_is_read_from_endpoint_status_json() {
    // etcdctl 3.4's `endpoint status -w json`, trimmed: the member ids exceed i64.
    let json = r#"[{"Endpoint":"http://198.18.0.251:2379","Status":{"header":{"cluster_id":1,"member_id":17237436991929493444,"revision":5,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":17237436991929493444,"raftIndex":9,"raftTerm":2}},{"Endpoint":"http://198.18.0.252:2379","Status":{"header":{"member_id":9372538179322589801,"revision":5},"leader":17237436991929493444}}]"#;
    let s = parse_status(json);
    assert_eq!(s.len(), 2);
    assert!(s[0].is_leader());
    assert!(!s[1].is_leader());
    assert_eq!(s[1].leader, 17237436991929493444);
    assert_eq!(s[0].endpoint, "http://198.18.0.251:2379");
}
