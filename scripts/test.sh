#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs the real peers the tests
# talk to (idempotently), checks formatting and lints, runs the unit, integration, doc and
# property tests, and gives each fuzz target a short run.
#   FUZZ_SECONDS=N   seconds per fuzz target (default 15; 0 skips the fuzz smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo nextest --version >/dev/null 2>&1 || cargo install -q --locked cargo-nextest

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy -q --workspace --all-targets --all-features -- -D warnings
echo "== doc tests"
cargo test -q --workspace --all-features --doc
echo "== tests"
cargo nextest run --workspace --all-features --no-fail-fast

fuzz_seconds=${FUZZ_SECONDS:-15}
if [ "$fuzz_seconds" -gt 0 ]; then
  echo "== fuzz smoke run (${fuzz_seconds}s per target)"
  bash scripts/fuzz.sh "$fuzz_seconds"
fi
