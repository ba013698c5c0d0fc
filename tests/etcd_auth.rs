//! weftctl and weftd against an etcd with authentication on, set up with the README's
//! etcdctl commands: a role that reads and writes only the network's prefix. The right user
//! and password work (from a file or the environment); wrong credentials and a missing
//! permission fail within 10 s naming the user, the key and the endpoint; the password shows
//! up neither in the process list nor in the logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::bare_weftd::BareWeftd;
use testkit::etcd::Etcd;
use testkit::lab::{Lab, VXLAN_CONFIG};
use testkit::leases::CONFIG_KEY;
use testkit::wg::{say_mode, wireguard_go_pids, WG_CONFIG};

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");
const CFG: &str = r#"{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}"#;
const PASSWORD: &str = "pw-7f3a9c1e";
const LIMIT: Duration = Duration::from_secs(10);

/// The README's role for weft, one read-only role, and a role for another prefix.
fn auth_etcd(etcd: &mut Etcd) {
    etcd.enable_auth(
        &[
            ("weft", "readwrite", "/coreos.com/network/"),
            ("weft-ro", "read", "/coreos.com/network/"),
            ("elsewhere", "readwrite", "/other/"),
        ],
        &[
            ("weft", PASSWORD, "weft"),
            ("reader", "reader-pw", "weft-ro"),
            ("stranger", "stranger-pw", "elsewhere"),
        ],
    );
}

fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}

/// Runs weftctl with a clean environment plus `env`, and how long it took.
fn weftctl(etcd: &Etcd, env: &[(&str, &str)], args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(WEFTCTL)
        .env_clear()
        .envs(env.iter().copied())
        .arg("--etcd-endpoints")
        .arg(etcd.client_url())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running weftctl");
    (out, started.elapsed())
}

fn ok(etcd: &Etcd, env: &[(&str, &str)], args: &[&str]) -> String {
    let (out, _) = weftctl(etcd, env, args);
    assert!(
        out.status.success(),
        "weftctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that weftctl fails within 10 s naming every needle; returns the message.
fn refused(etcd: &Etcd, env: &[(&str, &str)], args: &[&str], needles: &[&str]) -> String {
    let (out, took) = weftctl(etcd, env, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "weftctl {args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < LIMIT, "weftctl {args:?} took {took:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "the message should name {n}: {err}");
    }
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
    eprintln!("refused in {} ms: {}", took.as_millis(), err.trim_end());
    err
}

#[test]
fn weftctl_works_with_user_and_password_from_a_file_or_the_environment() {
    let mut etcd = Etcd::new();
    auth_etcd(&mut etcd);
    let dir = tempfile::tempdir().unwrap();
    let file = password_file(dir.path(), "pw", PASSWORD);
    let file = file.to_str().unwrap();
    let by_file = [
        ("WEFTD_ETCD_USERNAME", "weft"),
        ("WEFTD_ETCD_PASSWORD_FILE", file),
    ];
    let cfg = dir.path().join("net.json");
    std::fs::write(&cfg, CFG).unwrap();
    ok(&etcd, &by_file, &["config", "set", cfg.to_str().unwrap()]);
    assert!(ok(&etcd, &by_file, &["config", "get"]).contains("198.19.0.0/16"));
    ok(
        &etcd,
        &by_file,
        &["reservations", "add", "198.19.7.0/24", "198.18.0.7"],
    );
    assert!(ok(&etcd, &by_file, &["leases"]).contains("198.19.7.0/24"));

    let by_env = [
        ("WEFTD_ETCD_USERNAME", "weft"),
        ("WEFTD_ETCD_PASSWORD", PASSWORD),
    ];
    ok(&etcd, &by_env, &["reservations", "remove", "198.19.7.0/24"]);

    // A host's lease on an etcd lease, revoked as the weft user.
    let key = "/coreos.com/network/subnets/198.19.8.0-24";
    etcd.put_on_lease(
        key,
        r#"{"PublicIP":"198.18.0.8","BackendType":"vxlan"}"#,
        600,
    );
    assert!(ok(&etcd, &by_env, &["leases", "revoke", "198.19.8.0/24"]).contains("revoked"));
    assert_eq!(etcd.get(key), None);
    let by_flag = [
        "--etcd-username",
        "weft",
        "--etcd-password-file",
        file,
        "leases",
    ];
    assert!(!ok(&etcd, &[], &by_flag).contains("198.19.7.0/24"));

    // Both a password and a password file: refused before connecting, naming the file.
    let (out, _) = weftctl(
        &etcd,
        &[
            ("WEFTD_ETCD_USERNAME", "weft"),
            ("WEFTD_ETCD_PASSWORD", PASSWORD),
            ("WEFTD_ETCD_PASSWORD_FILE", file),
        ],
        &["leases"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--etcd-password-file") && err.contains(file),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    // A password file that cannot be read is named.
    refused(
        &etcd,
        &[
            ("WEFTD_ETCD_USERNAME", "weft"),
            ("WEFTD_ETCD_PASSWORD_FILE", "/nonexistent/weft-pw"),
        ],
        &["leases"],
        &["/nonexistent/weft-pw"],
    );
}

#[test]
fn wrong_credentials_fail_within_10s_naming_user_key_and_endpoint() {
    let mut etcd = Etcd::new();
    auth_etcd(&mut etcd);
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.client_url();
    let wrong = password_file(dir.path(), "wrong", "not-the-password");
    let wrong = wrong.to_str().unwrap();
    for (user, file) in [("weft", wrong), ("nobody", wrong)] {
        refused(
            &etcd,
            &[
                ("WEFTD_ETCD_USERNAME", user),
                ("WEFTD_ETCD_PASSWORD_FILE", file),
            ],
            &["leases"],
            &[
                &format!("user \"{user}\""),
                CONFIG_KEY,
                &url,
                "cannot log in",
            ],
        );
    }
    // No credentials at all against an etcd that wants them.
    refused(
        &etcd,
        &[],
        &["config", "get"],
        &["anonymous", CONFIG_KEY, &url],
    );
}

#[test]
fn a_missing_permission_fails_within_10s_naming_user_key_and_endpoint() {
    let mut etcd = Etcd::new();
    auth_etcd(&mut etcd);
    etcd.put(CONFIG_KEY, CFG);
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.client_url();
    let cfg = dir.path().join("net.json");
    std::fs::write(&cfg, CFG).unwrap();

    // Read-only: listing works, writing the config does not.
    let reader = password_file(dir.path(), "reader", "reader-pw");
    let reader = [
        ("WEFTD_ETCD_USERNAME", "reader"),
        ("WEFTD_ETCD_PASSWORD_FILE", reader.to_str().unwrap()),
    ];
    ok(&etcd, &reader, &["leases"]);
    refused(
        &etcd,
        &reader,
        &["config", "set", cfg.to_str().unwrap()],
        &["user \"reader\"", CONFIG_KEY, &url, "permission denied"],
    );
    refused(
        &etcd,
        &reader,
        &["reservations", "add", "198.19.9.0/24", "198.18.0.9"],
        &[
            "user \"reader\"",
            "/coreos.com/network/subnets/198.19.9.0-24",
            &url,
        ],
    );

    // A role for another prefix: refused at the first read of the network's config.
    let stranger = password_file(dir.path(), "stranger", "stranger-pw");
    refused(
        &etcd,
        &[
            ("WEFTD_ETCD_USERNAME", "stranger"),
            ("WEFTD_ETCD_PASSWORD_FILE", stranger.to_str().unwrap()),
        ],
        &["leases"],
        &["user \"stranger\"", CONFIG_KEY, &url, "permission denied"],
    );
}

/// weftd for `user` with its password in `password_file`; safe outside a namespace of its own
/// only while etcd holds no network config, so it never gets past waiting for one.
fn weftd_as(etcd: &Etcd, user: &str, password_file: &Path) -> BareWeftd {
    let url = etcd.client_url();
    let file = password_file.to_string_lossy();
    BareWeftd::start(&[
        "--etcd-endpoints",
        &url,
        "--etcd-username",
        user,
        "--etcd-password-file",
        &file,
        "--log-level",
        "debug",
    ])
}

#[test]
fn weftd_logs_in_with_a_password_file_and_never_shows_the_password() {
    let mut etcd = Etcd::new();
    auth_etcd(&mut etcd);
    let dir = tempfile::tempdir().unwrap();
    let url = etcd.client_url();

    let right = password_file(dir.path(), "pw", PASSWORD);
    let mut d = weftd_as(&etcd, "weft", &right);
    let waiting = d.wait_line(LIMIT, &["no network config", CONFIG_KEY]);
    assert!(
        waiting.is_some(),
        "weftd logged in and waits for the config: {:#?}",
        d.log
    );
    let cmdline = d.cmdline();
    assert!(cmdline.contains("--etcd-password-file"), "{cmdline}");
    assert!(!cmdline.contains(PASSWORD), "{cmdline}");
    drop(d);

    let wrong = password_file(dir.path(), "wrong", "not-the-password");
    let mut d = weftd_as(&etcd, "weft", &wrong);
    let found = d.wait_line(LIMIT, &["user \"weft\"", CONFIG_KEY, &url, "cannot log in"]);
    let Some((line, took)) = found else {
        panic!(
            "no message naming user, key and endpoint within 10 s: {:#?}",
            d.log
        );
    };
    eprintln!("weftd reported in {} ms: {line}", took.as_millis());
    // Refused credentials never mend themselves: weftd stops with the reason (systemd
    // restarts it and the journal keeps saying why).
    let status = d.wait_exit(LIMIT);
    assert!(
        matches!(status, Some(s) if !s.success()),
        "weftd did not exit with a failure after its login was refused ({status:?}): {:#?}",
        d.log
    );
    // Exited: every line it wrote is read, so none can hide the password.
    d.read_to_end(LIMIT);
    for l in &d.log {
        assert!(
            !l.contains(PASSWORD) && !l.contains("not-the-password"),
            "{l}"
        );
    }
    drop(d);

    // A user whose role covers another prefix only.
    let stranger = password_file(dir.path(), "stranger", "stranger-pw");
    let mut d = weftd_as(&etcd, "stranger", &stranger);
    let found = d.wait_line(
        LIMIT,
        &["user \"stranger\"", CONFIG_KEY, &url, "permission denied"],
    );
    let Some((line, took)) = found else {
        panic!(
            "no message naming user, key and endpoint within 10 s: {:#?}",
            d.log
        );
    };
    eprintln!("weftd reported in {} ms: {line}", took.as_millis());
}

#[test]
fn weftd_runs_a_host_as_an_etcd_user() {
    let mut lab = Lab::new(1, VXLAN_CONFIG);
    auth_etcd(&mut lab.etcd);
    let pw = password_file(lab.dir.path(), "pw", PASSWORD);
    let pw = pw.to_str().unwrap().to_string();
    let h = &mut lab.hosts[0];
    h.start(&["--etcd-username", "weft", "--etcd-password-file", &pw]);
    let env = h.wait_ready();
    assert!(env.subnet.is_some(), "a subnet was leased as user weft");
    assert!(
        lab.etcd
            .get(&format!(
                "/coreos.com/network/subnets/{}-24",
                h.subnet().network()
            ))
            .is_some(),
        "the lease is in etcd"
    );
    let logs = h.logs();
    assert!(!logs.contains(PASSWORD), "the password is in weftd's log");
}

/// etcd forgets an idle token after --auth-token-ttl (5 minutes by default); weftd renews
/// its lease once a day, so every call must survive a token etcd no longer knows.
#[tokio::test]
async fn an_expired_token_is_renewed_without_the_caller_noticing() {
    let mut etcd = Etcd::with_args(&["--auth-token-ttl=1"]);
    auth_etcd(&mut etcd);
    etcd.put(CONFIG_KEY, CFG);
    let mut opts = etcd.options();
    opts.username = Some("weft".into());
    opts.password = Some(PASSWORD.into());
    let store = weft::store::EtcdStore::connect(&opts).await.unwrap();
    let cfg = store.get_config().await.unwrap().unwrap();
    let attrs =
        weft::backend::vxlan::lease_attrs("198.18.0.3".parse().unwrap(), 1, "0e:2a:00:00:00:03");
    let lease = store
        .acquire_lease(&cfg, &attrs, None, Duration::from_secs(600))
        .await
        .unwrap();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let renewed = store.renew_lease(&lease, Duration::from_secs(600)).await;
        assert!(
            renewed.is_ok(),
            "renewal {round} after the token expired: {renewed:?}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let list = store.list_leases(Some(&cfg)).await;
        assert!(
            list.is_ok(),
            "listing {round} after the token expired: {list:?}"
        );
    }
}

/// The password handed over in weftd's environment (as systemd's `Environment=` does) is
/// forgotten once read: neither `/proc/<weftd>/environ` nor the environment of the
/// wireguard-go weftd starts holds it; wireguard-go gets PATH and nothing else of weftd's.
#[test]
fn a_password_from_the_environment_is_forgotten_and_never_reaches_wireguard_go() {
    say_mode();
    let mut lab = Lab::new(1, WG_CONFIG);
    auth_etcd(&mut lab.etcd);
    let h = &mut lab.hosts[0];
    h.use_wireguard();
    h.env = vec![
        ("WEFTD_ETCD_USERNAME".into(), "weft".into()),
        ("WEFTD_ETCD_PASSWORD".into(), PASSWORD.into()),
        ("WEFT_TEST_CANARY".into(), "canary-4d1c".into()),
    ];
    h.start(&[]);
    h.wait_ready();
    let environ = |pid: i32| {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("reading an environ");
        String::from_utf8_lossy(&raw).replace('\0', "\n")
    };
    let weftd = environ(h.pid().expect("weftd runs") as i32);
    assert!(!weftd.contains(PASSWORD), "weftd's environ: {weftd}");
    assert!(weftd.contains("canary-4d1c"), "weftd's environ: {weftd}");
    if std::path::Path::new("/sys/module/wireguard").exists() {
        eprintln!("the kernel's WireGuard carries the device: weftd starts no child");
        return;
    }
    let pids = wireguard_go_pids(h);
    assert!(!pids.is_empty(), "no wireguard-go runs:\n{}", h.logs());
    for pid in pids {
        let child = environ(pid);
        assert!(!child.contains(PASSWORD), "wireguard-go's environ: {child}");
        // wireguard-go adds its own WG_* variables when it detaches itself.
        assert!(
            (child.lines().filter(|l| !l.is_empty()))
                .all(|l| l.starts_with("PATH=") || l.starts_with("WG_")),
            "wireguard-go got more than PATH: {child}"
        );
    }
}
