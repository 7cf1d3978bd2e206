#!/usr/bin/env bash
# THE test command: sets up what the tests need on this machine and runs them all:
# unit (pure core), integration (real SQLite, PostgreSQL, Redis), end to end (a real
# Asterisk driven by SIPp). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
# the pages are tested in a real headless Chromium (Debian's, with its driver)
# (and a Chinese font, so the screenshots show the labels); gdb reads the backtrace of an
# Asterisk that crashed during a test out of its core; the container image is built and run
# with podman (rootful, runc: tests/e2e/test_container.py)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! fc-list :lang=zh | grep -q . \
   || ! command -v gdb >/dev/null || ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  echo "test: installing Debian's chromium, chromium-driver, a Chinese font, gdb, podman and runc" >&2
  pkgs=(chromium chromium-driver fonts-wqy-microhei gdb podman runc)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null; }
fi
mkdir -p artifacts
status=0
.venv/bin/python -m pytest -ra --junitxml=artifacts/junit.xml "$@" || status=$?
# leave no Asterisk running behind a test run (the demo starts its own)
.venv/bin/callrouter asterisk down >/dev/null 2>&1 || true
exit $status
