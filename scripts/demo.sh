#!/usr/bin/env bash
# The main job, for now: a tunnel demo you can watch work (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo run --locked -q -p warren -- demo
