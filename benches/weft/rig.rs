//! The bench's moving parts: a tokio runtime whose threads live in a network namespace (so
//! the bench can talk to an etcd that only exists inside the lab), weftd processes started
//! directly inside a host namespace, /proc figures of a process, and bulk lease writes.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use ipnet::Ipv4Net;
use weft::subnet::lease_key_name;

use crate::report::median;

use testkit::netns::Netns;

pub const PREFIX: &str = "/coreos.com/network";

/// The release weftd the bench was built with.
pub fn weftd_bin() -> PathBuf {
    testkit::bins::locate("weftd", Some(Path::new(env!("CARGO_BIN_EXE_weftd"))))
}

/// The CNI plugin from the same target directory (built by `cargo build --release
/// --workspace`; scripts/bench does that), or `WEFT_CNI_PLUGIN`.
pub fn plugin_bin() -> PathBuf {
    let explicit = std::env::var_os("WEFT_CNI_PLUGIN").map(PathBuf::from);
    testkit::bins::locate("weft", explicit.as_deref())
}

fn enter(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

/// A tokio runtime whose every thread has joined one network namespace.
pub struct NsRuntime {
    rt: tokio::runtime::Runtime,
}

impl NsRuntime {
    pub fn new(ns: Option<&Path>, threads: usize) -> NsRuntime {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads).enable_all();
        if let Some(p) = ns {
            let p = p.to_path_buf();
            b.on_thread_start(move || enter(&p));
        }
        NsRuntime {
            rt: b.build().expect("building a tokio runtime"),
        }
    }

    /// Runs `f` on the runtime's threads and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let h = self.rt.spawn(f);
        self.rt.block_on(h).expect("bench task panicked")
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.rt.spawn(f)
    }

    pub fn wait<T>(&self, h: tokio::task::JoinHandle<T>) -> T {
        self.rt.block_on(h).expect("bench task panicked")
    }
}

/// Starts `cmd` inside `ns` and gives the moment right before the spawn. The spawn is made
/// from a thread that joined `ns` (a child is born in its parent thread's namespaces), so no
/// `ip netns exec` helper is timed, and with no pre-exec hook std spawns with posix_spawn
/// (a vfork): the bench process, large after the fleet sections, is never copied, and a
/// plugin's figure does not depend on the size of the process that timed it.
pub fn spawn_in(cmd: &mut Command, ns: &Netns) -> (Child, Instant) {
    let path = ns.path();
    std::thread::scope(|s| {
        let spawner = s.spawn(|| {
            enter(&path);
            let t0 = Instant::now();
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()));
            (child, t0)
        });
        spawner.join().expect("the spawning thread panicked")
    })
}

/// A weftd started straight inside a host namespace ([`spawn_in`], so no `ip netns
/// exec` start-up is counted), killed on drop.
pub struct Weftd {
    child: Option<Child>,
    pub started: Instant,
    log: PathBuf,
}

impl Weftd {
    pub fn spawn(
        ns: &Netns,
        etcd_url: &str,
        subnet_file: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Weftd {
        let out = File::create(log).expect("creating the weftd log");
        let mut cmd = Command::new(weftd_bin());
        cmd.args([
            "--etcd-endpoints",
            etcd_url,
            "--iface",
            "eth0",
            "--healthz-port",
        ])
        .arg(testkit::lab::HEALTHZ_PORT.to_string())
        .arg("--subnet-file")
        .arg(subnet_file)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("cloning the log handle"))
        .stderr(out);
        let (child, started) = spawn_in(&mut cmd, ns);
        Weftd {
            child: Some(child),
            started,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A `/proc/PID/status` field in kB (VmRSS, VmHWM).
    pub fn status_kb(&self, field: &str) -> f64 {
        proc_status_kb(self.pid(), field)
    }

    /// User + system CPU time used so far.
    pub fn cpu(&self) -> Duration {
        proc_cpu(self.pid())
    }

    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("weftd exited with {st}:\n{}", self.logs());
            }
        }
    }

    /// A numeric field of the first log line holding `message` (colour codes stripped).
    pub fn log_field(&self, message: &str, field: &str) -> Option<f64> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().find(|l| l.contains(message))?;
        let mut plain = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        let at = plain.find(&format!(" {field}="))? + field.len() + 2;
        plain[at..].split_whitespace().next()?.parse().ok()
    }

    pub fn logs(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM and wait, as systemd stops it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Weftd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // WEFT_BENCH_LOGS=DIR keeps every weftd's log for a closer look (with
        // WEFTD_LOG_LEVEL=debug, say).
        if let Some(dir) = std::env::var_os("WEFT_BENCH_LOGS") {
            let name = format!(
                "{}-{}",
                std::process::id(),
                self.log
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("weftd.log")
            );
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}

pub fn proc_status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// A remote host's lease as flannel writes it (vxlan backend, VNI 1).
#[derive(Clone, Copy)]
pub struct FakeLease {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub mac: [u8; 6],
}

impl FakeLease {
    /// The n-th fake host: a locally administered unicast MAC and an underlay address
    /// outside the lab's hosts, both derived from n.
    pub fn nth(subnet: Ipv4Net, n: u32, tag: u8) -> FakeLease {
        let ip = u32::from(Ipv4Addr::new(198, 18, 64, 0)) + n;
        FakeLease {
            subnet,
            public_ip: Ipv4Addr::from(ip),
            mac: [0x0e, tag, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8],
        }
    }

    pub fn key(&self) -> String {
        format!("{PREFIX}/subnets/{}", lease_key_name(self.subnet, None))
    }

    pub fn value(&self) -> String {
        weft::backend::vxlan::lease_attrs(self.public_ip, 1, &weft::netlink::format_mac(&self.mac))
            .to_json()
    }

    pub fn gateway(&self) -> std::net::IpAddr {
        std::net::IpAddr::V4(self.subnet.network())
    }
}

pub async fn etcd_client(url: &str) -> Client {
    Client::connect([url], None)
        .await
        .unwrap_or_else(|e| panic!("connecting to etcd at {url}: {e}"))
}

/// Writes leases as a crowd of hosts would: one etcd lease (TTL `ttl` s) per key, granted
/// 64 at a time, then the keys in transactions of 100 puts.
pub async fn put_leases(c: &Client, leases: &[FakeLease], ttl: i64) -> Vec<i64> {
    let mut ids = Vec::with_capacity(leases.len());
    for chunk in leases.chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for _ in chunk {
            let mut c = c.clone();
            set.spawn(async move { c.lease_grant(ttl, None).await.map(|r| r.id()) });
        }
        while let Some(r) = set.join_next().await {
            ids.push(r.expect("grant task").expect("granting an etcd lease"));
        }
    }
    for (chunk, idc) in leases.chunks(100).zip(ids.chunks(100)) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .zip(idc)
            .map(|(l, id)| TxnOp::put(l.key(), l.value(), Some(PutOptions::new().with_lease(*id))))
            .collect();
        c.clone()
            .txn(Txn::new().and_then(ops))
            .await
            .expect("writing leases in a transaction");
    }
    ids
}

/// Subnets of `len` bits inside 198.19.0.0/16, skipping the first (flannel's SubnetMin) and
/// any in `taken`.
pub fn free_subnets(len: u8, taken: &[Ipv4Net], count: usize) -> Vec<Ipv4Net> {
    let net: Ipv4Net = "198.19.0.0/16".parse().expect("literal");
    net.subnets(len)
        .expect("prefix inside /16")
        .skip(1)
        .filter(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
        .take(count)
        .collect()
}

/// Subnets currently leased in etcd.
pub async fn leased_subnets(c: &Client) -> Vec<Ipv4Net> {
    let prefix = format!("{PREFIX}/subnets/");
    let resp = c
        .clone()
        .get(
            prefix.clone(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("listing leases");
    resp.kvs()
        .iter()
        .filter_map(|kv| {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            weft::subnet::parse_lease_key_name(k.strip_prefix(&prefix)?)
                .ok()
                .map(|(s, _)| s)
        })
        .collect()
}

/// Deletes every lease key (the lab's own hosts' included).
pub async fn delete_all_leases(c: &Client) {
    c.clone()
        .delete(
            format!("{PREFIX}/subnets/"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("deleting leases");
}

/// A PUT as a bare watcher received it.
pub struct Put {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// When the watch response holding it arrived.
    pub at: Instant,
}

/// A bare etcd watch of `key` (every key under it when `prefix`) on `rt`, sending each PUT
/// to `tx` with the moment it was delivered: the baseline weftd's own watches are held to.
/// Returns once etcd has the watch, so no write after it is missed.
pub fn watch_puts(rt: &NsRuntime, c: &Client, key: &str, prefix: bool, tx: mpsc::Sender<Put>) {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (mut wc, key) = (c.clone(), key.to_string());
    rt.spawn(async move {
        let opts = prefix.then(|| WatchOptions::new().with_prefix());
        let mut stream =
            (wc.watch(key.as_str(), opts).await).unwrap_or_else(|e| panic!("watching {key}: {e}"));
        let _ = ready_tx.send(());
        while let Ok(Some(resp)) = stream.message().await {
            let at = Instant::now();
            let puts = (resp.events().iter()).filter(|e| e.event_type() == EventType::Put);
            for kv in puts.filter_map(|e| e.kv()) {
                let _ = tx.send(Put {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                    at,
                });
            }
        }
    });
    (ready_rx.recv_timeout(Duration::from_secs(10))).expect("the bare watch did not start");
}

pub use testkit::wait::poll;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts weftd (info logs, default 30 s resync, plus `extra`) on every lab host, waits until
/// each answers /readyz and every host routes to every other. The lab's own `start_all`
/// fixes a debug log level and a 5 s resync for tests; benches measure the defaults.
pub fn start_lab(lab: &testkit::lab::Lab, extra: &[&str]) -> Vec<Weftd> {
    let url = format!("http://{}:2379", testkit::lab::ETCD_IP);
    let mut ds: Vec<Weftd> = lab
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let log = lab.dir.path().join(format!("bench-h{}.log", i + 1));
            Weftd::spawn(&h.ns, &url, &h.subnet_file, &log, extra)
        })
        .collect();
    // A hundred weftd starting at once on a small shared machine queue for its cores and
    // for etcd: readiness is waited for generously (start-up is not what is measured).
    for (h, d) in lab.hosts.iter().zip(ds.iter_mut()) {
        let ready = poll(Duration::from_secs(120), Duration::from_millis(20), || {
            d.assert_running();
            (h.http_get("/readyz").0 == 200).then_some(())
        });
        assert!(ready.is_some(), "weftd not ready in 120 s:\n{}", d.logs());
    }
    lab.wait_converged();
    ds
}

/// Median wall time of `runs` runs of `cmd`, each required to succeed.
pub fn time_runs(runs: usize, mut cmd: impl FnMut() -> Command) -> f64 {
    let mut v = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = cmd().output().expect("running the command");
        v.push(ms(t0.elapsed()));
        assert!(
            out.status.success(),
            "{:?} failed: {}",
            cmd(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    median(&v)
}
