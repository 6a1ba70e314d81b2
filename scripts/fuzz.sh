#!/usr/bin/env bash
# Runs every libFuzzer target under fuzz/ (the question decoder, the PROXY header reader, the
# settings loader) for N minutes each, one after another, growing its corpus in fuzz/corpus/, and
# prints one line per target: executions, coverage, time.
#
#   scripts/fuzz.sh [--minutes N] [--runs N] [TARGET...]
#
# --minutes N  how long each target runs (default 1; fractions allowed, 0.5 is 30 s)
# --runs N     stop each target after N executions instead (whichever comes first with --minutes)
#
# cargo-fuzz drives libFuzzer through nightly-only compiler flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them. The targets run without a sanitizer: the crate forbids unsafe code but
# for one audited call (src/inherit.rs), and AddressSanitizer would cost two to three times the
# executions for faults safe Rust rules out. A failure leaves its input in fuzz/artifacts/TARGET/
# and makes this script exit 1.
set -euo pipefail
source "$(dirname "$0")/project.sh"

minutes=1 runs=-1 targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes|--runs)
      [ $# -ge 2 ] || { echo "fuzz.sh: $1 needs a value" >&2; exit 2; }
      if [ "$1" = --minutes ]; then minutes="$2"; else runs="$2"; fi
      shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
seconds="$(python3 -c "import sys; m = float(sys.argv[1]); assert m > 0; print(max(1, round(m * 60)))" "$minutes" 2>/dev/null)" \
  || { echo "fuzz.sh: --minutes $minutes is not a positive number" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2; exit 2; }
if [ ${#targets[@]} -eq 0 ]; then
  listed="$(RUSTC_BOOTSTRAP=1 cargo fuzz list)"
  mapfile -t targets <<<"$listed"
fi
if [ ${#targets[@]} -eq 0 ] || [ -z "${targets[0]}" ]; then
  echo "fuzz.sh: no fuzz target found (cargo fuzz list)" >&2
  exit 2
fi

failed=0
for target in "${targets[@]}"; do
  log="$(mktemp)"
  started=$(date +%s)
  status=0
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" -- \
    -max_total_time="$seconds" -runs="$runs" -print_final_stats=1 >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - started ))
  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)"
  coverage="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)"
  corpus="$(find "fuzz/corpus/$target" -type f 2>/dev/null | wc -l || true)"
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "$target: FAILED after ${elapsed}s; its log:" >&2
    tail -40 "$log" >&2
  else
    echo "$target: ${executions:-?} executions, coverage ${coverage:-?} edges, corpus $corpus inputs, ${elapsed}s (building included)"
  fi
  rm -f "$log"
done
exit "$failed"
