//! Running the tools the tests drive (iproute2, podman, etcdctl, the plugin, ...): a command
//! that cannot be started fails the test naming the tool.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// What a command printed, and its exit code (-1 when a signal ended it).
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a tool and panics with its output when it fails; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with `input` on its stdin and returns what it printed, whatever its exit status.
pub fn with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    let mut stdin = child.stdin.take().expect("a piped stdin");
    // A program that exits without reading all of its input is the caller's to judge.
    let _ = stdin.write_all(input);
    drop(stdin);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"))
}

/// A short name unique to this process and call, `w<pid base36><kind><n>`, for interfaces
/// (at most 15 bytes), networks, containers and image tags.
pub fn unique(kind: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let mut pid = std::process::id();
    let mut tag = String::new();
    while pid > 0 {
        tag.insert(0, char::from_digit(pid % 36, 36).unwrap_or('0'));
        pid /= 36;
    }
    format!("w{tag}{kind}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A container image's root as a tar in `dir` (`rootfs.tar`): busybox-static alone, with the
/// applets the tests run (sh, ip, ping, sleep, cat), for `podman import` or `docker import`.
pub fn busybox_tar(dir: &std::path::Path) -> std::path::PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("creating {}: {e}", bin.display()));
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .unwrap_or_else(|e| panic!("cannot copy /bin/busybox (install busybox-static): {e}"));
    for applet in ["sh", "ip", "ping", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .unwrap_or_else(|e| panic!("linking the {applet} applet: {e}"));
    }
    let tar = dir.join("rootfs.tar");
    run(
        "tar",
        &[
            "-C",
            &rootfs.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ],
    );
    tar
}

/// A loopback TCP port that nothing listens on at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}
