//! weftctl (and so weftd, which shares the connection code and flags) against an etcd that
//! requires TLS with client certificates: the right files connect, missing ones fail fast
//! with a message naming the endpoint; with authentication on, the certificate's CN is the
//! etcd user.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct TlsEtcd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_tls_etcd() -> (TlsEtcd, String, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("weft-etcd-tls-")
        .tempdir()
        .unwrap();
    make_certs(dir.path());
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let d = dir.path();
    let log = std::fs::File::create(d.join("etcd.log")).unwrap();
    let child = Command::new("/usr/bin/etcd")
        .arg("--name=weft-tls")
        .arg(format!("--data-dir={}", d.join("data").display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--advertise-client-urls={url}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!(
            "--initial-cluster=weft-tls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--cert-file={}", d.join("server.pem").display()))
        .arg(format!("--key-file={}", d.join("server-key.pem").display()))
        .arg(format!("--trusted-ca-file={}", d.join("ca.pem").display()))
        .arg("--client-cert-auth")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("/usr/bin/etcd is missing: apt-get install etcd-server");
    let path = d.to_path_buf();
    let etcd = TlsEtcd { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &url,
                "--cacert",
                "ca.pem",
                "--cert",
                "client.pem",
                "--key",
                "client-key.pem",
                "endpoint",
                "health",
            ])
            .current_dir(&path)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TLS etcd not healthy: {}",
            std::fs::read_to_string(path.join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (etcd, url, path)
}

fn weftctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn weftctl_speaks_tls_with_client_certificates() {
    let (_etcd, url, dir) = start_tls_etcd();
    let f = |n: &str| dir.join(n).display().to_string();
    let config = dir.join("net.json");
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

/// etcdctl over TLS with the client certificate, as the operator who sets up the roles.
fn etcdctl_tls(url: &str, dir: &Path, args: &[&str]) {
    let out = Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            url,
            "--cacert",
            "ca.pem",
            "--cert",
            "client.pem",
            "--key",
            "client-key.pem",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_client_certificates_cn_is_the_etcd_user() {
    let (_etcd, url, dir) = start_tls_etcd();
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
        etcdctl_tls(&url, &dir, args);
    }
    let f = |n: &str| dir.join(n).display().to_string();
    let config = dir.join("net.json");
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
