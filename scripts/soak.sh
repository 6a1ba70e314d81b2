#!/usr/bin/env bash
# Soak test: builds zen-server in release mode and runs minutes of mixed load against it
# (examples/soak.rs), reporting its memory and open file descriptors.
#
#   scripts/soak.sh [--minutes N]     N minutes of load (default 10)
#   scripts/soak.sh --help            this text
#
# Binaries are built into ${CARGO_TARGET_DIR:-target}/release/.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
  esac
done

# Cargo reads a relative CARGO_TARGET_DIR from where it runs: keep it meaning the directory the
# caller named after the cd below.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR="$(realpath -m -- "$CARGO_TARGET_DIR")"
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bins --examples
exec "$target/release/examples/soak" --server "$target/release/zen-server" "$@"
