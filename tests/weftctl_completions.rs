//! `weftctl completions <shell>`: a script the shell accepts, offering weftctl's commands,
//! printed without any etcd to talk to.

use std::process::Command;

fn completions(shell: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        // Nothing listens here: completions must not need etcd.
        .args([
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "completions",
            shell,
        ])
        .output()
        .expect("running weftctl");
    assert!(
        out.status.success(),
        "weftctl completions {shell} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the script is UTF-8")
}

#[test]
fn bash_completion_loads_and_offers_every_command() {
    let script = completions("bash");
    let dir = tempfile::tempdir().expect("a temporary dir");
    let path = dir.path().join("weftctl.bash");
    std::fs::write(&path, &script).expect("writing the script");
    // Load it as a user would, then ask bash what it completes after `weftctl `.
    let probe = format!(
        "source {}; COMP_WORDS=(weftctl ''); COMP_CWORD=1; COMP_LINE='weftctl '; COMP_POINT=8; \
         _weftctl weftctl '' weftctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .expect("bash is needed to load the bash completion");
    let offered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bash refused the script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for cmd in ["config", "leases", "reservations", "completions"] {
        assert!(
            offered.lines().any(|l| l == cmd),
            "bash does not offer {cmd}; it offers: {offered}"
        );
    }
}

#[test]
fn every_shell_gets_a_script_naming_weftctl() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = completions(shell);
        assert!(
            script.contains("weftctl") && script.contains("leases"),
            "the {shell} script does not mention weftctl and its commands:\n{script}"
        );
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["completions", "tcsh"])
        .output()
        .expect("running weftctl");
    assert!(!out.status.success(), "tcsh was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}
