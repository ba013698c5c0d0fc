//! Loss measured across an event: pings every 10 ms from one address to another until the
//! test has done what it measures, counted from ping's own summaries; a lost request is
//! named with the time of the reply before it.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::netns::Netns;

/// Counts from a [`Pinger`].
#[derive(Debug, Clone, Default)]
pub struct PingTotals {
    pub transmitted: u64,
    pub received: u64,
    /// ping's summary of every run that lost packets, with the sequence numbers it lost and
    /// the time of the last reply before each (to match with the hosts' logs).
    pub lossy_runs: Vec<String>,
}

impl PingTotals {
    pub fn lost(&self) -> u64 {
        self.transmitted - self.received
    }

    /// Fails the test unless at least `at_least` pings went out (so they covered the event)
    /// and none was lost.
    pub fn assert_no_loss(&self, what: &str, at_least: u64) {
        assert!(
            self.transmitted >= at_least,
            "{what}: only {} pings sent; the pinger did not cover the event",
            self.transmitted
        );
        assert_eq!(
            self.lost(),
            0,
            "{what}: {} of {} pings lost: {:?}",
            self.lost(),
            self.transmitted,
            self.lossy_runs
        );
    }
}

/// Pings every 10 ms (ping makes that ~17 ms here) in back-to-back runs of 100 packets, each run waiting
/// for every reply, so stopping never cuts a packet in flight and a lost packet is a real
/// loss. Between two runs there is a gap of a few milliseconds while the next ping starts.
///
/// Each run has a deadline (`-w`) rather than a reply timeout (`-W`): with a count and no
/// deadline, ping waits only twice the slowest round trip so far (at least one interval)
/// after its last request, so a last reply delayed by more than ~10 ms under load was
/// counted lost. With a deadline it waits for every reply until then.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<PingTotals, String>>>,
}

impl Pinger {
    /// Pings from `src` to `dst` inside namespace `ns`.
    pub fn in_netns(ns: &Netns, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Pinger {
        let prefix = ["ip", "netns", "exec", ns.name()]
            .map(String::from)
            .to_vec();
        Pinger::start_with(prefix, src, dst)
    }

    /// Pings with `prefix` before `ping`: the command that puts ping where `src` is (a
    /// namespace, a container inside a machine).
    pub fn start_with(
        prefix: Vec<String>,
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
    ) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (src, dst) = (src.into().to_string(), dst.into().to_string());
        let thread = std::thread::spawn(move || {
            let mut totals = PingTotals::default();
            while !flag.load(Ordering::SeqCst) {
                let out = Command::new(&prefix[0])
                    .args(&prefix[1..])
                    .args(["ping", "-n", "-D", "-i", "0.01"])
                    .args(["-c", "100", "-w", RUN_DEADLINE, "-I", &src, &dst])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run ping (install iputils-ping): {e}"))?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let summary = text
                    .lines()
                    .find(|l| l.contains("packets transmitted"))
                    .ok_or_else(|| {
                        format!(
                            "no summary from ping {src} -> {dst}: {text}{}",
                            String::from_utf8_lossy(&out.stderr)
                        )
                    })?;
                let count = |what: &str| -> Option<u64> {
                    summary
                        .split(", ")
                        .find(|part| part.contains(what))?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                };
                let (Some(tx), Some(rx)) = (count("transmitted"), count("received")) else {
                    return Err(format!("cannot read ping's summary: {summary}"));
                };
                totals.transmitted += tx;
                totals.received += rx;
                if rx < tx {
                    totals
                        .lossy_runs
                        .push(format!("{summary}; {}", lost_seqs(&text, tx)));
                }
            }
            Ok(totals)
        });
        Pinger {
            stop,
            thread: Some(thread),
        }
    }

    /// Lets the current run complete and returns the totals.
    pub fn finish(mut self) -> PingTotals {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("finish is called once");
        match thread.join() {
            Ok(Ok(t)) => t,
            Ok(Err(why)) => panic!("{why}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Seconds a run of 100 requests (~1.7 s) may take with every reply in.
const RUN_DEADLINE: &str = "10";

/// Which of a run's `tx` requests got no reply, each with the time (ping's `-D` stamp) of the
/// last reply before it: "icmp_seq=57 after [1733490000.123456]".
fn lost_seqs(text: &str, tx: u64) -> String {
    let mut replies = std::collections::BTreeMap::new();
    // Only replies: an error line ("From … icmp_seq=5 Destination Host Unreachable") names a
    // sequence number too, and that request is lost.
    for line in text.lines().filter(|l| l.contains(" bytes from ")) {
        let stamp = line.split(']').next().unwrap_or("").trim_start_matches('[');
        let seq = (line.split_whitespace())
            .find_map(|w| w.strip_prefix("icmp_seq="))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            replies.insert(seq, stamp.to_string());
        }
    }
    let lost: Vec<String> = (1..=tx)
        .filter(|n| !replies.contains_key(n))
        .map(|n| match replies.range(..n).next_back() {
            Some((_, stamp)) => format!("icmp_seq={n} after [{stamp}]"),
            None => format!("icmp_seq={n} (first of the run)"),
        })
        .collect();
    format!("lost {}", lost.join(", "))
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lost_request_is_named_with_the_reply_before_it() {
        let text = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n\
            [1733490000.100000] 64 bytes from 198.18.0.2: icmp_seq=1 ttl=64 time=0.05 ms\n\
            [1733490000.120000] 64 bytes from 198.18.0.2: icmp_seq=2 ttl=64 time=0.05 ms\n\
            [1733490000.140000] From 198.18.0.1 icmp_seq=3 Destination Host Unreachable\n\
            [1733490000.160000] 64 bytes from 198.18.0.2: icmp_seq=4 ttl=64 time=0.05 ms\n";
        assert_eq!(
            super::lost_seqs(text, 5),
            "lost icmp_seq=3 after [1733490000.120000], icmp_seq=5 after [1733490000.160000]"
        );
    }
}
