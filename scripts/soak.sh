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

source "$(dirname "$0")/project.sh"
# The binaries are built on their own, and last: built with the examples, they would get the
# features the examples' dev-dependencies ask for (tokio's test-util, the tests' paused clock).
cargo build --release --examples
cargo build --release --bins
exec "$target/release/examples/soak" --server "$target/release/zen-server" "$@"
