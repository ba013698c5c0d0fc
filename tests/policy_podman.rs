//! Network policy for containers podman starts through the weft plugin, on a two-host lab:
//! a container a policy selects refuses forbidden traffic the moment `podman run` returns
//! (weftd stopped: the plugin alone closes it) and takes what the policy allows; `weftctl
//! policy why` knows it by the name podman gives it, `podman rm` takes it out of every
//! host's view, and CNI GC takes the addresses of an attachment the runtime forgot out of
//! the policy sets and etcd.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use testkit::bins;
use testkit::cni::Plugin;
use testkit::lab::{test_policy, Lab, VXLAN_CONFIG};
use testkit::podman::Podman;
use testkit::tcp::{connects, listen, listen_at};
use testkit::wait::wait_for;

const REFUSED_AFTER: Duration = Duration::from_millis(400);
const ALLOWED_WITHIN: Duration = Duration::from_secs(2);

/// `weftctl policy why` run on host 1: exit status and what it said.
fn why(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let mut full = vec!["policy", "why"];
    full.extend_from_slice(args);
    let out = lab.hosts[0].weftctl(&full);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

#[test]
fn podman_containers_are_closed_when_run_returns_and_gc_takes_forgotten_addresses_out() {
    let mut lab = Lab::new(2, VXLAN_CONFIG);
    lab.start_all(&[]);
    let p1 = Plugin::new(&lab.hosts[0], &lab.dir.path().join("cni1"));
    let p2 = Plugin::new(&lab.hosts[1], &lab.dir.path().join("cni2"));
    let front = p2.add_workload("front", None, &[("role", "frontend")]);
    let other = p2.add_workload("other", None, &[("role", "other")]);
    lab.apply_policy(&test_policy("db"), None);

    // podman on host 1, its network the plugin's config with the label role=db (the same
    // network name and data dir as the plugin run by hand, so they share one IPAM store).
    let mut conf = p1.conf.clone();
    conf["args"] = json!({"cni": {"labels": [{"key": "role", "value": "db"}]}});
    let conflist = json!({"cniVersion": "1.0.0", "name": conf["name"], "plugins": [conf]});
    let podman = Podman::new(&lab.hosts[0].ns, &bins::plugin(), &conflist);
    // weftd is away: only the plugin, run by podman, can close the container in time.
    lab.hosts[0].kill();
    podman.start("pdb");
    let addr: IpAddr = podman.address("pdb").parse().unwrap();
    let netns = PathBuf::from(format!("/proc/{}/ns/net", podman.pid("pdb")));
    let _l = listen_at(&netns, addr, 6379);
    assert!(
        !connects(&other.ns, addr, 6379, REFUSED_AFTER),
        "a podman container a policy selects is open when `podman run` returned:\n{}",
        lab.hosts[0].logs()
    );
    assert!(
        connects(&front.ns, addr, 6379, ALLOWED_WITHIN),
        "a frontend on another host is refused"
    );
    lab.hosts[0].start(&[]);
    lab.hosts[0].wait_ready();
    let known = wait_for(Duration::from_secs(3), || {
        let (code, said) = why(&lab, &["front", "pdb", "6379/tcp"]);
        (code == Some(0) && said.contains("allowed by default/db ingress[0]")).then_some(said)
    });
    assert!(
        known.is_some(),
        "{:?}",
        why(&lab, &["front", "pdb", "6379/tcp"])
    );

    // podman rm runs DEL: no host holds it as a workload any more.
    podman.rm("pdb");
    let addr_text = addr.to_string();
    let gone = wait_for(Duration::from_secs(3), || {
        let (code, said) = why(&lab, &["other", &addr_text, "6379/tcp"]);
        (code == Some(0) && said.contains("not a workload")).then_some(())
    });
    assert!(
        gone.is_some(),
        "{:?}",
        why(&lab, &["other", &addr_text, "6379/tcp"])
    );

    // A container whose DEL never comes: GC without it releases its address, takes it out
    // of the policy sets and its record out of etcd.
    let gcw = p1.add_workload("gcw", None, &[("role", "db")]);
    let _l2 = listen(&gcw.ns, gcw.ip.into(), 6379);
    assert!(!connects(&other.ns, gcw.ip.into(), 6379, REFUSED_AFTER));
    let mut gc = p1.conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    p1.run_with("GC", "gc", &gcw.ns.path(), "", &gc);
    let sets = lab.hosts[0]
        .ns
        .exec(&["nft", "list", "table", "ip", "weft_policy"]);
    let sets = String::from_utf8_lossy(&sets.stdout).into_owned();
    assert!(!sets.contains(&gcw.ip.to_string()), "{sets}");
    let forgotten = wait_for(Duration::from_secs(3), || {
        let (code, said) = why(&lab, &["other", "gcw"]);
        (code != Some(0) && said.contains("no workload default/gcw")).then_some(())
    });
    assert!(forgotten.is_some(), "{:?}", why(&lab, &["other", "gcw"]));
    p2.del(front);
    p2.del(other);
}
