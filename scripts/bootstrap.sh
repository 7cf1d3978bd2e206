#!/usr/bin/env bash
# Set up everything callrouter needs on a Debian machine (run as root): Debian packages,
# the Python venv with callrouter installed. Idempotent: a second run installs nothing.
# The Asterisk chroot is built by `callrouter asterisk up` (called by the demo and tests).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(debootstrap sip-tester espeak-ng ca-certificates)
have_venv() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
have_venv || missing+=(python3-venv)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: need root to install Debian packages: ${missing[*]}" >&2
    exit 2
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi
# the prompts are tone-numbered pinyin spoken by this voice (espeak-ng-data; `-v cmn`
# reads Chinese characters as English letter names)
if ! espeak-ng --voices=cmn | grep -q ' cmn-latn-pinyin '; then
  echo "bootstrap: espeak-ng has no cmn-latn-pinyin voice (Debian's espeak-ng-data 1.51 has it): prompts cannot be spoken" >&2
  exit 2
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv" >&2
  python3 -m venv .venv
fi
stamp=.venv/.callrouter-installed
if [[ ! -f $stamp || setup.cfg -nt $stamp || pyproject.toml -nt $stamp ]]; then
  echo "bootstrap: installing callrouter and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
