//! weftd run as a plain process outside any namespace, its log lines read as they come:
//! for tests where it never gets past etcd (no valid config, refused credentials), so it never
//! touches this machine's network. Killed when the guard drops.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

pub struct BareWeftd {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Where /metrics is served, when started with [`BareWeftd::start_serving`].
    http: Option<SocketAddr>,
    /// Every line read so far.
    pub log: Vec<String>,
}

impl BareWeftd {
    /// Starts weftd with `args` and an empty environment.
    pub fn start(args: &[&str]) -> BareWeftd {
        let mut child = Command::new(crate::bins::weftd())
            .env_clear()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weftd");
        let stderr = child.stderr.take().expect("weftd's stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        BareWeftd {
            child,
            lines,
            http: None,
            log: Vec::new(),
        }
    }

    /// Like [`start`](Self::start), serving /healthz, /readyz and /metrics on a free loopback
    /// port, so a test can read what weftd counts (see [`metric`](Self::metric)).
    pub fn start_serving(args: &[&str]) -> BareWeftd {
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::cmd::free_port()));
        let port = addr.port().to_string();
        let mut full = vec!["--healthz-ip", "127.0.0.1", "--healthz-port", &port];
        full.extend_from_slice(args);
        let mut d = BareWeftd::start(&full);
        d.http = Some(addr);
        d
    }

    /// A series of weftd's /metrics; None while nothing answers or the series is missing.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let addr = self
            .http
            .expect("metrics are served only by a weftd started with start_serving");
        let (status, body) = crate::http::get(None, addr, "/metrics");
        (status == 200)
            .then(|| crate::http::metric(&body, name))
            .flatten()
    }

    /// Waits up to `limit` for a log line containing every needle; returns it and when.
    pub fn wait_line(&mut self, limit: Duration, needles: &[&str]) -> Option<(String, Duration)> {
        let started = Instant::now();
        while let Some(left) = limit.checked_sub(started.elapsed()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            self.log.push(line.clone());
            if needles.iter().all(|n| line.contains(n)) {
                return Some((line, started.elapsed()));
            }
        }
        None
    }

    /// Reads every line weftd wrote until its stderr closed (it exited, or was stopped with
    /// [`stop`](Self::stop)), so the log is complete. Panics when it stays open for `limit`.
    pub fn read_to_end(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            let left = limit.saturating_sub(started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "weftd's log was still open after {limit:?}: {:#?}",
                    self.log
                ),
            }
        }
    }

    /// SIGTERM (unless weftd has exited already), then waits (10 s) for it to exit and reads
    /// its log to the end.
    pub fn stop(&mut self) -> ExitStatus {
        if self.is_running() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let status = self
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("weftd did not exit within 10 s of SIGTERM"));
        self.read_to_end(Duration::from_secs(10));
        status
    }

    /// Waits up to `limit` for weftd to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn cmdline(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.child.id()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    }
}

impl Drop for BareWeftd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
