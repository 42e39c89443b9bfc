#!/usr/bin/env bash
# bench/cluster: three warren serve nodes on one etcd, each its own data directory.
# Part 1: requests/s and p50/p99 through a worker's VPC binding on the node holding
# the tunnel vs a node relaying to it. Part 2: deploy through node A → first 200 of
# the new version on every node.
# etcd is Debian's etcd-server (/usr/bin/etcd, or $WARREN_ETCD), started by the bench.
# Usage: bench/cluster/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/setup.sh
cargo build --release --locked -p warren --bin warren -p warren-connector --bin warren-connector \
  -p warren-bench --bin bench-cluster
exec target/release/bench-cluster "$@"
