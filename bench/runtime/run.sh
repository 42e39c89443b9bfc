#!/usr/bin/env bash
# bench/runtime: hello-world requests/s and p99 vs workerd (same worker.js, same
# load generator, interleaved rounds), deploy → first response with cold and
# warm caches, RSS of 100 idle JS workers.
# Usage: bench/runtime/run.sh [--workers N]
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
bench/workerd/install.sh
cargo build --release --locked -p warren --bin warren -p warren-bench --bin bench-runtime
exec target/release/bench-runtime "$@"
