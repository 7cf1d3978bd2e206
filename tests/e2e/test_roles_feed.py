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


def test_an_agent_feed_and_status_carry_its_seat_and_its_calls_only(engines: EngineFactory) -> None:
    engines.use_lines(wrap_up_s=1)
    engines.start()
    seats = start_seats(engines.settings, [SeatSpec(s, answer_delay_s=0.2, talk_s=2.0, talk_dist="fixed")
                                           for s in ("s110-01", "s110-02")])
    try:
        engines.login("s110-01", "s110-02")
        agent = _token(engines, "--role", "agent", "--seat", "s110-01")
        supervisor = _token(engines, "--role", "supervisor")
        callers = ["13970000001", "13970000002"]

        async def watch(token: str, done: asyncio.Event, ended: int) -> list[str]:
            raw: list[str] = []
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    f"{engines.settings.api_url}/api/events?token={token}") as ws:
                raw.append((await ws.receive(timeout=5)).data)
                started.set()
                while not done.is_set():
                    try:
                        raw.append((await ws.receive(timeout=0.5)).data)
                    except TimeoutError:
                        continue
                    if sum('"type": "call_ended"' in r for r in raw) >= ended:
                        done.set()
            return raw

        async def scenario() -> tuple[list[str], list[str]]:
            done = asyncio.Event()
            watchers = [asyncio.create_task(watch(agent, done, 99)), asyncio.create_task(watch(supervisor, done, 2))]
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(0.3)  # both connected
            report = await asyncio.to_thread(run_calls, engines.settings,
                                             [CallSpec("119", c, -1) for c in callers], 2)
            assert all(c.ok for c in report.calls), report
            await asyncio.wait_for(done.wait(), 30)
            agent_raw, supervisor_raw = await asyncio.gather(*watchers)
            return agent_raw, supervisor_raw

        started = asyncio.Event()
        agent_raw, supervisor_raw = asyncio.run(scenario())
    finally:
        seats.stop()
    sup = [json.loads(r) for r in supervisor_raw]
    connected = {m["data"]["seat"]: m["data"]["caller"] for m in sup if m["type"] == "call_connected"}
    assert set(connected) == {"s110-01", "s110-02"}, "each seat took one caller"
    assert set(sup[0]["data"]["seats"]) >= {"s110-01", "s110-02", "s96345-01"}
    mine, theirs = connected["s110-01"], connected["s110-02"]
    msgs = [json.loads(r) for r in agent_raw]
    assert msgs[0]["type"] == "status" and set(msgs[0]["data"]["seats"]) == {"s110-01"}, "its own seat only"
    assert any(m["type"] == "call_connected" and m["data"]["caller"] == mine for m in msgs)
    assert not any(theirs in r for r in agent_raw), "another seat's caller never reaches an agent"
    for m in msgs[1:]:
        data = m["data"]
        assert data.get("seat") in ("s110-01", None) or "s110-01" in (data.get("by_seat"), data.get("consult_seat")), m
        if m["type"] == "seat_state":
            assert data["seat"] == "s110-01", m
    # the same on GET /api/status
    status, body = _req(engines, "GET", "/api/status", agent)
    assert status == 200 and set(body["seats"]) == {"s110-01"} and "110" in body["lines"]
    status, body = _req(engines, "GET", "/api/status", supervisor)
    assert status == 200 and len(body["seats"]) > 2
