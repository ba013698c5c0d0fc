//! Changing a running lab's config as an operator does: `weftctl` run inside the underlay
//! (its output kept, success or not), `weftctl config set` of a document, and polling at a
//! pace that suits a check that runs a process.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::lab::Lab;

/// Polls `done` every 250 ms (each poll may run weftctl) for up to `patience`.
pub fn until(patience: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + patience;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// weftctl run inside the underlay against the lab's etcd, as an operator's machine would.
pub fn weftctl(lab: &Lab, args: &[&str]) -> Output {
    let weftctl = crate::bins::weftctl().display().to_string();
    let url = lab.etcd.client_url();
    let mut full = vec![weftctl.as_str(), "--etcd-endpoints", &url];
    full.extend_from_slice(args);
    lab.underlay.exec(&full)
}

/// A command's stdout and stderr, as one text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `weftctl config set` of `doc` (written to a file in the lab's dir) with `extra` flags.
pub fn config_set(lab: &Lab, doc: &str, extra: &[&str]) -> Output {
    let path = lab.dir.path().join("config.json");
    std::fs::write(&path, doc).expect("writing the config file");
    let path = path.display().to_string();
    let mut args = vec!["config", "set", path.as_str()];
    args.extend_from_slice(extra);
    weftctl(lab, &args)
}
