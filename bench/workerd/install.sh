#!/usr/bin/env bash
# Installs the pinned workerd (the benchmarks' peer) from npm into bench/workerd.
set -euo pipefail
cd "$(dirname "$0")"
bin=node_modules/@cloudflare/workerd-linux-64/bin/workerd
if [ ! -x "$bin" ]; then
  echo "bench: installing workerd from npm (one time)"
  npm ci --no-audit --no-fund || npm install --no-audit --no-fund --no-save
fi
"$bin" --version
