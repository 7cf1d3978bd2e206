#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the tests use answer on 127.0.0.1 (5432 trust auth
# with a database `test`; 6379). Where they already run (as on the CI machines) this does
# nothing; on a bare Debian machine it installs and starts them, bound to loopback only.
# `services.sh redis` does Redis only (the demo's dispatch needs it; tickets do not).
set -euo pipefail
only=${1:-all}
export DEBIAN_FRONTEND=noninteractive

pg_up() { python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 5432)) == 0 else 1)
PY
}
redis_up() { python3 - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", 6379)); s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

if [ "$only" != redis ] && ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "services: installing PostgreSQL" >&2
    apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$version/main
  # tests connect over TCP on loopback without a password, as on the CI machines
  if ! grep -q "callrouter-tests" "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust # callrouter-tests\nhost all all ::1/128 trust # callrouter-tests' "$conf/pg_hba.conf"
  fi
  sed -i "s/^#\?listen_addresses.*/listen_addresses = 'localhost'/" "$conf/postgresql.conf"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  for _ in $(seq 50); do pg_up && break; sleep 0.2; done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='root'\" | grep -q 1 || psql -qc 'CREATE ROLE root SUPERUSER LOGIN'"
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='test'\" | grep -q 1 || psql -qc 'CREATE DATABASE test'"
fi

if ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    echo "services: installing Redis" >&2
    apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null
  fi
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/callrouter-tests.log
  for _ in $(seq 50); do redis_up && break; sleep 0.2; done
fi
if [ "$only" = redis ]; then redis_up; else pg_up && redis_up; fi
