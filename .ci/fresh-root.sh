# Sourced by .ci/run: fresh Debian 12 roots for CI. A base image is made once with mmdebstrap
# and kept outside the checkout; each root is an overlay on it that lives for one run, so
# nothing installed on the CI machine (or by an earlier run) can make a run pass. The machine's
# Rust toolchain is lent to each root through overlays of ~/.cargo and ~/.rustup, as a new
# server has it after rustup; what a run installs there vanishes with the root.

CI_HOME=${WEFT_CI_HOME:-/var/tmp/weft-ci}
BASE=$CI_HOME/base-bookworm
RUNS=$CI_HOME/runs
HOST_CARGO=${CARGO_HOME:-$HOME/.cargo}
HOST_RUSTUP=${RUSTUP_HOME:-$HOME/.rustup}

# The base: Debian 12's "important" packages plus what a new server with Rust has (a C compiler
# for build scripts, git, curl, python3). Made when missing; a half-made one is never used.
ensure_base() {
  [ -e "$BASE.complete" ] && [ -d "$BASE" ] && return 0
  command -v mmdebstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap
  }
  rm -rf "$BASE.tmp" "$BASE.complete"
  mkdir -p "$CI_HOME"
  mmdebstrap --quiet --variant=important \
    --include=ca-certificates,gcc,libc6-dev,git,curl,python3 bookworm "$BASE.tmp"
  rm -rf "$BASE"
  mv "$BASE.tmp" "$BASE"
  touch "$BASE.complete"
}

root_dir() { echo "$RUNS/$1/root"; }

# root_up NAME SRC: a fresh root at $(root_dir NAME) with SRC (a git checkout) at /src, read-only.
root_up() {
  local run=$RUNS/$1 src=$2
  local root=$run/root
  mkdir -p "$run"/{upper,work,root,cargo-up,cargo-wk,rustup-up,rustup-wk}
  mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$run/upper,workdir=$run/work" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
  mount -t tmpfs tmpfs "$root/run"
  mount -t tmpfs tmpfs "$root/tmp"
  mkdir -p "$root/root/.cargo" "$root/root/.rustup" "$root/src"
  mount -t overlay overlay \
    -o "lowerdir=$HOST_CARGO,upperdir=$run/cargo-up,workdir=$run/cargo-wk" "$root/root/.cargo"
  mount -t overlay overlay \
    -o "lowerdir=$HOST_RUSTUP,upperdir=$run/rustup-up,workdir=$run/rustup-wk" "$root/root/.rustup"
  # A new machine has rustup's toolchain, not the cargo subcommands installed here later.
  rm -f "$root/root/.cargo/bin/cargo-deb"
  mount --bind "$src" "$root/src" && mount -o remount,bind,ro "$root/src"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # The machine's network may inspect TLS with authorities of its own; the root trusts what the
  # machine trusts (also after a package runs update-ca-certificates), so cargo reaches crates.io.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  fi
  # Packages installed in a chroot must not start services on the CI machine.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
}

# in_root NAME COMMAND: runs a bash command as root inside, with a new user's environment.
in_root() {
  chroot "$(root_dir "$1")" env -i HOME=/root TERM=dumb CI=true LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -c "$2"
}

# root_down NAME: stops every process still running inside, unmounts everything below the root
# (deepest first) and removes the run's directories.
root_down() {
  local run=$RUNS/$1 root p m
  root=$(root_dir "$1")
  [ -d "$run" ] || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  sleep 0.2
  awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if awk -v r="$root" '$2 == r || index($2, r "/") == 1' /proc/self/mounts | grep -q .; then
    echo "ci: mounts left below $root" >&2
    return 1
  fi
  rm -rf "$run"
}

# Leftovers of a run that was killed before its clean-up.
clean_stale_runs() {
  local d
  for d in "$RUNS"/*; do
    [ -d "$d" ] && root_down "$(basename "$d")"
  done
  return 0
}
