#!/usr/bin/env bash
# Provisions one machine of the Vagrant lab, the way an operator installs weft on a real
# host: etcd (node 1 only), weft's Debian package (weftd as a systemd service configured in
# /etc/default/weftd, the weft CNI plugin in /usr/lib/cni) with the example conflist, and
# podman using them. Safe to run again (`vagrant provision`).
#
# usage: provision.sh NODE_NUMBER NODE_IP ETCD_IP
set -euo pipefail

NODE=$1
NODE_IP=$2
ETCD_IP=$3
SRC=/weft
ETCD_URL=http://$ETCD_IP:2379
export DEBIAN_FRONTEND=noninteractive

packages=(etcd-client iproute2 nftables iputils-ping curl containernetworking-plugins
          podman runc busybox-static)
[ "$NODE" = 1 ] && packages+=(etcd-server)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"

# --- etcd on node 1, listening on the private network --------------------------------------
if [ "$NODE" = 1 ]; then
  cat >/etc/default/etcd <<EOF
ETCD_LISTEN_CLIENT_URLS=http://$ETCD_IP:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=$ETCD_URL
EOF
  systemctl restart etcd
fi
for _ in $(seq 150); do
  etcdctl --endpoints "$ETCD_URL" endpoint health >/dev/null 2>&1 && break
  sleep 2
done
etcdctl --endpoints "$ETCD_URL" endpoint health >/dev/null ||
  { echo "etcd at $ETCD_URL does not answer; provision node1 first" >&2; exit 1; }

# --- the package -----------------------------------------------------------------------------
# Built on the host with scripts/package and synced with the repository; installed with apt as
# an operator installs it (weftd and weftctl in /usr/bin, the plugin in /usr/lib/cni, the unit,
# /etc/default/weftd as a conffile).
deb=$(ls -t "$SRC"/target/debian/weft_*.deb 2>/dev/null | head -n1 || true)
[ -n "$deb" ] || { echo "provision: no package in $SRC/target/debian: run scripts/package on the host first" >&2; exit 1; }
apt-get install -y -qq "$deb"

# --- the network config, stored once ---------------------------------------------------------
if [ "$NODE" = 1 ]; then
  weftctl --etcd-endpoints "$ETCD_URL" config set /usr/share/doc/weft/examples/network.json
fi

# --- weftd as a systemd service, configured in /etc/default/weftd -------------------------------
# Sets KEY=VALUE in /etc/default/weftd, uncommenting the example line when there is one.
set_var() {
  if grep -q "^#\?$1=" /etc/default/weftd; then
    sed -i "s|^#\?$1=.*|$1=$2|" /etc/default/weftd
  else
    echo "$1=$2" >>/etc/default/weftd
  fi
}
set_var WEFTD_ETCD_ENDPOINTS "$ETCD_URL"
# eth0 is Vagrant's NAT interface; the overlay runs over the private network, picked by address.
set_var WEFTD_IFACE "$NODE_IP"
set_var WEFTD_IP_MASQ true
set_var WEFTD_HEALTHZ_PORT 8471
systemctl daemon-reload
systemctl enable weftd
# Type=notify: this returns once weftd holds its lease and has written subnet.env.
systemctl restart weftd

# --- the conflist, and podman using it ------------------------------------------------------
install -d /etc/cni/net.d
install -m 0644 /usr/share/doc/weft/examples/10-weft.conflist /etc/cni/net.d/10-weft.conflist
mkdir -p /etc/containers
cat >/etc/containers/containers.conf <<'EOF'
[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "/etc/cni/net.d"
EOF
# A tiny local image (busybox: sh, ip, ping, sleep), so no registry is needed.
if ! podman image exists localhost/weft-busybox; then
  root=$(mktemp -d)
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/"
  for a in sh ip ping sleep cat hostname; do ln -s busybox "$root/bin/$a"; done
  tar -C "$root" -cf "$root.tar" .
  podman import -q "$root.tar" localhost/weft-busybox >/dev/null
  rm -rf "$root" "$root.tar"
fi

echo "node$NODE: weftd $(systemctl is-active weftd), $(grep FLANNEL_SUBNET /run/flannel/subnet.env)"
