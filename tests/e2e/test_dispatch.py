"""Tickets reach dispatch: abandoned 110 callers are flagged for a call back, and every
ticket change of a real call arrives on the Redis stream, readable by a consumer group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import redis

from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import EngineFactory


def _cli(engines: EngineFactory, *args: str) -> Any:
    env = {**os.environ, **engines.env}
    out = subprocess.run([sys.executable, "-m", "callrouter.cli", *args], env=env, capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_abandoned_110_caller_gets_a_callback_and_events_reach_the_stream(engines: EngineFactory) -> None:
    client = redis.Redis.from_url(engines.settings.redis_url, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing_part(f"Redis at {engines.settings.redis_url}: {exc}")
    engines.start()
    # nobody logged in: both callers give up after 2 s
    report = run_calls(engines.settings, [CallSpec("110", "13910000001", 2.0), CallSpec("12345", "13910000002", 2.0)],
                       rate=5)
    assert all(c.ok for c in report.calls)
    callbacks = wait_for(lambda: json.loads(_cli(engines, "tickets", "callbacks", "--json")), 20,
                         "the callback list")
    assert [c["caller"] for c in callbacks] == ["13910000001"], "only the abandoned 110 caller is called back"
    ticket_id = callbacks[0]["id"]
    stream = engines.env["CALLROUTER_REDIS_PREFIX"] + ":tickets"

    def kinds() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for _, fields in client.xrange(stream):
            found.setdefault(fields["ticket_id"], []).append(fields["kind"])
        return found

    events = wait_for(lambda: (k := kinds()) and len(k) == 2 and "callback_requested" in k.get(ticket_id, []) and k,
                      20, "both tickets' events on the stream")
    assert events[ticket_id][0] == "opened" and "abandoned" in events[ticket_id]
    other = next(t for t in events if t != ticket_id)
    assert "callback_requested" not in events[other] and "abandoned" in events[other]
    # a department's consumer group reads each event once and acknowledges it
    total = sum(len(v) for v in events.values())
    out = _cli(engines, "tickets", "consume", "--group", "dispatch-test", "--max-events", str(total))
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(lines) == total and len({e["event_id"] for e in lines}) == total
    assert client.xpending(stream, "dispatch-test")["pending"] == 0, "every event acknowledged"
    _cli(engines, "tickets", "callback-done", ticket_id, "--seat", "s110-01", "--outcome", "reached")
    assert json.loads(_cli(engines, "tickets", "callbacks", "--json")) == []
    client.delete(stream)
    client.close()
