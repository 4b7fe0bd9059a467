#!/usr/bin/env bash
# Debian's buildah and debootstrap for the image build-and-run test
# (tests/integration/deployment/test_images.py, built by scripts/buildah-images.sh).  Needs root (CI
# runs as root); a no-op when both are installed.
set -euo pipefail
if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-image-tools: run 'apt-get install buildah debootstrap' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q -o DPkg::Lock::Timeout=600 buildah debootstrap
