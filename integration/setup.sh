#!/usr/bin/env bash
# Installs what qcdp needs on a Debian 12 machine, only what is missing.
# Run as root (or with sudo available). Safe to run again.
set -euo pipefail

pkgs=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libnbd-dev libnbd-bin nbdkit cpio python3-libnbd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
  for g in /usr/local/go/bin /usr/lib/go-1.25/bin; do [ -x "$g/go" ] && export PATH="$g:$PATH"; done
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go 1.25 or newer is needed (https://go.dev/dl, or Debian's a Go 1.25 toolchain)" >&2; exit 1; }
echo "setup: ok ($(go version | cut -d' ' -f3), $(qemu-system-x86_64 --version | head -1))"
