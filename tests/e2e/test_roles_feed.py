"""Roles on the API, the live event feed and the metrics, against a running engine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import aiohttp

from callrouter.sim.seats import SeatSpec, start_seats
from callrouter.sim.trunk import CallSpec, run_calls
from tests.e2e.conftest import EngineFactory


def _token(engines: EngineFactory, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "callrouter.cli", "tokens", "create", *args],
                         env={**os.environ, **engines.env}, capture_output=True, text=True, check=False, timeout=30)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["token"])


def _req(engines: EngineFactory, method: str, path: str, token: str, body: dict[str, Any] | None = None
         ) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{engines.settings.api_url}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_roles_limit_what_a_token_may_do(engines: EngineFactory) -> None:
    engines.start()
    agent = _token(engines, "--role", "agent", "--seat", "s110-02")
    supervisor = _token(engines, "--role", "supervisor")
    assert _req(engines, "POST", "/api/seats/s110-02/login", agent)[0] == 200
    status, body = _req(engines, "POST", "/api/seats/s110-03/login", agent)
    assert status == 403 and body["error"] == "forbidden"
    assert _req(engines, "POST", "/api/lines/110/seats", agent, {"seat": "ovf-01"})[0] == 403
    assert _req(engines, "POST", "/api/lines/110/seats", supervisor, {"seat": "ovf-01"})[0] == 200
    assert _req(engines, "POST", "/api/seats/s110-03/login", supervisor)[0] == 200
    assert _req(engines, "POST", "/api/plan/reload", supervisor)[0] == 403
    assert _req(engines, "POST", "/api/plan/reload", engines.settings.secret("api_token"))[0] == 200
    assert _req(engines, "GET", "/api/status", agent)[0] == 200
    status, body = _req(engines, "GET", "/api/status", "not-a-token")
    assert status == 401


def test_feed_and_metrics_follow_a_real_call(engines: EngineFactory) -> None:
    engines.use_lines(wrap_up_s=1)
    engines.start()
    seats = start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=1.0, talk_dist="fixed")])
    try:
        engines.login("s110-01")
        token = _token(engines, "--role", "supervisor")

        async def watch() -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"{engines.settings.api_url}/api/events?token={token}") as ws:
                first = json.loads((await ws.receive(timeout=5)).data)
                assert first["type"] == "status" and "110" in first["data"]["lines"]
                call = asyncio.create_task(asyncio.to_thread(
                    run_calls, engines.settings, [CallSpec("119", "13990000001", -1)], 1))
                while not any(m["type"] == "call_ended" for m in seen):
                    seen.append(json.loads((await ws.receive(timeout=20)).data))
                report = await call
                assert report.calls[0].ok
            return seen

        kinds = [m["type"] for m in asyncio.run(watch())]
        for kind in ("call_arrived", "call_connected", "seat_state", "call_ended"):
            assert kind in kinds, kinds
        assert kinds.index("call_arrived") < kinds.index("call_connected") < kinds.index("call_ended")
        status, text = _req(engines, "GET", "/metrics", token)
        assert status == 200
        lines = text.decode().splitlines()
        assert 'callrouter_calls_total{line="110",outcome="completed"} 1' in lines
        assert 'callrouter_wait_seconds_count 1' in lines
        assert any(line.startswith('callrouter_seats{line="110",state="') for line in lines)
        assert any(line.startswith("callrouter_outbox_lag_seconds ") for line in lines)
    finally:
        seats.stop()
