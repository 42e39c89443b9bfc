#!/usr/bin/env bash
# The main job: `warren dev examples/private-api` — an edge, a tunnel, a local
# connector, the VPC service and the JS worker in one process, calling the
# example's private inventory service (started here on 127.0.0.1:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --locked -q -p warren
node examples/private-api/inventory/server.mjs &
INVENTORY=$!
trap 'kill $INVENTORY 2>/dev/null || true' EXIT
echo "try: curl http://localhost:8787/   (Ctrl-C stops everything)"
./target/debug/warren dev examples/private-api
