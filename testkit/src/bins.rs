//! The workspace's programs as the tests run them: `weftd`, `weftctl` and the CNI plugin
//! `weft`. `env!("CARGO_BIN_EXE_…")` exists only in a package's own integration tests, and the
//! plugin is another package's binary, so they are found where cargo put them: tests and
//! benches run from `target/<profile>/deps/`, the binaries sit one level up.

use std::path::{Path, PathBuf};

/// The weftd built with the running test.
pub fn weftd() -> PathBuf {
    locate("weftd", None)
}

/// The weftctl built with the running test.
pub fn weftctl() -> PathBuf {
    locate("weftctl", None)
}

/// The CNI plugin (`weft`, from the `cni/` crate) built with the running test.
pub fn plugin() -> PathBuf {
    locate("weft", None)
}

/// `explicit` when the caller has a path (say `env!("CARGO_BIN_EXE_weftd")`, or one an
/// environment variable names), else `name` in the target directory of the running test or
/// bench. Panics naming the binary, where it was looked for and how to build it.
pub fn locate(name: &str, explicit: Option<&Path>) -> PathBuf {
    let (path, profile) = match explicit {
        Some(p) => (p.to_path_buf(), None),
        None => beside_running_test(name),
    };
    if !path.is_file() {
        let release = if profile.as_deref() == Some("release") {
            " --release"
        } else {
            ""
        };
        panic!(
            "{name} is missing at {}: build it with `cargo build{release} --workspace --bins` \
             (scripts/test and scripts/bench do), or pass its path",
            path.display()
        );
    }
    path
}

/// `name` next to the running executable's `deps` directory, and that directory's profile
/// name (`debug`, `release`).
fn beside_running_test(name: &str) -> (PathBuf, Option<String>) {
    let exe = std::env::current_exe().unwrap_or_else(|e| {
        panic!("cannot tell where the running test is (to find {name} beside it): {e}")
    });
    let dir = exe.parent().unwrap_or(Path::new("."));
    let dir = match dir.file_name() {
        Some(d) if d == "deps" => dir.parent().unwrap_or(dir),
        _ => dir,
    };
    let profile = dir.file_name().map(|p| p.to_string_lossy().into_owned());
    (dir.join(name), profile)
}
