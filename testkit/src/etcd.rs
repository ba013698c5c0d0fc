//! A real etcd (/usr/bin/etcd) per test: on free loopback ports with a temporary data dir
//! (optionally speaking TLS with client certificates), or inside a network namespace at a
//! given address for multi-host labs. It can be stopped and started again on the same ports
//! and data for outage tests; dropping it kills it and removes its data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::free_port;

pub(crate) const ETCD: &str = "/usr/bin/etcd";
pub(crate) const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Fails the test unless etcd and etcdctl are installed.
pub(crate) fn require_tools() {
    for tool in [ETCD, ETCDCTL] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install the Debian packages etcd-server and etcd-client"
        );
    }
}

/// The certificates of a TLS etcd, in one directory: `ca.pem`, the server's `server.pem` and
/// `server-key.pem` (for 127.0.0.1), and the client identity etcdctl uses, `client.pem` and
/// `client-key.pem`.
#[derive(Debug, Clone)]
pub struct Tls {
    pub dir: PathBuf,
}

impl Tls {
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    host: String,
    client_port: u16,
    peer_port: u16,
    netns: Option<String>,
    tls: Option<Tls>,
    /// `root:PASSWORD` once authentication is on; every etcdctl call then uses it.
    root: Option<String>,
    extra_args: Vec<String>,
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it is healthy.
    pub fn new() -> Etcd {
        Etcd::with_args(&[])
    }

    /// Like [`new`](Self::new), with extra etcd flags (kept for restarts).
    pub fn with_args(args: &[&str]) -> Etcd {
        Etcd::on_loopback(args, None)
    }

    /// Like [`new`](Self::new), serving clients over TLS and requiring a client certificate
    /// signed by `tls`'s CA (`--client-cert-auth`); etcdctl uses `tls`'s client identity.
    pub fn with_tls(tls: Tls) -> Etcd {
        Etcd::on_loopback(&[], Some(tls))
    }

    fn on_loopback(args: &[&str], tls: Option<Tls>) -> Etcd {
        require_tools();
        let mut last = String::new();
        for _ in 0..5 {
            let mut e = Etcd {
                child: None,
                dir: data_dir(),
                host: "127.0.0.1".into(),
                client_port: free_port(),
                peer_port: free_port(),
                netns: None,
                tls: tls.clone(),
                root: None,
                extra_args: args.iter().map(|a| a.to_string()).collect(),
            };
            if e.client_port == e.peer_port {
                continue;
            }
            match e.spawn_and_wait() {
                Ok(()) => return e,
                // Another process may have taken a port between probing and binding.
                Err(why) => last = why,
            }
        }
        panic!("etcd did not start after 5 tries: {last}");
    }

    /// Starts etcd inside network namespace `ns`, listening on `ip` (ports 2379/2380).
    pub fn start_in_netns(ns: &str, ip: &str) -> Etcd {
        require_tools();
        let mut e = Etcd {
            child: None,
            dir: data_dir(),
            host: ip.to_string(),
            client_port: 2379,
            peer_port: 2380,
            netns: Some(ns.to_string()),
            tls: None,
            root: None,
            extra_args: Vec::new(),
        };
        if let Err(why) = e.spawn_and_wait() {
            panic!("etcd in netns {ns} at {ip} did not start: {why}");
        }
        e
    }

    /// `host:port` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// `http://host:port` (`https://` with TLS), as weft's `--etcd-endpoints` takes it.
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.client_port)
    }

    /// Runs the weftctl built with the test against this etcd (a loopback one), with an
    /// empty environment; `args` follow `--etcd-endpoints`. Returns what it did, whatever it is.
    pub fn weftctl(&self, args: &[&str]) -> Output {
        Command::new(crate::bins::weftctl())
            .env_clear()
            .arg("--etcd-endpoints")
            .arg(self.client_url())
            .args(args)
            .output()
            .expect("running weftctl")
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        tail(&self.log_path())
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening etcd's log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("opening etcd's log: {e}"))?;
        let data = self.dir.path().join("data");
        let mut cmd = self.command(ETCD);
        cmd.arg("--name=weft-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", self.client_url()))
            .arg(format!("--advertise-client-urls={}", self.client_url()))
            .arg(format!("--listen-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-cluster=weft-test={}", self.peer_url()));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.file("server.pem")))
                .arg(format!("--key-file={}", tls.file("server-key.pem")))
                .arg(format!("--trusted-ca-file={}", tls.file("ca.pem")))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(&self.extra_args)
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("running {ETCD}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("etcd exited ({status}):\n{}", self.log_tail()));
            }
            if self.healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "etcd not healthy after 30s at {}:\n{}",
                    self.client_url(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        self.etcdctl(&["endpoint", "health", "--command-timeout=1s"])
            .status
            .success()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills etcd (as a crash would); its data stays for [`start`](Self::start).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        if let Err(why) = self.spawn_and_wait() {
            panic!("restarting etcd at {}: {why}", self.client_url());
        }
    }

    /// Runs etcdctl against this etcd (in its namespace, if any), with the client
    /// certificate when it speaks TLS, and as root once authentication is on.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut c = self.command(ETCDCTL);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url()));
        if let Some(tls) = &self.tls {
            c.arg(format!("--cacert={}", tls.file("ca.pem")))
                .arg(format!("--cert={}", tls.file("client.pem")))
                .arg(format!("--key={}", tls.file("client-key.pem")));
        }
        if let Some(root) = &self.root {
            c.arg(format!("--user={root}"));
        }
        c.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {ETCDCTL}: {e}"))
    }

    /// Writes every key of `kvs` in one transaction, so a watcher gets them as one event
    /// batch at one revision (values must hold no whitespace, as etcdctl's txn reads them).
    pub fn put_all(&self, kvs: &[(String, String)]) {
        assert!(
            self.tls.is_none() && self.root.is_none(),
            "put_all on a plain etcd"
        );
        let mut input = String::from("\n");
        for (k, v) in kvs {
            input.push_str(&format!("put {k} {v}\n"));
        }
        input.push_str("\n\n");
        let mut c = self.command(ETCDCTL);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url()))
            .arg("txn");
        let out = crate::cmd::with_stdin(&mut c, input.as_bytes());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("SUCCESS"),
            "etcdctl txn of {} puts: {text}{}",
            kvs.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Like [`etcdctl`](Self::etcdctl), panicking with its output when it fails.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        succeeded(args, self.etcdctl(args))
    }

    /// Grants an etcd lease of `ttl` seconds; its id as etcdctl prints it (hex).
    pub fn grant(&self, ttl: u32) -> String {
        let grant = self.etcdctl_ok(&["lease", "grant", &ttl.to_string()]);
        // "lease 694d77aa9e0c3d0a granted with TTL(3600s)"
        grant
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("etcdctl lease grant said {grant:?}"))
            .to_string()
    }

    /// Writes `key` as a host (flanneld) writes its lease: on an etcd lease of its own with
    /// `ttl` seconds. Returns the etcd lease's id as etcdctl prints it (hex).
    pub fn put_on_lease(&self, key: &str, value: &str, ttl: u32) -> String {
        let id = self.grant(ttl);
        self.etcdctl_ok(&["put", &format!("--lease={id}"), key, value]);
        id
    }

    /// Turns authentication on, as the README tells an operator to: a root user, then
    /// `roles` (name, permission, key prefix) and `users` (name, password, role).
    pub fn enable_auth(&mut self, roles: &[(&str, &str, &str)], users: &[(&str, &str, &str)]) {
        let root_password = "root-secret";
        self.etcdctl_ok(&["user", "add", &format!("root:{root_password}")]);
        for (role, perm, prefix) in roles {
            self.etcdctl_ok(&["role", "add", role]);
            self.etcdctl_ok(&[
                "role",
                "grant-permission",
                role,
                perm,
                "--prefix=true",
                prefix,
            ]);
        }
        for (user, password, role) in users {
            self.etcdctl_ok(&["user", "add", &format!("{user}:{password}")]);
            self.etcdctl_ok(&["user", "grant-role", user, role]);
        }
        self.etcdctl_ok(&["auth", "enable"]);
        self.root = Some(format!("root:{root_password}"));
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl status {out:?}: {e}"));
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("no revision in {out}"))
    }

    /// Compacts the history up to `revision` (the current one if `None`), physically.
    pub fn compact(&self, revision: Option<i64>) -> i64 {
        let rev = revision.unwrap_or_else(|| self.revision());
        self.etcdctl_ok(&["compact", &rev.to_string(), "--physical"]);
        rev
    }

    /// Writes a key with etcdctl (as another tool would).
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", key, value]);
    }

    /// The value stored at `key`, byte for byte, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", key, "--print-value-only"]);
        let v = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| v.to_string())
    }

    /// The etcd lease id attached to `key` (0 for none), if the key exists.
    pub fn key_lease(&self, key: &str) -> Option<i64> {
        lease_of_key(&self.etcdctl_ok(&["get", key, "-w", "json"]))
    }

    /// A series of etcd's own `/metrics` (e.g. `etcd_mvcc_range_total`, the reads it served,
    /// or `etcd_debugging_mvcc_watcher_total`, the watches open): what clients did to it,
    /// seen from the server. Not for a TLS etcd.
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.metrics_page();
        crate::http::metric(&body, name)
            .unwrap_or_else(|| panic!("no {name} in etcd's /metrics at {}", self.endpoint()))
    }

    /// The sum of the series of `name` with `labels` among theirs (see
    /// [`crate::http::metric_sum`]).
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::http::metric_sum(&self.metrics_page(), name, labels)
    }

    fn metrics_page(&self) -> String {
        assert!(self.tls.is_none(), "metrics of a TLS etcd are not read");
        let addr: SocketAddr = self
            .endpoint()
            .parse()
            .unwrap_or_else(|e| panic!("etcd's endpoint {}: {e}", self.endpoint()));
        let netns = self.netns.as_ref().map(|n| Path::new("/run/netns").join(n));
        let (status, body) = crate::http::get(netns.as_deref(), addr, "/metrics");
        assert_eq!(status, 200, "etcd's /metrics at {addr}: {body}");
        body
    }
}

/// An etcd on free loopback ports, as [`Etcd::new`] starts it.
impl Default for Etcd {
    fn default() -> Etcd {
        Etcd::new()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Etcd {
    /// weft's connection options for this etcd, with flannel's default prefix.
    pub fn options(&self) -> weft::store::EtcdOptions {
        weft::store::EtcdOptions::new(&[&self.client_url()], "/coreos.com/network")
    }

    /// A connected store.
    pub async fn store(&self) -> weft::store::EtcdStore {
        weft::store::EtcdStore::connect(&self.options())
            .await
            .unwrap_or_else(|e| panic!("connecting to the test etcd: {e}"))
    }

    /// The number of etcd leases that exist.
    pub async fn lease_count(&self) -> usize {
        let mut c = etcd_client::Client::connect([self.client_url()], None)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test etcd: {e}"));
        c.leases()
            .await
            .unwrap_or_else(|e| panic!("listing etcd leases: {e}"))
            .leases()
            .len()
    }
}

/// An etcd holding the network config `cfg` (stored through weft's store, which validates it),
/// a store connected to it, and the config as the store reads it back: where a test of
/// leases starts.
pub async fn with_config(cfg: &str) -> (Etcd, weft::store::EtcdStore, weft::config::NetworkConfig) {
    let etcd = Etcd::new();
    let store = etcd.store().await;
    store
        .put_config(cfg)
        .await
        .unwrap_or_else(|e| panic!("storing the config {cfg}: {e}"));
    let read = store
        .get_config()
        .await
        .unwrap_or_else(|e| panic!("reading the config back: {e}"))
        .unwrap_or_else(|| panic!("no config after storing {cfg}"));
    (etcd, store, read)
}

fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("weft-etcd-")
        .tempdir()
        .expect("creating a temporary dir for etcd")
}

/// The last lines of an etcd log, for failure messages.
pub(crate) fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// etcdctl's stdout, or a panic with its output when it failed.
pub(crate) fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The etcd lease id (0 for none) of the key `etcdctl get KEY -w json` printed, if it exists.
pub(crate) fn lease_of_key(json: &str) -> Option<i64> {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("etcdctl get {json:?}: {e}"));
    let kv = v["kvs"].as_array()?.first()?.clone();
    Some(kv["lease"].as_i64().unwrap_or(0))
}
