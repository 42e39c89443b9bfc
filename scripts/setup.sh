#!/usr/bin/env bash
# Installs what building and testing Warren needs on a fresh Debian machine.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

# command -> Debian package
declare -A NEED=(
  [capnp]=capnproto          # Cap'n Proto compiler: protocol/build.rs generates code at build time
  [dnsmasq]=dnsmasq-base     # the private network's DNS server in the tests
  [etcd]=etcd-server         # the etcd store backend's tests run a real etcd
  [protoc]=protobuf-compiler # etcd-client's build script generates its gRPC code
  [ip]=iproute2              # network namespaces for the tests' private network
  [nft]=nftables             # warren/tests/udp_blocked.rs blocks UDP in a namespace
  [tinyproxy]=tinyproxy      # warren/tests/remote_api.rs: the CLI through a real HTTPS proxy
  [systemd-analyze]=systemd  # warren/tests/packaging.rs verifies the systemd units
  [musl-gcc]=musl-tools      # the static warren-connector: ring builds C for the musl target
  [buildah]=buildah          # scripts/package.sh image: the connector's OCI image, FROM scratch
  [podman]=podman            # warren/tests/packaging.rs runs that image …
  [runc]=runc                # … with runc (crun cannot use some machines' hybrid cgroups)
)
missing=()
for cmd in "${!NEED[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    missing+=("${NEED[$cmd]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The toolchain rust-toolchain.toml pins, before anything here runs cargo.
# When this machine's stable toolchain is that very release, it serves under
# the pinned name too (rustup's toolchain folder name), so nothing is fetched.
channel=$(sed -n 's/^channel *= *"\(.*\)"$/\1/p' rust-toolchain.toml)
if ! rustup toolchain list 2>/dev/null | grep -q "^$channel-"; then
  stable=$(rustc +stable --version 2>/dev/null | awk '{print $2}')
  if [ "$stable" = "$channel" ]; then
    host=$(rustc +stable -vV | sed -n 's/^host: //p')
    echo "setup: using the installed stable toolchain as $channel"
    ln -s "$(rustc +stable --print sysroot)" \
      "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$channel-$host"
  else
    echo "setup: installing the Rust toolchain $channel"
    rustup toolchain install "$channel" --profile minimal --component clippy,rustfmt
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$'; then
  echo "setup: adding the wasm32-wasip2 target (test workers are built for it)"
  rustup target add wasm32-wasip2
fi
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$'; then
  # Optional: a machine that reaches only package registries cannot fetch it,
  # and scripts/package.sh then links the static connector with glibc.
  echo "setup: adding the x86_64-unknown-linux-musl target (the static warren-connector)"
  timeout 180 rustup target add x86_64-unknown-linux-musl \
    || echo "setup: no musl target here; scripts/package.sh links the static connector with glibc"
fi
for comp in clippy rustfmt; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
    rustup component add "$comp"
  fi
done

# ComponentizeJS, pinned by runtime/js/package-lock.json: builds JS workers into components.
if [ ! -d runtime/js/node_modules/@bytecodealliance/componentize-js ] \
   || [ runtime/js/package-lock.json -nt runtime/js/node_modules/.package-lock.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "setup: npm ci in runtime/js"
  # npm 11 refuses `ci` when optional platform packages of other OSes are missing
  # from the lock; `install` still follows the lock's pinned versions.
  npm ci --prefix runtime/js --no-audit --no-fund \
    || npm install --prefix runtime/js --no-audit --no-fund --no-save
fi

# The wrangler project warren/tests/wrangler.rs deploys: its npm packages
# (hono), pinned by its package-lock.json.
if [ ! -d warren/tests/wrangler-project/node_modules/hono ] \
   || [ warren/tests/wrangler-project/package-lock.json -nt warren/tests/wrangler-project/node_modules/.package-lock.json ]; then
  echo "setup: npm ci in warren/tests/wrangler-project"
  npm ci --prefix warren/tests/wrangler-project --no-audit --no-fund
fi
