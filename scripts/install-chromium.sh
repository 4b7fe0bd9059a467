#!/usr/bin/env bash
# Debian's chromium for the operator web page's browser tests (tests/integration/app/test_e2e_web_ui.py,
# driven headless by Playwright with executable_path=/usr/bin/chromium; Playwright's own
# browser downloads are never used).  Needs root (CI runs as root); a no-op when installed.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-chromium: /usr/bin/chromium missing; run 'apt-get install chromium' as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium fonts-dejavu-core
