#!/usr/bin/env bash
# The test command: installs what it needs, then checks formatting and lints,
# builds the fuzz targets, and runs every test (unit, component, end to end).
# The end-to-end tests create network namespaces, so this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -E env "PATH=$PATH" "$0" "$@"
  fi
  echo "scripts/test.sh: the end-to-end tests need root (network namespaces)" >&2
  exit 1
fi

./scripts/setup.sh

# A run from a clean checkout gains nothing from incremental state, which
# would roughly double the size of target/.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== fuzz targets build"
cargo check --locked --manifest-path protocol/fuzz/Cargo.toml --bins
echo "== static warren-connector (musl, else glibc; warren/tests/packaging.rs runs it and its image)"
./scripts/package.sh connector --debug
echo "== tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
