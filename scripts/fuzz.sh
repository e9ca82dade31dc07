#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds (default 60) on the stable toolchain.
# cargo-fuzz needs nightly-only sanitizer flags; RUSTC_BOOTSTRAP=1 lets stable accept them.
# A crash stops the run with the input saved under fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ so the replay tests keep it fixed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
cargo fuzz build -O
for t in $targets; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "fuzz: $t for ${seconds}s"
  log="artifacts/$t.log"; mkdir -p artifacts
  if ! cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" -max_len=8192 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED; the crashing input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "$log" || tail -n 2 "$log"
done
