"""The engine's control API against a running engine: auth, bad input, reloads."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request

from tests.e2e.conftest import EngineFactory


def _raw(engines: EngineFactory, method: str, path: str, data: bytes | None, token: str | None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{engines.settings.api_url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_needs_a_token(engines: EngineFactory) -> None:
    engines.start()
    assert _raw(engines, "GET", "/api/status", None, None)[0] == 401
    status, body = _raw(engines, "GET", "/api/status", None, "not-the-token")
    assert status == 401 and body["error"] == "unauthorized"  # type: ignore[index]


def test_bad_requests_get_4xx_with_a_reason(engines: EngineFactory) -> None:
    engines.start()
    status, body = engines.api("POST", "/api/seats/s999-99/login")
    assert status == 404 and body["error"] == "unknownseat" and "s999-99" in body["details"]  # type: ignore[index]
    status, body = engines.api("POST", "/api/seats/s110-01/dance")
    assert status == 400 and body["error"] == "unknown_action"  # type: ignore[index]
    status, body = _raw(engines, "POST", "/api/lines/110/seats", b"{not json", engines.settings.secret("api_token"))
    assert status == 400 and "JSON" in body["details"]  # type: ignore[index]
    status, body = engines.api("POST", "/api/lines/110/seats", {})
    assert status == 400 and body["error"] == "missing_seat"  # type: ignore[index]
    status, body = engines.api("POST", "/api/lines/999/seats", {"seat": "ovf-01"})
    assert status == 404 and body["error"] == "unknownline"  # type: ignore[index]


def test_seat_control_and_runtime_seats(engines: EngineFactory) -> None:
    engines.start()
    status, body = engines.api("POST", "/api/seats/s110-03/login")
    assert status == 200 and body["state"] == "ready"  # type: ignore[index]
    status, body = engines.api("POST", "/api/seats/s110-03/pause", {"reason": "lunch"})
    assert status == 200 and body["state"] == "paused" and body["reason"] == "lunch"  # type: ignore[index]
    status, body = engines.api("POST", "/api/lines/110/seats", {"seat": "ovf-05"})
    assert status == 200 and "ovf-05" in body["seats"]  # type: ignore[index,operator]
    status, body = engines.api("DELETE", "/api/lines/110/seats/ovf-05")
    assert status == 200 and "ovf-05" not in body["seats"]  # type: ignore[index,operator]
    assert engines.status()["seats"]["s110-03"]["state"] == "paused"


def test_reloads_validate_first(engines: EngineFactory) -> None:
    plan = engines.tmp / "numberplan.csv"
    shutil.copy(engines.settings.numberplan_path, plan)
    engines.env["CALLROUTER_NUMBERPLAN"] = str(plan)
    engines.start()
    good = plan.read_text()
    plan.write_text(good + "119,110,fire,县消防救援大队,1,火警,no\n")  # a duplicate
    status, body = engines.api("POST", "/api/plan/reload")
    assert status == 400 and body["error"] == "invalid_plan"  # type: ignore[index]
    assert f"{plan}:" in body["details"] and "duplicate number 119" in body["details"]  # type: ignore[index]
    plan.write_text(good)
    status, body = engines.api("POST", "/api/plan/reload")
    assert status == 200 and body["entries"] >= 100  # type: ignore[index,operator]
    status, body = engines.api("POST", "/api/lines/reload")
    assert status == 200 and body["lines"] == ["110", "96345"]  # type: ignore[index]


def test_tickets_plan_and_openapi_endpoints(engines: EngineFactory) -> None:
    from callrouter.sim.trunk import CallSpec, run_calls

    engines.start()
    report = run_calls(engines.settings, [CallSpec("119", "13940000001", 1.0), CallSpec("12345", "13940000002", 1.0)],
                       rate=5)
    assert all(c.ok for c in report.calls)
    import time

    deadline = time.monotonic() + 15
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        status, body = engines.api("GET", "/api/tickets?line=110")
        assert status == 200
        rows = body  # type: ignore[assignment]
        if rows and rows[0]["ended_at"]:
            break
        time.sleep(0.2)
    assert [r["caller"] for r in rows] == ["13940000001"]
    status, body = engines.api("GET", "/api/tickets?number=%2B86%20119&caller=13940000001")
    assert status == 200 and len(body) == 1  # type: ignore[arg-type]
    status, one = engines.api("GET", f"/api/tickets/{rows[0]['id']}")
    assert status == 200 and one["category"] == "fire"  # type: ignore[index]
    assert engines.api("GET", "/api/tickets/T-nope")[0] == 404
    status, body = engines.api("GET", "/api/tickets?since=yesterday")
    assert status == 400 and body["error"] == "bad_query"  # type: ignore[index]
    assert engines.api("GET", "/api/tickets?limit=0")[0] == 400
    status, plan = engines.api("GET", "/api/plan")
    assert status == 200 and any(e["number"] == "96345" for e in plan)  # type: ignore[union-attr]
    status, doc = engines.api("GET", "/api/openapi.json")
    assert status == 200 and "/api/calls/{call}/transfer" in doc["paths"]  # type: ignore[index]


def test_notes_on_a_ticket(engines: EngineFactory) -> None:
    import time

    from callrouter.sim.trunk import CallSpec, run_calls

    engines.start()
    assert all(c.ok for c in run_calls(engines.settings, [CallSpec("95598", "13940000003", 1.0)], rate=1).calls)
    deadline = time.monotonic() + 15
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        rows = engines.api("GET", "/api/tickets?caller=13940000003")[1]  # type: ignore[assignment]
        time.sleep(0.2)
    ticket = rows[0]["id"]
    status, body = engines.api("POST", f"/api/tickets/{ticket}/notes", {"text": "停电，已派抢修"})
    assert status == 200, body
    status, body = engines.api("POST", f"/api/tickets/{ticket}/notes", {"text": "  "})
    assert status == 400 and body["error"] == "bad_note"  # type: ignore[index]
    assert engines.api("POST", "/api/tickets/T-nope/notes", {"text": "x"})[0] == 404
    deadline = time.monotonic() + 10
    notes: list[dict[str, object]] = []
    while time.monotonic() < deadline and not notes:
        notes = engines.api("GET", f"/api/tickets/{ticket}")[1]["notes"]  # type: ignore[index]
        time.sleep(0.2)
    assert [n["text"] for n in notes] == ["停电，已派抢修"]


def test_me_hangup_and_ticket_reclassify(engines: EngineFactory) -> None:
    import threading
    import time

    from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls

    engines.start()
    status, me = engines.api("GET", "/api/me")
    assert status == 200 and me["role"] == "admin"  # type: ignore[index]
    out: list[TrunkReport] = []
    thread = threading.Thread(target=lambda: out.append(run_calls(
        engines.settings, [CallSpec("12345", "13940000004", -1)], rate=1)))
    thread.start()
    deadline = time.monotonic() + 10
    calls: list[dict[str, object]] = []
    while time.monotonic() < deadline and not calls:
        calls = engines.api("GET", "/api/calls")[1]  # type: ignore[assignment]
        time.sleep(0.1)
    assert calls, "the caller is a live call"
    status, body = engines.api("DELETE", f"/api/calls/{calls[0]['call_id']}")
    assert status == 200 and body["hung_up"] is True  # type: ignore[index]
    thread.join(timeout=20)
    assert out and out[0].calls[0].outcome == "completed_by_far_end", "the engine hung the caller up"
    assert engines.api("DELETE", "/api/calls/nope")[0] == 404
    ticket = str(calls[0]["ticket"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and engines.api("GET", f"/api/tickets/{ticket}")[0] != 200:
        time.sleep(0.2)
    assert engines.api("POST", f"/api/tickets/{ticket}/reclassify", {"category": "Bad Slug"})[0] == 400
    status, body = engines.api("POST", f"/api/tickets/{ticket}/reclassify", {"category": "policy_enquiry"})
    assert status == 200, body
    deadline = time.monotonic() + 10
    category = ""
    while time.monotonic() < deadline and category != "policy_enquiry":
        category = engines.api("GET", f"/api/tickets/{ticket}")[1]["category"]  # type: ignore[index]
        time.sleep(0.2)
    assert category == "policy_enquiry"


def test_remaining_failure_cases(engines: EngineFactory) -> None:
    lines = engines.use_lines(wrap_up_s=1)
    engines.start()
    good = lines.read_text()
    lines.write_text(good.replace("ring_timeout_s = 1", "ring_timeout_s = -1", 1).replace(
        "wrap_up_s = 1", "wrap_up_s = soon", 1))
    status, body = engines.api("POST", "/api/lines/reload")
    assert status == 400 and body["error"] == "invalid_lines" and f"{lines}:" in body["details"]  # type: ignore[index]
    # valid on its own, but it drops a line while the engine runs: the core refuses, 409
    without_96345 = good[:good.index("[line.96345]")] + good[good.index("[[overflow.seat]]"):]
    lines.write_text(re.sub(r"lines = \[[^\]]*\]", 'lines = ["110"]', without_96345))
    status, body = engines.api("POST", "/api/lines/reload")
    assert status == 409 and body["error"] == "refused" and "96345" in body["details"]  # type: ignore[index]
    assert "96345" in engines.status()["lines"]
    lines.write_text(good)
    assert engines.api("POST", "/api/lines/reload")[0] == 200
    status, body = engines.api("DELETE", "/api/lines/110/seats/s999-99")
    assert status == 404 and body["error"] == "unknownseat"  # type: ignore[index]
    status, body = engines.api("POST", "/api/calls/nope/consult", {"line": "96345"})
    assert status == 404 and body["error"] == "unknown_call"  # type: ignore[index]
    status, body = engines.api("POST", "/api/calls/nope/consult", {})
    assert status == 400 and body["error"] == "missing_line"  # type: ignore[index]
    status, body = engines.api("POST", "/api/calls/nope/reclassify", {"category": "x_y"})
    assert status == 404  # type: ignore[index]


def _headers(engines: EngineFactory, path: str, token: str | None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"{engines.settings.api_url}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_every_response_carries_the_security_headers(engines: EngineFactory) -> None:
    engines.start()
    token = engines.settings.secret("api_token")
    for path, token_or_none, code in [("/wallboard", None, 200), ("/agent", None, 200), ("/static/agent.js", None, 200),
                                      ("/api/status", token, 200), ("/api/status", None, 401),
                                      ("/api/tickets/T-nope", token, 404)]:
        status, headers = _headers(engines, path, token_or_none)
        assert status == code, path
        csp = headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and f"ws://{engines.settings.api_bind}" in csp, path
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        assert headers.get("Referrer-Policy") == "no-referrer", path


def test_malformed_tokens_get_401_never_500(engines: EngineFactory) -> None:
    engines.start()
    for query in ("?token=%C3%A9", "?token=%00", "?token=" + "a" * 5000):
        status, body = _raw(engines, "GET", "/api/me" + query, None, None)
        assert status == 401 and body["error"] == "unauthorized", query  # type: ignore[index]
    # a token in the query is for the event feed only: elsewhere it does not authenticate
    status, _ = _raw(engines, "GET", "/api/me?token=" + engines.settings.secret("api_token"), None, None)
    assert status == 401
    for header in ("Bearer é", "Bearer \t", "Basic abc", "Bearer " + "x" * 300):
        req = urllib.request.Request(f"{engines.settings.api_url}/api/me", headers={"Authorization": header})
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError(f"{header!r} was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401, header
        except UnicodeEncodeError:
            pass  # urllib refuses to send it at all


def test_refusals_are_4xx_with_the_reason(engines: EngineFactory) -> None:
    engines.start()
    # the core refuses to remove a line's own seat: 409 with its reason, and nothing changed
    status, body = engines.api("DELETE", "/api/lines/110/seats/s110-01")
    assert status == 409 and body["error"] == "refused" and "own seats" in body["details"]  # type: ignore[index]
    assert "s110-01" in engines.status()["seats"]
    # runtime seats follow the naming rule: never a dial string, never the trunk
    for seat, endpoint in [("ovf-x", "trunk/sip:+8613900000000@192.0.2.1"), ("ovf-x", "trunk"),
                           ("a/b", None), ("a@b", None), ("", None), ("x" * 70, None), ("ovf-x", 12)]:
        status, body = engines.api("POST", "/api/lines/110/seats", {"seat": seat, "endpoint": endpoint})
        assert status == 400, (seat, endpoint, body)
        assert body["error"] in ("bad_seat", "bad_endpoint", "missing_seat"), body  # type: ignore[index]
    assert not any(s.startswith("ovf-x") for s in engines.status()["seats"])
    status, body = engines.api("POST", "/api/lines/110/seats", {"seat": "temp-1", "endpoint": "ovf-02"})
    assert status == 200 and "temp-1" in body["seats"]  # type: ignore[index,operator]
    # bad query values: 400 with the reason, never a database error
    for query in ("since=yesterday", "until=2026-11-29T08:00:00", "caller=%00", "limit=abc", "limit=99999"):
        status, body = engines.api("GET", "/api/tickets?" + query)
        assert status == 400 and body["error"] == "bad_query", query  # type: ignore[index]
    assert engines.api("GET", "/api/today?since=nope")[0] == 400
    assert engines.api("GET", "/api/tickets/T%00x")[0] == 404
