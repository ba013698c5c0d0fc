//! weftd's environment and its children's. The etcd password may come in the environment
//! (`WEFTD_ETCD_PASSWORD`, as systemd's `Environment=` hands it over), so weftd forgets it
//! once read, and every program weftd starts (wireguard-go, nft, iptables) gets a minimal
//! environment of its own rather than a copy of weftd's.

use std::ffi::CStr;
use std::process::Command;

/// Variables that hold secrets, forgotten once read.
pub const SECRETS: &[&str] = &["WEFTD_ETCD_PASSWORD"];

/// What a child keeps of weftd's environment: where to find programs. Nothing else weft
/// starts needs more.
const PASSED_ON: &[&str] = &["PATH"];

/// A command for `program` with only [`PASSED_ON`] of weftd's environment.
pub fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env_clear();
    for name in PASSED_ON {
        if let Some(v) = std::env::var_os(name) {
            c.env(name, v);
        }
    }
    c
}

/// Removes `names` from this process's environment, and blanks their values where the
/// kernel shows the environment the process started with (`/proc/PID/environ`), which
/// removing alone does not change.
///
/// # Safety
/// No other thread may exist: the environment is read and written without a lock.
pub unsafe fn forget(names: &[&str]) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut entry = libc::environ;
        while !entry.is_null() && !(*entry).is_null() {
            blank_if_named(*entry, names);
            entry = entry.add(1);
        }
    }
    for name in names {
        std::env::remove_var(name);
    }
}

/// Overwrites the value of the `NAME=value` string at `p` with NULs when NAME is one of
/// `names`.
///
/// # Safety
/// `p` must point to a writable NUL-terminated string.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn blank_if_named(p: *mut libc::c_char, names: &[&str]) {
    let bytes = CStr::from_ptr(p).to_bytes();
    let Some(eq) = bytes.iter().position(|b| *b == b'=') else {
        return;
    };
    if !names.iter().any(|n| n.as_bytes() == &bytes[..eq]) {
        return;
    }
    std::ptr::write_bytes(p.add(eq + 1), 0, bytes.len() - eq - 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_gets_path_and_nothing_else() {
        let mut c = command("env");
        let envs: Vec<_> = c.get_envs().map(|(k, _)| k.to_owned()).collect();
        assert!(envs.iter().all(|k| k == "PATH"), "{envs:?}");
        let out = c.output().expect("running env");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().all(|l| l.starts_with("PATH=")),
            "the child saw: {text}"
        );
    }
}
