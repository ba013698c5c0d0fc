//! weftd run as a plain process outside any namespace, its log lines read as they come:
//! for tests where it never gets past etcd (no valid config, refused credentials), so it never
//! touches this machine's network. Killed when the guard drops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct BareWeftd {
    child: Child,
    lines: mpsc::Receiver<String>,
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
            log: Vec::new(),
        }
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

    /// Reads log lines for `d`, whatever they say.
    pub fn read_for(&mut self, d: Duration) {
        let _ = self.wait_line(d, &["\u{0}never printed"]);
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
