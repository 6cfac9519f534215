#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's Chromium for the browser test (tests/test_browser.py).
# Used by .ci/run; developers on Debian/Ubuntu can run it once too (as root, or with sudo).
set -euo pipefail
packages=()
command -v chromium >/dev/null || packages+=(chromium)
if ((${#packages[@]})); then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    echo "installing system packages: ${packages[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
chromium --version
