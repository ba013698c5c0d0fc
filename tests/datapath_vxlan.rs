//! weftd's VXLAN datapath across hosts in network namespaces, against a real etcd.

use testkit::lab::{assert_mesh, Lab, VXLAN_CONFIG};

#[test]
fn three_hosts_reach_each_other_and_the_mtu_is_exact() {
    let mut lab = Lab::new(3, VXLAN_CONFIG);
    lab.start_all(&[]);
    lab.add_containers();
    assert_mesh(&lab.hosts);
    // FLANNEL_MTU is the device's real MTU, and exactly that much crosses unfragmented.
    let env = weft::subnet_env::SubnetEnv::read(&lab.hosts[0].subnet_file).unwrap();
    assert_eq!(env.mtu, 1450);
    let link = lab.hosts[0].ns.ip(&["-o", "link", "show", "flannel.1"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let dst = b.container_ip().into();
    assert!(
        a.ping_sized(dst, Some(env.mtu - 28)),
        "a {}-byte ping must cross",
        env.mtu - 28
    );
    assert!(
        !a.ping_sized(dst, Some(env.mtu - 27)),
        "a {}-byte ping must not fit",
        env.mtu - 27
    );
}
