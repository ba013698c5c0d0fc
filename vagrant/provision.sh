#!/usr/bin/env bash
# Provisions one machine the way an operator installs weft on a real host: etcd (node 1 only,
# Debian's etcd-server as a systemd service), weft's Debian package installed with apt, the
# network config stored once, /etc/default/weftd set, `systemctl enable --now weftd`, and the
# example conflist. The Vagrant lab and the systemd machine lab (scripts/machines) both run
# this script, so what CI tests is what Vagrant users get. Safe to run again.
#
# usage: provision.sh NODE_NUMBER NODE_IP ETCD_IP [PACKAGE.deb]
#   PACKAGE.deb defaults to the newest /weft/target/debian/weft_*.deb (Vagrant's synced tree).
#   WEFT_PODMAN=1 also sets podman up to use the plugin, with a local busybox image.
set -euo pipefail

NODE=$1
NODE_IP=$2
ETCD_IP=$3
DEB=${4:-$(ls -t /weft/target/debian/weft_*.deb 2>/dev/null | head -n1 || true)}
ETCD_URL=http://$ETCD_IP:2379
export DEBIAN_FRONTEND=noninteractive

# --- system packages: installed only when missing (the machine lab's image has them all) -----
packages=(etcd-client iproute2 nftables iputils-ping containernetworking-plugins)
[ "$NODE" = 1 ] && packages+=(etcd-server)
[ "${WEFT_PODMAN:-0}" = 1 ] && packages+=(podman runc busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- etcd on node 1, listening on the private network; no etcd anywhere else ------------------
if [ "$NODE" = 1 ]; then
  cat >/etc/default/etcd <<EOF
ETCD_NAME=node1
ETCD_LISTEN_CLIENT_URLS=http://$ETCD_IP:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=$ETCD_URL
EOF
  systemctl enable etcd >/dev/null 2>&1
  systemctl restart etcd
elif systemctl list-unit-files etcd.service >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
for _ in $(seq 150); do
  etcdctl --endpoints "$ETCD_URL" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
etcdctl --endpoints "$ETCD_URL" endpoint health >/dev/null ||
  { echo "provision: etcd at $ETCD_URL does not answer; provision node1 first" >&2; exit 1; }

# --- the package: weftd and weftctl in /usr/bin, the plugin in /usr/lib/cni, the unit ----------
[ -n "$DEB" ] && [ -f "$DEB" ] ||
  { echo "provision: no weft package (build one with scripts/package)" >&2; exit 1; }
apt-get install -y -qq "$DEB" >/dev/null

# --- the network config, stored once ---------------------------------------------------------
if [ "$NODE" = 1 ]; then
  weftctl --etcd-endpoints "$ETCD_URL" config set /usr/share/doc/weft/examples/network.json
fi

# --- weftd as a systemd service, configured in /etc/default/weftd ----------------------------
# Sets KEY=VALUE in /etc/default/weftd, uncommenting the example line when there is one.
set_var() {
  if grep -q "^#\?$1=" /etc/default/weftd; then
    sed -i "s|^#\?$1=.*|$1=$2|" /etc/default/weftd
  else
    echo "$1=$2" >>/etc/default/weftd
  fi
}
set_var WEFTD_ETCD_ENDPOINTS "$ETCD_URL"
# The overlay runs over the private network, picked by address (Vagrant's eth0 is its NAT).
set_var WEFTD_IFACE "$NODE_IP"
set_var WEFTD_IP_MASQ true
set_var WEFTD_HEALTHZ_PORT 8471
# Type=notify: this returns once weftd holds its lease and has written subnet.env. Provisioning
# again restarts it to read the file anew (a restart never touches the datapath).
if systemctl is-active --quiet weftd; then
  systemctl restart weftd
else
  systemctl enable --now weftd
fi

# --- the conflist --------------------------------------------------------------------------
install -d /etc/cni/net.d
install -m 0644 /usr/share/doc/weft/examples/10-weft.conflist /etc/cni/net.d/10-weft.conflist

# --- podman using it (Vagrant) --------------------------------------------------------------
if [ "${WEFT_PODMAN:-0}" = 1 ]; then
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
fi

echo "node$NODE: weftd $(systemctl is-active weftd), $(grep FLANNEL_SUBNET /run/flannel/subnet.env)"
