//! A real Prometheus (Debian's `/usr/bin/prometheus`) inside a lab's network namespace,
//! scraping weftd's `/metrics` on the lab hosts and evaluating weft's shipped rules; read
//! through its HTTP API as an operator's tools read it. Killed, with its data, on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::netns::Netns;
use crate::wait::wait_for;

/// Where Prometheus listens inside its namespace (the namespace is the test's own, so a fixed
/// port never collides with another test's).
const LISTEN: ([u8; 4], u16) = ([127, 0, 0, 1], 9090);

pub struct Prometheus {
    child: Child,
    ns: std::path::PathBuf,
    dir: tempfile::TempDir,
}

/// One alert as `/api/v1/alerts` lists it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub instance: String,
    /// `pending` or `firing`.
    pub state: String,
    /// When the alert's expression first held, as Prometheus reports it (RFC 3339).
    pub active_at: String,
    pub value: String,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, scraping `targets` (`host:port`) as job `weft` every
    /// `every`, evaluating `rules` as often. Returns once it is ready and has loaded the rules.
    pub fn start(ns: &Netns, targets: &[String], rules: &Path, every: Duration) -> Prometheus {
        let binary = "/usr/bin/prometheus";
        assert!(
            Path::new(binary).is_file(),
            "{binary} is missing: install Debian's prometheus package (scripts/setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("weft-prometheus-")
            .tempdir()
            .expect("a directory for Prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, rules, every)).expect("writing the config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("the log");
        let listen = SocketAddr::from(LISTEN).to_string();
        // nsenter, not `ip netns exec`: a daemon gets the namespace and nothing remounted.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary} with nsenter: {e}"));
        let mut p = Prometheus {
            child,
            ns: ns.path(),
            dir,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&mut self) {
        let ready = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            let rules = self.api("/api/v1/rules")?;
            let groups = rules["data"]["groups"].as_array()?;
            (!groups.is_empty()).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus did not load its rules within 30 s:\n{}",
            self.log()
        );
    }

    /// A GET on the API: its `data`-carrying JSON when the answer is 200 and `success`.
    pub fn api(&self, path: &str) -> Option<Value> {
        let (code, body) = crate::http::get(Some(&self.ns), SocketAddr::from(LISTEN), path);
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["status"] == "success").then_some(v)
    }

    /// The scrape health (`up`, `down`, `unknown`) of each target, by its address.
    pub fn target_health(&self) -> Vec<(String, String)> {
        let Some(v) = self.api("/api/v1/targets") else {
            return Vec::new();
        };
        let active = v["data"]["activeTargets"].as_array().cloned();
        (active.unwrap_or_default().iter())
            .map(|t| {
                let text = |x: &Value| x.as_str().unwrap_or("").to_string();
                (text(&t["labels"]["instance"]), text(&t["health"]))
            })
            .collect()
    }

    /// The `for:` of alerting rule `name`, as Prometheus loaded it.
    pub fn rule_for(&self, name: &str) -> Option<Duration> {
        let v = self.api("/api/v1/rules?type=alert")?;
        let groups = v["data"]["groups"].as_array()?;
        groups
            .iter()
            .filter_map(|g| g["rules"].as_array())
            .flatten()
            .find(|r| r["name"] == name)
            .and_then(|r| r["duration"].as_f64())
            .map(Duration::from_secs_f64)
    }

    /// Every pending or firing alert (`/api/v1/alerts`).
    pub fn alerts(&self) -> Vec<Alert> {
        let Some(v) = self.api("/api/v1/alerts") else {
            return Vec::new();
        };
        let list = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
        let text = |x: &Value| x.as_str().unwrap_or("").to_string();
        list.iter()
            .map(|a| Alert {
                name: text(&a["labels"]["alertname"]),
                instance: text(&a["labels"]["instance"]),
                state: text(&a["state"]),
                active_at: text(&a["activeAt"]),
                value: text(&a["value"]),
            })
            .collect()
    }

    /// The first and last evaluation (Unix seconds) at which alert `name` was firing for
    /// `instance` between `from` and `to`, from the `ALERTS` series (`/api/v1/query_range`).
    pub fn firing_span(
        &self,
        name: &str,
        instance: &str,
        from: f64,
        to: f64,
    ) -> Option<(f64, f64)> {
        let query = format!(
            "ALERTS%7Balertname%3D%22{name}%22%2Calertstate%3D%22firing%22%2Cinstance%3D%22{instance}%22%7D"
        );
        let path = format!("/api/v1/query_range?query={query}&start={from:.3}&end={to:.3}&step=1");
        let v = self.api(&path)?;
        let values = v["data"]["result"].get(0)?["values"].as_array()?.clone();
        let at = |x: &Value| x.get(0).and_then(Value::as_f64);
        Some((at(values.first()?)?, at(values.last()?)?))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: one job, `weft`, as the shipped rules expect it named.
fn config_text(targets: &[String], rules: &Path, every: Duration) -> String {
    let ms = every.as_millis();
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  \
         evaluation_interval: {ms}ms\nrule_files: [\"{}\"]\nscrape_configs:\n  \
         - job_name: weft\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        targets.join(", ")
    )
}
