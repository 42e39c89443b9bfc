#!/usr/bin/env bash
# bench/store: Warren's control plane on SQLite vs etcd. Part 1: the binding hot
# path (worker → VPC binding → tunnel → real connector → origin) on a node per
# store, interleaved load, ratio etcd/sqlite. Part 2: a deploy through node A
# until node B (same etcd) serves the new version.
# etcd is Debian's etcd-server (/usr/bin/etcd, or $WARREN_ETCD), started by the bench.
# Usage: bench/store/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
cargo build --release --locked -p warren --bin warren -p warren-connector --bin warren-connector \
  -p warren-bench --bin bench-store
exec target/release/bench-store "$@"
