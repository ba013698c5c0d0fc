//! weftctl (and so weftd, which shares the connection code and flags) against an etcd that
//! requires TLS with client certificates: the right files connect, missing ones fail fast
//! with a message naming the endpoint; with authentication on, the certificate's CN is the
//! etcd user.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::etcd::{Etcd, Tls};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is missing: apt-get install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and two client certificates (CN weft-client and
/// weft-stranger), all signed by the CA.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=weft-test-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    for name in ["server", "client", "stranger"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=weft-{name}"),
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.cnf",
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

/// A TLS etcd requiring client certificates, with its certificates in a directory of the
/// test's (kept as long as the returned guard).
fn start_tls_etcd() -> (Etcd, tempfile::TempDir, Tls) {
    let dir = tempfile::Builder::new()
        .prefix("weft-etcd-tls-")
        .tempdir()
        .unwrap();
    make_certs(dir.path());
    let tls = Tls {
        dir: dir.path().to_path_buf(),
    };
    (Etcd::with_tls(tls.clone()), dir, tls)
}

fn weftctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn weftctl_speaks_tls_with_client_certificates() {
    let (etcd, dir, tls) = start_tls_etcd();
    let url = etcd.client_url();
    let f = |n: &str| tls.file(n);
    let config = dir.path().join("net.json");
    std::fs::write(
        &config,
        r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let tls = [
        "--etcd-endpoints".to_string(),
        url.clone(),
        "--etcd-cafile".into(),
        f("ca.pem"),
        "--etcd-certfile".into(),
        f("client.pem"),
        "--etcd-keyfile".into(),
        f("client-key.pem"),
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = tls.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        weftctl(&a)
    };
    let out = with(&["config", "set", &config.display().to_string()]);
    assert!(
        out.status.success(),
        "config set over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with(&["config", "get"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.19.0.0/16"));

    // Without a client certificate the server refuses us: a prompt, one-line error.
    let started = Instant::now();
    let out = weftctl(&[
        "--etcd-endpoints",
        &url,
        "--etcd-cafile",
        &f("ca.pem"),
        "config",
        "get",
    ]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url), "the error names the endpoint: {err}");

    // Half a client identity, or a plain endpoint with TLS files, is refused before connecting.
    let out = weftctl(&[
        "--etcd-endpoints",
        &url,
        "--etcd-certfile",
        &f("client.pem"),
        "config",
        "get",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--etcd-keyfile"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = url.replace("https://", "http://");
    let out = weftctl(&[
        "--etcd-endpoints",
        &plain,
        "--etcd-cafile",
        &f("ca.pem"),
        "config",
        "get",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be https://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_client_certificates_cn_is_the_etcd_user() {
    let (etcd, dir, tls) = start_tls_etcd();
    let url = etcd.client_url();
    // The README's commands, with the user named like the certificate's CN and no password
    // ever used by weft.
    for args in [
        &["user", "add", "root:root-secret"][..],
        &["role", "add", "weft"],
        &[
            "role",
            "grant-permission",
            "weft",
            "readwrite",
            "--prefix=true",
            "/coreos.com/network/",
        ],
        &["user", "add", "weft-client:unused-password"],
        &["user", "grant-role", "weft-client", "weft"],
        &["auth", "enable"],
    ] {
        etcd.etcdctl_ok(args);
    }
    let f = |n: &str| tls.file(n);
    let config = dir.path().join("net.json");
    std::fs::write(
        &config,
        r#"{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let as_cert = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "--etcd-endpoints".to_string(),
            url.clone(),
            "--etcd-cafile".into(),
            f("ca.pem"),
            "--etcd-certfile".into(),
            f(&format!("{name}.pem")),
            "--etcd-keyfile".into(),
            f(&format!("{name}-key.pem")),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .env_clear()
            .args(&a)
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (out, _) = as_cert("client", &["config", "set", &config.display().to_string()]);
    assert!(
        out.status.success(),
        "config set as weft-client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = as_cert("client", &["config", "get"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.19.0.0/16"));

    // A certificate the CA signed, but for a user etcd does not know.
    let (out, took) = as_cert("stranger", &["leases"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    for needle in [
        "user \"weft-stranger\"",
        "/coreos.com/network/config",
        url.as_str(),
    ] {
        assert!(
            err.contains(needle),
            "the message should name {needle}: {err}"
        );
    }
    eprintln!("refused in {} ms: {}", took.as_millis(), err.trim_end());
}
