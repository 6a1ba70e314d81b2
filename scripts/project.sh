# Sourced by the scripts here: moves to the project's root and sets $target to where cargo puts
# its builds. Cargo reads a relative CARGO_TARGET_DIR from where it runs, so it is made absolute
# first: it keeps meaning the directory the caller named.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR="$(realpath -m -- "$CARGO_TARGET_DIR")"
  export CARGO_TARGET_DIR
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-target}"
