# Sourced by the scripts in this folder: what they share about running as root.
#
# The labs and tests make network namespaces, so they need root. On a server without sudo the
# operator is root already; a user with sudo gets the script run again through sudo, with the
# Rust toolchain (rustup keeps it per user) still on PATH.

# become_root SCRIPT ARGS...: returns when running as root, else re-runs SCRIPT under sudo.
become_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$1"): needs root (it makes network namespaces); run it as root" >&2
    exit 1
  fi
  # sudo resets the environment: the toolchain's variables, and a CARGO_TARGET_DIR the user
  # set, are passed on by hand so the build lands where the user looks for it.
  local target=()
  [ -z "${CARGO_TARGET_DIR:-}" ] || target=(CARGO_TARGET_DIR="$CARGO_TARGET_DIR")
  exec sudo env PATH="$PATH" \
    RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" \
    "${target[@]}" "$@"
}
