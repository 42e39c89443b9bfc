#!/usr/bin/env bash
# bench/tunnel: bulk download and upload throughput and short-stream rate through the Warren tunnel,
# against direct loopback TCP and rathole (TCP and Noise transports), in one run.
# Usage: bench/tunnel/run.sh            (BENCH_BYTES=N to change the 1 GiB transfer)
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
WORK=bench/.work
mkdir -p "$WORK"
if [ ! -x "$WORK/bin/rathole" ]; then
  echo "bench: installing rathole 0.5 from crates.io (one time)"
  # Not --locked: rathole 0.5's lockfile pins a `time` that newer compilers reject.
  cargo install --root "$WORK" rathole --version '^0.5' --no-default-features --features server,client,noise
fi
cargo build --release --locked -p warren-bench --bin bench-tunnel -p warren-connector --bin warren-connector
exec target/release/bench-tunnel --rathole "$WORK/bin/rathole" --connector target/release/warren-connector "$@"
