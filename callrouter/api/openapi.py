"""The API's OpenAPI 3.1 document, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "error: {status, error (stable id), details}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _op(summary: str, role: str, body: dict[str, Any] | None = None, params: list[str] | None = None,
        ok: str = "ok") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "description": f"Role: {role}.",
                          "responses": {"200": {"description": ok}, "400": _ERR, "401": _ERR, "403": _ERR,
                                        "404": _ERR}}
    if body is not None:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object", "properties": body}}}}
    if params:
        op["parameters"] = [{"name": p, "in": "query", "schema": {"type": "string"}} for p in params]
    return op


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


S = {"type": "string"}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "callrouter engine API", "version": "0.1.0",
             "description": "Lines 110 and 96345 of the county hotline: queues, seats, live calls, tickets. "
                            "Bearer tokens: `callrouter tokens create --role agent|supervisor|admin`."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": {"type": "object", "required": ["status", "error", "details"], "properties": {
            "status": {"type": "integer"}, "error": S, "details": S}}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/status": {"get": _op("Per line: waiting, longest wait, seats by state, overflow, service level",
                                   "any")},
        "/api/seats/{seat}/{action}": {"parameters": _path_params("seat", "action"), "post": _op(
            "Log a seat in or out, pause (body reason), resume it, or end its wrap-up; action: "
            "login|logout|pause|resume|wrapup_done",
            "agent (own seat), supervisor, admin", {"reason": S})},
        "/api/lines/{line}/seats": {"parameters": _path_params("line"), "post": _op(
            "Add a seat to a line at runtime (overflow)", "supervisor", {"seat": S, "endpoint": S})},
        "/api/lines/{line}/seats/{seat}": {"parameters": _path_params("line", "seat"), "delete": _op(
            "Remove a runtime seat from a line (it finishes its call first)", "supervisor")},
        "/api/lines/reload": {"post": _op("Validate queues/lines.toml and apply it; no call is dropped", "admin")},
        "/api/plan": {"get": _op("The number plan: number, line, category, department, priority", "any")},
        "/api/me": {"get": _op("The token's role and seat", "any")},
        "/api/plan/reload": {"post": _op("Validate the number plan and use it for new calls", "admin")},
        "/api/calls": {"get": _op("Live calls (an agent sees the calls on its seat)", "any")},
        "/api/calls/{call}": {"parameters": _path_params("call"), "delete": _op(
            "Hang a live call up", "agent (own call), supervisor")},
        "/api/calls/{call}/transfer": {"parameters": _path_params("call"), "post": _op(
            "Hand a talking caller to the other line, keeping their place", "agent (own call), supervisor",
            {"to": S, "reason": S, "priority": {"type": "integer", "minimum": 1, "maximum": 9}})},
        "/api/calls/{call}/consult": {"parameters": _path_params("call"), "post": _op(
            "Three-way consult with the other line's next free seat", "agent (own call), supervisor",
            {"line": S})},
        "/api/calls/{call}/reclassify": {"parameters": _path_params("call"), "post": _op(
            "Correct the call's category", "agent (own call), supervisor", {"category": S})},
        "/api/tickets": {"get": _op("Tickets, newest first", "any (an agent: its seat's)",
                                    params=["line", "category", "number", "caller", "since", "until", "limit"])},
        "/api/tickets/{ticket}": {"parameters": _path_params("ticket"), "get": _op("One ticket", "any")},
        "/api/tickets/{ticket}/reclassify": {"parameters": _path_params("ticket"), "post": _op(
            "Correct a ticket's category after the call", "agent (own seat's ticket), supervisor",
            {"category": S})},
        "/api/tickets/{ticket}/notes": {"parameters": _path_params("ticket"), "post": _op(
            "Write a note on the ticket", "agent (own seat's ticket), supervisor", {"text": S})},
        "/api/events": {"get": _op("WebSocket: live queue, seat, call and ticket changes (token in ?token=)",
                                   "any", ok="switching protocols")},
        "/metrics": {"get": _op("Prometheus metrics", "any")},
    },
}
