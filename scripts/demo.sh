#!/usr/bin/env bash
# THE demo command: sets up everything, brings up a real Asterisk and the engine, places
# simulated calls over the legacy numbers, prints the per-line and per-category summary
# from the tickets, and stops. `--keep-running` leaves it all up. Other flags: see
# `callrouter demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# the demo's dispatch reads the tickets stream in Redis: start a loopback Redis when the
# default one is wanted and missing (the calls run without it; the summary then says so)
if [ -z "${CALLROUTER_REDIS_URL:-}" ]; then
  bash scripts/services.sh redis || echo "demo: no Redis on 127.0.0.1:6379; dispatch will be skipped" >&2
fi
exec .venv/bin/callrouter demo "$@"
