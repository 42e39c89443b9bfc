#!/usr/bin/env bash
# Packaging: a static warren-connector and an OCI image of it (docs/install.md).
#
#   scripts/package.sh connector [--debug]
#       builds warren-connector for x86_64-unknown-linux-musl (statically linked,
#       runs on any x86_64 Linux) and checks that it needs no dynamic loader:
#       target/x86_64-unknown-linux-musl/{release,debug}/warren-connector
#   scripts/package.sh image [--debug] [--binary PATH] [--tag NAME] [--archive FILE]
#       builds that binary (unless --binary names one) and an OCI image FROM
#       scratch around it with buildah, offline: the binary (debug info stripped)
#       as /warren-connector, USER 65532:65532, ENTRYPOINT /warren-connector,
#       CMD run. --tag defaults to localhost/warren-connector:<version> (and
#       :latest); --archive also writes the image as an OCI archive file
#       (`podman load -i FILE`, `skopeo copy oci-archive:FILE docker://…`).
#   scripts/package.sh all
#       both, release build.
#
# scripts/setup.sh installs what this needs (musl-tools, the musl target,
# buildah). Where overlay mounts are not allowed, point CONTAINERS_STORAGE_CONF
# at a storage.conf with driver = "vfs" (and a graphroot of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
work="" ctr=""  # the image build's scratch folder and working container
USER_ID=65532   # the conventional "nonroot" id of distroless images

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}

# The cargo target directory (CARGO_TARGET_DIR or ./target).
target_dir() {
  echo "${CARGO_TARGET_DIR:-$PWD/target}"
}

# Fails unless the ELF file $1 runs without a dynamic loader or shared library.
check_static() {
  local bin=$1
  if LC_ALL=C readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "package: $bin asks for a dynamic loader: not a static binary" >&2
    exit 1
  fi
  if LC_ALL=C readelf -dW "$bin" | grep -q '(NEEDED)'; then
    echo "package: $bin needs shared libraries:" >&2
    LC_ALL=C readelf -dW "$bin" | grep '(NEEDED)' >&2
    exit 1
  fi
}

# Builds the static connector; prints its path.
build_connector() {
  local profile=$1 flags=(--locked --target "$TARGET" -p warren-connector)
  [ "$profile" = release ] && flags+=(--release)
  if ! command -v musl-gcc >/dev/null 2>&1; then
    echo "package: musl-gcc is missing (ring builds C for $TARGET): run scripts/setup.sh" >&2
    exit 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "package: the $TARGET target is missing: run scripts/setup.sh" >&2
    exit 1
  fi
  # (ring's build script compiles its C and assembly with musl-gcc.)
  cargo build "${flags[@]}" >&2
  local bin
  bin="$(target_dir)/$TARGET/$profile/warren-connector"
  check_static "$bin"
  echo "$bin"
}

build_image() {
  local bin=$1 tag=$2 archive=$3
  if ! command -v buildah >/dev/null 2>&1; then
    echo "package: buildah is missing: run scripts/setup.sh" >&2
    exit 1
  fi
  check_static "$bin"
  local version
  version=$("$bin" --version | awk '{print $2}')
  local also_latest=""
  if [ -z "$tag" ]; then
    tag="localhost/warren-connector:$version"
    also_latest="localhost/warren-connector:latest"
  fi

  work=$(mktemp -d)
  trap 'rm -rf "$work"; [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  # Debug info is for a debugger, not for the image.
  strip --strip-debug -o "$work/warren-connector" "$bin"

  ctr=$(buildah from --pull=false scratch)
  buildah copy --quiet --chown 0:0 --chmod 0555 "$ctr" "$work/warren-connector" /warren-connector >/dev/null
  buildah config \
    --entrypoint '["/warren-connector"]' \
    --cmd '["run"]' \
    --user "$USER_ID:$USER_ID" \
    --workingdir / \
    --stop-signal SIGTERM \
    --label org.opencontainers.image.title=warren-connector \
    --label "org.opencontainers.image.description=Carries a Warren tunnel into a private network (dials out; never listens)" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.version=$version" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
  ctr=""
  [ -z "$also_latest" ] || buildah tag "$tag" "$also_latest"
  if [ -n "$archive" ]; then
    rm -f "$archive"
    buildah push --quiet "$tag" "oci-archive:$archive:${tag##*/}" >/dev/null
    echo "package: wrote $archive" >&2
  fi
  echo "package: image $tag ($(stat -c %s "$work/warren-connector") bytes of binary)" >&2
  echo "$tag"
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
profile=release binary="" tag="" archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --binary) binary=${2:?--binary needs a path}; shift ;;
    --tag) tag=${2:?--tag needs a name}; shift ;;
    --archive) archive=${2:?--archive needs a file}; shift ;;
    *) usage ;;
  esac
  shift
done

case "$cmd" in
  connector)
    build_connector "$profile"
    ;;
  image)
    [ -n "$binary" ] || binary=$(build_connector "$profile")
    build_image "$binary" "$tag" "$archive"
    ;;
  all)
    binary=$(build_connector "$profile")
    echo "$binary"
    build_image "$binary" "$tag" "$archive"
    ;;
  *) usage ;;
esac
