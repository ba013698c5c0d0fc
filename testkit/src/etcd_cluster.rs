//! A three-member etcd cluster (/usr/bin/etcd) for failover tests: each member in its own
//! network namespace, joined to a bridge of the lab's underlay by a veth (`eth0` inside).
//! A test can find the leader, kill a member as a crash would, cut a member off by taking its
//! link down, and stop and start members on the same data dirs. Dropping the cluster kills
//! every member, then removes the namespaces and the data.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::{lease_of_key, require_tools, succeeded, tail, ETCD, ETCDCTL};
use crate::netns::{plug, Netns};

/// One member: its namespace, address and process.
pub struct Member {
    pub name: String,
    pub ip: String,
    /// Killed in `Drop` before the namespace goes.
    child: Option<Child>,
    pub ns: Netns,
    log: PathBuf,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `etcdctl endpoint status` says about one member.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
    pub revision: i64,
}

impl MemberStatus {
    pub fn is_leader(&self) -> bool {
        self.member_id != 0 && self.member_id == self.leader
    }
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// Data dirs and logs; removed after the members (declared after them).
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts one member per address in `ips`, each in a namespace whose `eth0` is a port of
    /// `bridge` in `underlay` (port names `m1`, `m2`, …), and waits until the cluster is healthy.
    pub fn start(underlay: &Netns, bridge: &str, ips: &[&str]) -> EtcdCluster {
        require_tools();
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-cluster-")
            .tempdir()
            .expect("creating a temporary dir for the etcd cluster");
        let mut members = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let ns = Netns::new(&format!("etcd{}", i + 1));
            plug(&ns, "eth0", underlay, &name, bridge, &format!("{ip}/24"));
            members.push(Member {
                log: dir.path().join(format!("{name}.log")),
                name,
                ip: ip.to_string(),
                child: None,
                ns,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            dir,
        };
        // A new cluster only becomes healthy once a quorum runs: start every member first.
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Every member's client URL, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let data = self
            .dir
            .path()
            .join(format!("{}.data", self.members[i].name));
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "etcd member {} already runs", m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("opening an etcd member's log");
        let child = Command::new("ip")
            .args(["netns", "exec", m.ns.name(), ETCD])
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", m.client_url()))
            .arg(format!("--advertise-client-urls={}", m.client_url()))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=weft-test")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("running {ETCD}: {e}"));
        m.child = Some(child);
    }

    /// Runs etcdctl inside member `via`'s namespace against `endpoints`.
    fn etcdctl_via(&self, via: usize, endpoints: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.members[via].ns.name(), ETCDCTL])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {ETCDCTL}: {e}"))
    }

    /// Runs etcdctl from a running, connected member against the running members (the
    /// client fails over between them as weft's does).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let via = self
            .members
            .iter()
            .position(|m| m.is_running() && self.link_up(m))
            .expect("no running member to run etcdctl from");
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.is_running() && self.link_up(m))
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",");
        self.etcdctl_via(via, &endpoints, args)
    }

    /// Like [`etcdctl`](Self::etcdctl), panicking with its output when it fails.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.etcdctl(args))
    }

    fn link_up(&self, m: &Member) -> bool {
        m.ns.ip(&["-o", "link", "show", "eth0"])
            .contains("state UP")
    }

    /// Writes a key through the cluster.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", key, value]);
    }

    /// Each running member's own view (asked of that member alone, from its namespace), or
    /// None for a member that does not answer within a second.
    pub fn status(&self) -> Vec<Option<MemberStatus>> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !m.is_running() {
                    return None;
                }
                let out = self.etcdctl_via(
                    i,
                    &m.client_url(),
                    &["endpoint", "status", "-w", "json", "--command-timeout=1s"],
                );
                if !out.status.success() {
                    return None;
                }
                parse_status(&String::from_utf8_lossy(&out.stdout))
                    .into_iter()
                    .next()
            })
            .collect()
    }

    /// The index of the member that is leader, as the members agree: one member says it is
    /// leader and every other answering member names it. None during an election.
    pub fn leader(&self) -> Option<usize> {
        let status = self.status();
        let leader = status
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.is_leader()))?;
        let id = status[leader].as_ref()?.member_id;
        status
            .iter()
            .flatten()
            .all(|s| s.leader == id)
            .then_some(leader)
    }

    /// Waits until a leader is agreed on by all answering members, returning its index.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no etcd leader within {timeout:?}: {:?}\n{}",
                self.status(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running member reports itself healthy (it has a leader and
    /// answers a quorum read).
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            for m in &mut self.members {
                if let Some(Ok(Some(status))) = m.child.as_mut().map(|c| c.try_wait()) {
                    m.child = None;
                    panic!(
                        "etcd member {} exited ({status}):\n{}",
                        m.name,
                        m.log_tail()
                    );
                }
            }
            let healthy = (0..self.members.len())
                .filter(|&i| self.members[i].is_running())
                .all(|i| {
                    self.etcdctl_via(
                        i,
                        &self.members[i].client_url(),
                        &["endpoint", "health", "--command-timeout=1s"],
                    )
                    .status
                    .success()
                });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy after {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` with SIGKILL, as a crash would; its data stays.
    pub fn kill(&mut self, i: usize) {
        assert!(self.members[i].is_running(), "member {i} is not running");
        self.members[i].kill();
    }

    /// Starts member `i` again on its data dir (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Kills every member.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts every member again on its data dir and waits until the cluster is healthy.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Takes member `i`'s only link down: it reaches neither its peers nor any client.
    pub fn cut(&self, i: usize) {
        self.members[i].ns.ip(&["link", "set", "eth0", "down"]);
    }

    /// Brings member `i`'s link back up.
    pub fn reconnect(&self, i: usize) {
        self.members[i].ns.ip(&["link", "set", "eth0", "up"]);
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {} ---\n{}", m.name, m.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The remaining TTL in seconds of etcd lease `id` (-1 once it has expired).
    pub fn lease_ttl(&self, id: i64) -> i64 {
        let out = self.etcdctl_ok(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("etcdctl lease timetolive {out:?}: {e}"));
        v["ttl"]
            .as_i64()
            .unwrap_or_else(|| panic!("no ttl in {out}"))
    }

    /// The etcd lease id attached to `key` (0 for none), if the key exists.
    pub fn key_lease(&self, key: &str) -> Option<i64> {
        lease_of_key(&self.etcdctl_ok(&["get", key, "-w", "json"]))
    }
}

/// The members in `etcdctl endpoint status -w json`'s output, read from its fields.
pub fn parse_status(json: &str) -> Vec<MemberStatus> {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("etcdctl endpoint status is not JSON ({e}): {json}"));
    v.as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let s = &e["Status"];
            Some(MemberStatus {
                endpoint: e["Endpoint"].as_str()?.to_string(),
                member_id: s["header"]["member_id"].as_u64()?,
                leader: s["leader"].as_u64()?,
                raft_term: s["raftTerm"].as_u64().unwrap_or(0),
                revision: s["header"]["revision"].as_i64().unwrap_or(0),
            })
        })
        .collect()
}
