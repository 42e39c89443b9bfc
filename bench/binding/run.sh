#!/usr/bin/env bash
# bench/binding: a worker calling a private origin through its VPC binding
# (through the real tunnel and connector) vs the same worker.js on workerd with
# a plain service binding (requests/s, p50/p99, CPU time per request); a bulk
# download through the binding vs curl direct.
# Usage: bench/binding/run.sh [--processes N] [--bulk-only]   (BENCH_BYTES=N to change the 1 GiB download;
# --processes: the node's [runtime] processes, default one per core; --bulk-only skips
# the requests/s rounds)
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
bench/workerd/install.sh
cargo build --release --locked -p warren --bin warren -p warren-connector --bin warren-connector \
  -p warren-bench --bin bench-binding
exec target/release/bench-binding "$@"
