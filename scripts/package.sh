#!/usr/bin/env bash
# Packaging: a static warren-connector and an OCI image of it (docs/install.md).
#
#   scripts/package.sh connector [--debug] [--libc musl|glibc]
#       builds warren-connector statically linked (runs on any x86_64 Linux),
#       checks that it needs no dynamic loader or shared library, and copies it
#       to target/static/{release,debug}/warren-connector. With musl
#       (x86_64-unknown-linux-musl) when its Rust target is installed, which
#       is the default then; otherwise glibc linked statically
#       (x86_64-unknown-linux-gnu with crt-static), which needs only the
#       toolchain's own target and Debian's libc6-dev.
#   scripts/package.sh image [--debug] [--libc L] [--binary PATH] [--tag NAME] [--archive FILE]
#       builds that binary (unless --binary names one) and an OCI image FROM
#       scratch around it with buildah, offline: the binary (debug info stripped)
#       as /warren-connector, USER 65532:65532, ENTRYPOINT /warren-connector,
#       CMD run. --tag defaults to localhost/warren-connector:<version> (and
#       :latest); --archive also writes the image as an OCI archive file
#       (`podman load -i FILE`, `skopeo copy oci-archive:FILE docker://…`).
#   scripts/package.sh all
#       both, release build.
#
# scripts/setup.sh installs what this needs (musl-tools, buildah; it tries to
# add the musl target, which a machine that reaches only package registries
# cannot fetch). Where overlay mounts are not allowed, point CONTAINERS_STORAGE_CONF
# at a storage.conf with driver = "vfs" (and a graphroot of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

MUSL=x86_64-unknown-linux-musl
GNU=x86_64-unknown-linux-gnu
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

# The libc to link: $1 (musl, glibc) or, for auto, musl when its target
# and musl-gcc are installed, else glibc.
pick_libc() {
  case "$1" in
    musl | glibc) echo "$1" ;;
    auto)
      if command -v musl-gcc >/dev/null 2>&1 \
        && rustup target list --installed 2>/dev/null | grep -qx "$MUSL"; then
        echo musl
      else
        echo glibc
      fi
      ;;
    *) usage ;;
  esac
}

# Builds the static connector with libc $2; prints the path of its copy
# under target/static/.
build_connector() {
  local profile=$1 libc flags=(--locked -p warren-connector) target
  libc=$(pick_libc "$2")
  [ "$profile" = release ] && flags+=(--release)
  if [ "$libc" = musl ]; then
    target=$MUSL
    if ! command -v musl-gcc >/dev/null 2>&1; then
      echo "package: musl-gcc is missing (ring builds C for $target): run scripts/setup.sh" >&2
      exit 1
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
      echo "package: the $target target is missing (rustup target add $target), or use --libc glibc" >&2
      exit 1
    fi
    # (ring's build script compiles its C and assembly with musl-gcc.)
    cargo build "${flags[@]}" --target "$target" >&2
  else
    target=$GNU
    # An explicit --target keeps these flags off build scripts and out of
    # target/debug; glibc's static archives come with libc6-dev.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
      cargo build "${flags[@]}" --target "$target" >&2
  fi
  local bin out
  bin="$(target_dir)/$target/$profile/warren-connector"
  check_static "$bin"
  out="$(target_dir)/static/$profile/warren-connector"
  install -D -m 0755 "$bin" "$out"
  echo "package: static warren-connector ($libc) at $out" >&2
  echo "$out"
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
profile=release binary="" tag="" archive="" libc=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --libc) libc=${2:?--libc needs musl or glibc}; shift ;;
    --binary) binary=${2:?--binary needs a path}; shift ;;
    --tag) tag=${2:?--tag needs a name}; shift ;;
    --archive) archive=${2:?--archive needs a file}; shift ;;
    *) usage ;;
  esac
  shift
done

case "$cmd" in
  connector)
    build_connector "$profile" "$libc"
    ;;
  image)
    [ -n "$binary" ] || binary=$(build_connector "$profile" "$libc")
    build_image "$binary" "$tag" "$archive"
    ;;
  all)
    binary=$(build_connector "$profile" "$libc")
    echo "$binary"
    build_image "$binary" "$tag" "$archive"
    ;;
  *) usage ;;
esac
