//! `weftctl policy` against a real etcd: the Kubernetes documentation's examples are stored
//! as kubectl would store them, every unsupported or invalid field is refused naming the
//! field and value with nothing stored, and list, show and delete do what they say.

use std::process::Output;

use testkit::etcd::Etcd;

const EXAMPLES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/k8s-network-policies.yaml"
);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stored(etcd: &Etcd) -> usize {
    let out = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/weft/policy/policies/",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

#[test]
fn the_documentation_examples_apply_and_every_unsupported_field_is_refused() {
    let etcd = Etcd::new();
    let dir = tempfile::tempdir().unwrap();
    let base = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 198.18.0.0/16\n    ports:\n    - port: 80\n";
    let cases = [
        (
            "port: 80",
            "port: http",
            "spec.ingress[0].ports[0].port",
            "\"http\"",
        ),
        (
            "port: 80",
            "port: 80\n      endPort: 70",
            "spec.ingress[0].ports[0].endPort",
            "70",
        ),
        (
            "port: 80",
            "port: 80\n      protocol: ICMP",
            "spec.ingress[0].ports[0].protocol",
            "ICMP",
        ),
        (
            "198.18.0.0/16",
            "198.18.0.0/99",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "198.18.0.0/99",
        ),
        (
            "cidr: 198.18.0.0/16",
            "cidr: 198.18.0.0/16\n        except: [198.19.0.0/24]",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "198.19.0.0/24",
        ),
        (
            "podSelector: {}",
            "podSelector: {}\n  frobnicate: true",
            "spec.frobnicate",
            "unknown field `frobnicate`",
        ),
    ];
    for (from, to, field, value) in cases {
        // A good document first: one refusal anywhere stores nothing of the file.
        let doc = format!(
            "{}---\n{}",
            base.replace("name: p", "name: good"),
            base.replace(from, to)
        );
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, doc).unwrap();
        let out = etcd.weftctl(&["policy", "apply", "-f", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{to}: accepted");
        let said = text(&out);
        assert!(said.contains(field) && said.contains(value), "{to}: {said}");
        assert_eq!(stored(&etcd), 0, "{to}: something was stored");
    }

    let out = etcd.weftctl(&["policy", "apply", "-f", EXAMPLES]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored(&etcd), 7);
    let list = text(&etcd.weftctl(&["policy", "list"]));
    assert!(
        list.contains("test-network-policy") && list.contains("role=db"),
        "{list}"
    );
    let show = etcd.weftctl(&["-o", "json", "policy", "show", "default-deny-egress"]);
    let doc: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(doc["spec"]["policyTypes"], serde_json::json!(["Egress"]));
    assert!(etcd
        .weftctl(&["policy", "delete", "default-deny-egress"])
        .status
        .success());
    assert!(!etcd
        .weftctl(&["policy", "delete", "default-deny-egress"])
        .status
        .success());
    assert_eq!(stored(&etcd), 6);
}
