#!/usr/bin/env bash
# THE test command: sets up what the tests need on this machine and runs them all:
# unit (pure core), integration (real SQLite, PostgreSQL, Redis), end to end (a real
# Asterisk driven by SIPp). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
mkdir -p artifacts
status=0
.venv/bin/python -m pytest -ra --junitxml=artifacts/junit.xml "$@" || status=$?
# leave no Asterisk running behind a test run (the demo starts its own)
.venv/bin/callrouter asterisk down >/dev/null 2>&1 || true
exit $status
