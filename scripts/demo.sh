#!/usr/bin/env bash
# THE demo command: sets up everything, brings up a real Asterisk and the engine, places
# simulated calls over the legacy numbers, prints the per-line and per-category summary
# from the tickets, and stops. `--keep-running` leaves it all up. Other flags: see
# `callrouter demo --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/callrouter demo "$@"
