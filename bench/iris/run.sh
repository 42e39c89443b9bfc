#!/usr/bin/env bash
# bench/iris: requests/s and p50/p99 through pooled CONNECT tunnels vs straight
# to the origin, measured in one run. Usage: bench/iris/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
cargo build --release --locked -p warren-bench --bin bench-iris -p warren-connector --bin warren-connector
exec target/release/bench-iris --connector target/release/warren-connector "$@"
