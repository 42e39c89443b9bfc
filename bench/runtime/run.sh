#!/usr/bin/env bash
# bench/runtime: requests/s, p99, and CPU time and page faults per request vs
# workerd for a hello-world and a CPU-heavy worker (same JS on both, same load
# generator, interleaved rounds), deploy →
# first response with cold and warm caches, memory of 100 different idle JS
# workers and of 1000 workers.
# Usage: bench/runtime/run.sh [--workers N] [--total N] [--load-only | --memory-only] [--processes N]
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
bench/workerd/install.sh
cargo build --release --locked -p warren --bin warren -p warren-bench --bin bench-runtime
exec target/release/bench-runtime "$@"
