#!/usr/bin/env bash
# Build the forwarder's and the example IOC's container images with buildah, without a
# Docker engine and without pulling anything from a container registry.
#
#   scripts/buildah-images.sh            # base image (once), then both images
#   scripts/buildah-images.sh base       # only the stand-in base image
#   scripts/buildah-images.sh --print-storage   # the buildah global options used
#
# Both Dockerfiles stay what Docker users build (`FROM python:3.11-slim`).  Here that public
# image cannot be pulled, so a stand-in is made once with debootstrap (Debian 12 "bookworm",
# whose python3 is 3.11, in a venv at /opt/python that is first on PATH, like the official
# image's /usr/local) and tagged `docker.io/library/python:3.11-slim` in a private buildah
# storage; the builds then run with `--pull=never`, so every FROM of both Dockerfiles
# resolves to it.  The storage lives outside the repository, under $FORWARDER_IMAGE_CACHE
# (default /var/cache/forwarder-image-test), so the base image
# survives between runs; it is rebuilt only when its recipe (build_base below, this
# machine's apt and pip configuration) changes.  The two images are rebuilt every time.
#
# Package sources are this machine's: debootstrap uses the Debian mirror of /etc/apt, whose
# sources and Acquire settings are also copied into the image for apt; pip inside the builds
# gets this machine's pip configuration files, PIP_* variables and CA bundle, and every
# local folder they name (find-links, file:// indexes) is bind-mounted read-only into the
# build at the same path.  Builds use chroot isolation and the host network (root only).
#
# Image names: $FORWARDER_IMAGE (default localhost/forwarder:buildah-test) and
# $FORWARDER_IOC_IMAGE (default localhost/forwarder-example-ioc:buildah-test).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${FORWARDER_IMAGE_CACHE:-/var/cache/forwarder-image-test}"
BASE_IMAGE="docker.io/library/python:3.11-slim"
SUITE="bookworm"  # Debian 12: python3 is 3.11, the Python of python:3.11-slim
FORWARDER_IMAGE="${FORWARDER_IMAGE:-localhost/forwarder:buildah-test}"
IOC_IMAGE="${FORWARDER_IOC_IMAGE:-localhost/forwarder-example-ioc:buildah-test}"
ROOT_HOME="${HOME:-/root}"  # root's home here; /root in the image
STORAGE=(--root "$CACHE/storage" --runroot "$CACHE/run")

bah() { buildah "${STORAGE[@]}" "$@"; }
log() { printf '== %s\n' "$*" >&2; }

# pip configuration files of this machine (site-wide and root's), copied into the base.
pip_config_files() {
  local f
  for f in /etc/pip.conf /etc/xdg/pip/* \
    "$ROOT_HOME/.config/pip/pip.conf" "$ROOT_HOME/.pip/pip.conf"; do
    [ -f "$f" ] && printf '%s\n' "$f"
  done
  return 0
}

# apt configuration that says where packages come from: sources and Acquire settings.
apt_config_files() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && printf '%s\n' "$f"
  done
  for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && grep -q '^[[:space:]]*Acquire' "$f" && printf '%s\n' "$f"
  done
  return 0
}

pip_env() { env | grep '^PIP_' | sort || true; }

# Everything the base image is made from (its recipe here, this machine's apt and pip
# configuration); its hash is stored as a label, so a change rebuilds the base.
recipe_hash() {
  {
    declare -f build_base
    echo "$BASE_IMAGE $SUITE"
    pip_env
    pip_config_files | while read -r f; do echo "$f"; cat "$f"; done
    apt_config_files | while read -r f; do echo "$f"; cat "$f"; done
  } | sha256sum | cut -c1-16
}

# The Debian mirror of this machine for $SUITE (from apt's own view of its sources).
debian_mirror() {
  apt-get indextargets --format '$(REPO_URI)' "Release: $SUITE" 'Identifier: Packages' \
    | head -n 1
}

build_base() {
  local recipe have ctr mnt mirror f start old_id dest
  recipe="$(recipe_hash)"
  have="$(bah inspect --type image --format '{{index .OCIv1.Config.Labels "forwarder.base-recipe"}}' \
    "$BASE_IMAGE" 2>/dev/null || true)"
  if [ "$have" = "$recipe" ]; then
    log "base image $BASE_IMAGE (recipe $recipe) is cached in $CACHE"
    return
  fi
  mirror="$(debian_mirror)"
  mirror="${mirror:-http://deb.debian.org/debian/}"
  log "building the stand-in base image $BASE_IMAGE with debootstrap from $mirror"
  start=$SECONDS
  ctr="$(bah from scratch)"
  mnt="$(bah mount "$ctr")"
  # shellcheck disable=SC2064  # expand $ctr now: remove this container if anything fails
  trap "$(printf '%q ' buildah "${STORAGE[@]}" rm "$ctr") >/dev/null 2>&1 || true" EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$mnt" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; return 1; }
  # apt in the image uses this machine's mirror configuration, not debootstrap's own line.
  rm -f "$mnt/etc/apt/sources.list"
  apt_config_files | while read -r f; do install -D -m 0644 "$f" "$mnt$f"; done
  # pip in the image uses this machine's index configuration and CA bundle.
  pip_config_files | while read -r f; do
    case "$f" in "$ROOT_HOME"/*) dest="/root/${f#"$ROOT_HOME"/}" ;; *) dest="$f" ;; esac
    install -D -m 0644 "$f" "$mnt$dest"
  done
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  # Python in a venv first on PATH: `python` and `pip` work (PEP 668 blocks a system pip).
  chroot "$mnt" /usr/bin/python3 -m venv /opt/python
  chroot "$mnt" /opt/python/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 11)'
  chroot "$mnt" apt-get clean
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/log/*.log
  local config=(--env PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --env LANG=C.UTF-8 --cmd python3 --label "forwarder.base-recipe=$recipe")
  while IFS= read -r line; do [ -n "$line" ] && config+=(--env "$line"); done < <(pip_env)
  bah config "${config[@]}" "$ctr"
  bah umount "$ctr" >/dev/null
  old_id="$(bah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE" 2>/dev/null || true)"
  bah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  trap - EXIT
  # The previous base, now untagged, goes unless cached layers of the builds still use it.
  [ -z "$old_id" ] || bah rmi "$old_id" >/dev/null 2>&1 || true
  log "base image built in $((SECONDS - start)) s"
}

# -v options: every existing local folder named by pip's configuration, read-only.
pip_mounts() {
  local pip
  pip="$(command -v pip || true)"
  [ -n "$pip" ] || { [ -x .venv/bin/pip ] && pip=.venv/bin/pip; }
  [ -n "$pip" ] || return 0
  "$pip" config list 2>/dev/null | grep -oE "(file://)?/[^ '\"]+" | sed 's|^file://||' \
    | while read -r path; do
      # A PEP 503 index folder (…/simple) links to files beside it: mount its parent.
      [ "$(basename "$path")" = simple ] && path="$(dirname "$path")"
      [ -d "$path" ] && printf '%s\n' "$path"
    done | sort -u | while read -r path; do printf -- '-v\n%s:%s:ro\n' "$path" "$path"; done
  return 0
}

# No layer cache: a build takes seconds, stale layers would pile up, and --force-rm (which
# needs --no-cache here) leaves no container behind when a step fails.
build_image() {  # tag, Dockerfile, context
  local start=$SECONDS mounts old_id
  mapfile -t mounts < <(pip_mounts)
  old_id="$(bah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true)"
  log "building $1 from $2"
  # --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
  bah build --quiet --isolation chroot --network host --pull=never --no-cache --force-rm \
    --format docker \
    "${mounts[@]}" -t "$1" -f "$2" "$3" >/dev/null
  [ -z "$old_id" ] || bah rmi "$old_id" >/dev/null 2>&1 || true
  log "$1 built in $((SECONDS - start)) s"
}

main() {
  [ "$(id -u)" = 0 ] || { echo "buildah with chroot isolation needs root" >&2; exit 1; }
  command -v buildah >/dev/null && command -v debootstrap >/dev/null \
    || { echo "needs buildah and debootstrap: apt-get install buildah debootstrap" >&2; exit 1; }
  mkdir -p "$CACHE"
  exec 9>"$CACHE/lock"
  flock 9  # one build at a time per cache
  case "${1:-all}" in
    --print-storage) printf '%s\n' "${STORAGE[@]}" ;;
    base) build_base ;;
    all)
      build_base
      build_image "$FORWARDER_IMAGE" Dockerfile .
      build_image "$IOC_IMAGE" examples/Dockerfile.ioc examples
      ;;
    *) echo "usage: $0 [all|base|--print-storage]" >&2; exit 2 ;;
  esac
}

main "$@"
