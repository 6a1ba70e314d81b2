#!/usr/bin/env bash
# Soak test: builds zen-server in release mode and runs minutes of mixed load against it,
# reporting its memory and open file descriptors.
#   scripts/soak.sh [--minutes N]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples
exec target/release/examples/soak --server target/release/zen-server "$@"
