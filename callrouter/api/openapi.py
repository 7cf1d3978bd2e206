"""The API's OpenAPI 3.1 document, served at /api/openapi.json.

Complete enough for a fuzzer (schemathesis, in tests/e2e/test_api_fuzz.py) to reach every
operation with well-formed and malformed input: every parameter, every request body with
its required fields, every status an operation answers. Keep it in step with app.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from callrouter.acd.lines import SEAT_ID
from callrouter.api.tokens import ALL_ROLES

_ERR_REF = {"$ref": "#/components/schemas/Error"}
_WHY = {
    "400": "bad input (the reason in details)",
    "401": "no token, or not one of ours (malformed and non-ASCII tokens included)",
    "403": "the token's role may not do this (an agent: only its own seat and calls)",
    "404": "no such seat, line, call or ticket",
    "409": "well-formed, but the state does not allow it (a line's own seat, a call not talking, already on "
           "that line, a consult under way); nothing changed",
    "503": ("Asterisk, the ticket database or another part did not answer; try again. With several "
            "engines, `standby`: this engine is a hot standby, the body's `leader` names the lease holder's API"),
}
S: dict[str, Any] = {"type": "string"}
JSON_OBJ: dict[str, Any] = {"type": "object"}


def _err(code: str) -> dict[str, Any]:
    return {"description": _WHY[code], "content": {"application/json": {"schema": _ERR_REF}}}


def _op(summary: str, role: str, *, body: dict[str, Any] | None = None, required: list[str] | None = None,
        query: list[dict[str, Any]] | None = None, ok: dict[str, Any] | None = None,
        errors: tuple[str, ...] = ("400", "401", "403", "503"), op_id: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id, "summary": summary, "description": f"Role: {role}.",
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": ok or JSON_OBJ}}},
                      **{code: _err(code) for code in errors}},
    }
    if body is not None:
        op["requestBody"] = {"required": bool(required), "content": {"application/json": {"schema": {
            "type": "object", "properties": body, **({"required": required} if required else {})}}}}
    if query:
        op["parameters"] = query
    return op


def _path(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


SEAT = _path("seat", "a seat id, e.g. s110-01", pattern=f"^{SEAT_ID.pattern}$", examples=["s110-01"])
LINE = _path("line", "a line", enum=["110", "96345"])
CALL = _path("call", "a live call's id (Asterisk channel id), from GET /api/calls", examples=["1764394381.42"])
TICKET = _path("ticket", "a ticket id, e.g. T20261129-053301-1764394381.42", examples=["T20261129-053301-1.1"])
ORDER = _path("order", "a dispatch order's id, O<ticket id>-<attempt>", maxLength=100,
              examples=["OT20261129-053301-1.1-1"])


def _closed(op: dict[str, Any]) -> dict[str, Any]:
    """``op`` whose JSON body refuses fields it does not define (400 "unknown field")."""
    op["requestBody"]["content"]["application/json"]["schema"]["additionalProperties"] = False
    return op
TIME = {"type": "string", "format": "date-time", "examples": ["2026-11-29T08:00:00+08:00"]}
LINE_ID = {"type": "string", "enum": ["110", "96345"]}
# no control characters in query values (refused with 400: NUL is not text to PostgreSQL)
TEXT_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
CALLER_TEXT = {"type": "string", "maxLength": 200, "pattern": TEXT_PATTERN}

def _links(param: str, pointer: str, *op_ids: str) -> dict[str, Any]:
    """OpenAPI links: the ids a list answers feed the operations on one item."""
    return {op_id: {"operationId": op_id, "parameters": {param: f"$response.body#{pointer}"}} for op_id in op_ids}


def _with_links(op: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    op["responses"]["200"]["links"] = links
    return op


def _staffing(op_id: str, summary: str, content: dict[str, Any]) -> dict[str, Any]:
    """A published staffing file: served as written, 404 until one is published."""
    return {"operationId": op_id, "summary": summary, "description": "Role: supervisor.", "responses": {
        "200": {"description": "as published", "content": content}, "401": _err("401"), "403": _err("403"),
        "404": {"description": "no staffing plan published yet (callrouter staffing plan --publish)",
                "content": {"application/json": {"schema": _ERR_REF}}},
        "503": _err("503")}}


def _status(op: dict[str, Any], code: str, description: str, *, also_200: bool = False) -> dict[str, Any]:
    """``op`` answering ``code`` (201 created, 202 accepted) instead of 200, or besides it."""
    responses = dict(op["responses"])
    ok = responses["200"] if also_200 else responses.pop("200")
    responses[code] = {**ok, "description": description}
    return {**op, "responses": responses}


_TOWN_ID = {"type": ["string", "null"], "pattern": "^[a-z][a-z0-9_]{0,39}$"}
_FOLLOW_UP = {"outcome": {"type": "string", "enum": ["reached", "no_answer"]},
              "note": {"type": "string", "maxLength": 500}}
_INTAKE = {"channel": {"type": "string", "enum": ["web", "wechat", "forum"]},
           "contact": {"type": "string", "minLength": 1, "maxLength": 64,
                       "description": "how to reach the citizen: telephone, WeChat id, e-mail"},
           "category": {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,39}$",
                        "description": "a slug of GET /api/categories"},
           "town": {**_TOWN_ID, "description": "a town id of GET /api/units; null: unknown"},
           "text": {"type": "string", "minLength": 1, "maxLength": 2000}}
# the seats' and the wallboard's side of dispatch (callrouter/api/dispatch_seat.py, intake.py)
SEAT_DISPATCH_PATHS: dict[str, Any] = {
    "/api/categories": {"get": _op(
        "Every category a ticket may carry with its Chinese label and line, in plan order",
        "agent, supervisor, admin", op_id="listCategories", errors=("401", "403"), ok={
            "type": "array", "items": {"type": "object", "required": ["slug", "label", "line"],
                                       "properties": {"slug": S, "label": S, "line": LINE_ID}}})},
    "/api/units": {"get": _op(
        "The towns (the console's list) and the units that act on tickets (liaisons: supervisors and admins)",
        "agent, supervisor, admin", op_id="listUnits", errors=("401", "403", "503"), ok={
            "type": "object", "required": ["towns", "units"],
            "properties": {"towns": {"type": "array", "items": JSON_OBJ}, "units": {"type": "array",
                                                                                     "items": JSON_OBJ}}})},
    "/api/tickets/{ticket}/town": {"parameters": [TICKET], "post": _closed(_op(
        "Set the caller's town (the dispatcher chooses that town's unit; null: unknown, county-wide)",
        "agent (tickets its seat took), supervisor, admin", body={"town": _TOWN_ID}, required=["town"],
        op_id="setTown", errors=("400", "401", "403", "404", "409", "503")))},
    "/api/tickets/{ticket}/dispatch": {"parameters": [TICKET], "post": _status(_closed(_op(
        "Send the ticket to dispatch now (the dispatcher opens the order for the unit its category and "
        "town choose)", "agent (tickets its seat took), supervisor, admin", body={}, op_id="sendToDispatch",
        errors=("400", "401", "403", "404", "409", "503"))), "202", "accepted: the dispatcher opens the order")},
    "/api/follow-ups": {"get": _op(
        "96345 tickets whose unit reported, waiting for the seats' call to the citizen (回访), with the "
        "unit's report", "agent (tickets its seat took and those no seat took), supervisor, admin",
        op_id="listFollowUps", ok={"type": "array", "items": JSON_OBJ},
        query=[_query("limit", "at most this many (default 200)", {"type": "integer", "minimum": 1,
                                                                    "maximum": 1000})])},
    "/api/tickets/{ticket}/follow-up": {"parameters": [TICKET], "post": _closed(_op(
        "The follow-up call was made: reached solves the ticket, no_answer leaves it on the list",
        "agent (tickets its seat took, or no seat took), supervisor, admin", body=_FOLLOW_UP,
        required=["outcome"], op_id="followUpDone", errors=("400", "401", "403", "404", "409", "503")))},
    "/api/dispatch/summary": {"get": _op(
        "The wallboard's dispatch figures: open and overdue orders per unit (overdue first) and the month's "
        "accountability per unit (orders, acknowledged in time, overdue, median time to acknowledge and to "
        "solve, follow-ups done)", "supervisor, admin", op_id="dispatchSummary",
        query=[_query("month", "YYYY-MM (default: this month)", {"type": "string",
                                                                "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])$"})],
        ok={"type": "object", "required": ["units", "month", "accountability"]})},
    "/api/history": {"get": _op(
        "Per line and minute (kept in memory since the engine started, a day at most): the most callers "
        "waiting, offered, answered, abandoned, answered within target, service level",
        "agent, supervisor, admin", op_id="lineHistory",
        query=[_query("minutes", "the last this many minutes (default 60)", {"type": "integer", "minimum": 1,
                                                                             "maximum": 1440})],
        ok={"type": "object", "required": ["minute_s", "lines"]})},
    "/api/intake/summary": {"get": _op(
        "The wallboard's other channels: per channel (web, wechat, forum) the requests since `since` (new "
        "tickets, linked to an open ticket, still unsolved) and the newest unsolved requests with their "
        "category, town and order (unit, state); never a contact", "supervisor, admin", op_id="intakeSummary",
        query=[_query("since", "start of the day (default: local midnight)", TIME),
               _query("limit", "at most this many open requests (default 20)",
                      {"type": "integer", "minimum": 1, "maximum": 100})],
        ok={"type": "object", "required": ["since", "channels", "open_requests"],
            "properties": {"since": S, "channels": {"type": "object", "required": ["web", "wechat", "forum"]},
                           "open_requests": {"type": "array", "items": {
                               "type": "object", "required": ["ticket_id", "arrived_at", "channel", "category",
                                                              "category_label", "town_name", "unit_name",
                                                              "order_state"]}}}})},
    "/api/intake": {"post": {**_status(_closed(_op(
        "A request from the web, WeChat or the forum: a ticket of its own (201), or linked to the open ticket "
        "of the same contact and category within the intake window (200)", "intake, admin", body=_INTAKE,
        required=["channel", "contact", "category", "text"], op_id="intake",
        ok={"type": "object", "required": ["ticket_id", "linked"]})), "201", "a new ticket", also_200=True),
        "description": "Role: intake (callrouter tokens create --role intake --name SYSTEM), admin. 200: "
                       "linked to the open ticket; 201: a new ticket."}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "callrouter engine API", "version": "0.2.0",
             "description": "Lines 110 and 96345 of the county hotline: queues, seats, live calls, tickets. "
                            "Bearer tokens: `callrouter tokens create --role agent|supervisor|admin`. The pages "
                            "(/wallboard, /agent) are opened once with ?token= and then use an HttpOnly cookie."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                            "session": {"type": "apiKey", "in": "cookie", "name": "callrouter_session"}},
        "schemas": {"Error": {"type": "object", "required": ["status", "error", "details"], "properties": {
            "status": {"type": "integer"}, "error": S, "details": S}}},
    },
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/api/status": {"get": _op(
            "Per line: waiting, longest wait, seats by state, overflow, service level (an agent: its own seat "
            "only); speech: transcription state, in use, refused over the limit, failures", "any",
            op_id="getStatus", errors=("401", "503"))},
        "/api/seats/{seat}/{action}": {"parameters": [SEAT, _path(
            "action", "what to do", enum=["login", "logout", "pause", "resume", "wrapup_done"])], "post": _op(
            "Log a seat in or out, pause it (body reason), resume it, or end its wrap-up",
            "agent (own seat), supervisor, admin",
            body={"reason": {"type": "string", "description": "kept to 120 printable characters"}},
            op_id="seatAction", errors=("400", "401", "403", "404", "409", "503"))},
        "/api/lines/{line}/seats": {"parameters": [LINE], "post": _op(
            "Add a seat to a line at runtime (overflow); a new seat's id and endpoint follow the naming rule "
            "(letters, digits, '-', '_', '.'; never the trunk)", "supervisor",
            body={"seat": {"type": "string", "pattern": f"^{SEAT_ID.pattern}$", "examples": ["ovf-01"]},
                  "endpoint": {"type": ["string", "null"], "pattern": f"^{SEAT_ID.pattern}$",
                               "description": "its PJSIP endpoint (default: the seat id)"}},
            required=["seat"], op_id="addSeat", errors=("400", "401", "403", "404", "409", "503"))},
        "/api/lines/{line}/seats/{seat}": {"parameters": [LINE, SEAT], "delete": _op(
            "Remove a runtime seat from a line (it finishes its call first); a line's own seat: 409",
            "supervisor", op_id="removeSeat", errors=("400", "401", "403", "404", "409", "503"))},
        "/api/lines/reload": {"post": _op("Validate queues/lines.toml and apply it; no call is dropped", "admin",
                                          op_id="reloadLines", errors=("400", "401", "403", "409", "503"))},
        "/api/plan": {"get": _op("The number plan: number, line, category, department, priority", "any",
                                 ok={"type": "array", "items": JSON_OBJ}, op_id="getPlan", errors=("401",))},
        "/api/me": {"get": _op("The token's role and seat", "any", op_id="getMe", errors=("401",), ok={
            "type": "object", "properties": {"role": {"type": "string", "enum": list(ALL_ROLES)},
                                             "seat": {"type": ["string", "null"]}, "name": S,
                                             "unit": {"type": ["string", "null"]}}})},
        "/api/plan/reload": {"post": _op("Validate the number plan and use it for new calls", "admin",
                                         op_id="reloadPlan")},
        "/api/calls": {"get": _with_links(_op(
            "Live calls (an agent sees the calls on its seat)", "any", ok={"type": "array", "items": JSON_OBJ},
            op_id="listCalls", errors=("401",)), _links(
            "call", "/0/call_id", "transferCall", "consultCall", "reclassifyCall", "hangupCall"))},
        "/api/calls/{call}": {"parameters": [CALL], "delete": _op(
            "Hang a live call up", "agent (own call), supervisor", op_id="hangupCall",
            errors=("401", "403", "404", "503"))},
        "/api/calls/{call}/transfer": {"parameters": [CALL], "post": _op(
            "Hand a talking caller to the other line, keeping their place", "agent (own call), supervisor",
            body={"to": LINE_ID, "reason": {"type": "string", "description": "kept to 200 printable characters"},
                  "priority": {"type": "integer", "minimum": 1, "maximum": 9}},
            required=["to"], op_id="transferCall", errors=("400", "401", "403", "404", "409", "503"))},
        "/api/calls/{call}/consult": {"parameters": [CALL], "post": _op(
            "Three-way consult with the other line's next free seat", "agent (own call), supervisor",
            body={"line": LINE_ID}, required=["line"], op_id="consultCall",
            errors=("400", "401", "403", "404", "409", "503"))},
        "/api/calls/{call}/reclassify": {"parameters": [CALL], "post": _op(
            "Correct the call's category", "agent (own call), supervisor",
            body={"category": {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,39}$"}}, required=["category"],
            op_id="reclassifyCall", errors=("400", "401", "403", "404", "409", "503"))},
        "/api/tickets": {"get": _with_links(_op(
            "Tickets, newest first (an agent: its seat's, and every earlier ticket of the caller it is "
            "talking to)", "any", ok={"type": "array", "items": JSON_OBJ}, op_id="listTickets", query=[
                _query("line", "110 or 96345", LINE_ID), _query("category", "category slug", CALLER_TEXT),
                _query("number", "legacy number (normalised)", CALLER_TEXT),
                _query("caller", "caller number", CALLER_TEXT),
                _query("channel", "how the request came in", {"type": "string",
                                                              "enum": ["phone", "web", "wechat", "forum"]}),
                _query("since", "arrived at or after", TIME),
                _query("until", "arrived before", TIME),
                _query("limit", "at most this many", {"type": "integer", "minimum": 1, "maximum": 1000})],
            errors=("400", "401", "503")), _links("ticket", "/0/id", "getTicket", "reclassifyTicket", "addNote",
                                                              "getRecording", "setLegalHold"))},
        "/api/today": {"get": _op(
            "Figures of the day from every ticket: per line offered, done, answered, within target, "
            "abandoned, service level, abandon rate; calls per legacy number and per category",
            "any", op_id="getToday", query=[_query("since", "start of the day (default: local midnight)", TIME)],
            errors=("400", "401", "503"), ok={"type": "object", "required": ["lines", "by_number", "by_category"],
                                               "properties": {"lines": JSON_OBJ, "by_number": JSON_OBJ,
                                                              "by_category": JSON_OBJ}})},
        **SEAT_DISPATCH_PATHS,
        "/api/staffing": {"get": _staffing(
            "getStaffingPlan", "The staffing plan `callrouter staffing plan|what-if --publish` wrote: seats per "
            "hour per line, the overflow pool, predicted service level, abandons, longest wait",
            {"application/json": {"schema": {"type": "object", "required": ["kind", "staffing", "goals", "rows"]}}})},
        "/api/staffing/chart.svg": {"get": _staffing(
            "getStaffingChart", "The published staffing plan as a chart: offered load, seats planned and "
            "predicted service level per hour, both lines (the wallboard shows it)",
            {"image/svg+xml": {"schema": S}})},
        "/api/tickets/{ticket}": {"parameters": [TICKET], "get": _op(
            "One ticket", "any (an agent: its seat's)", op_id="getTicket", errors=("401", "403", "404", "503"))},
        "/api/tickets/{ticket}/reclassify": {"parameters": [TICKET], "post": _op(
            "Correct a ticket's category after the call", "agent (own seat's ticket), supervisor",
            body={"category": {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,39}$"}}, required=["category"],
            op_id="reclassifyTicket", errors=("400", "401", "403", "404", "503"))},
        "/api/tickets/{ticket}/notes": {"parameters": [TICKET], "post": _op(
            "Write a note on the ticket", "agent (own seat's ticket), supervisor",
            body={"text": {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": "[^\\s\\x00-\\x1f\\x7f-\\x9f]"}}, required=["text"],
            op_id="addNote", errors=("400", "401", "403", "404", "503"))},
        "/api/tickets/{ticket}/recording": {"parameters": [TICKET], "get": {
            "operationId": "getRecording",
            "summary": "The call's recording (8 kHz 16-bit mono WAV; Range requests answered 206). Every access, "
                       "granted or refused, is written to the ticket's events",
            "description": "Role: supervisor, admin, or an agent whose seat took the call.",
            "parameters": [_query("reason", "why it is listened to (kept in the ticket's events)",
                                  {"type": "string", "maxLength": 200, "pattern": TEXT_PATTERN})],
            "responses": {
                "200": {"description": "the recording", "content": {"audio/wav": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "206": {"description": "the part asked for with Range", "content": {"audio/wav": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "400": _err("400"), "401": _err("401"), "403": _err("403"),
                "404": {"description": "no such ticket, or no recording: not recorded (and why), purged after "
                                       "its retention (error purged)",
                        "content": {"application/json": {"schema": _ERR_REF}}},
                "409": {"description": "the call is still on: the recording is kept when it ends",
                        "content": {"application/json": {"schema": _ERR_REF}}},
                "416": {"description": "a Range outside the file"},
                "503": _err("503")}}},
        "/api/tickets/{ticket}/legal-hold": {"parameters": [TICKET], "post": _op(
            "Put the ticket on legal hold (its recording is never purged) or release it; written to its events",
            "supervisor", body={"hold": {"type": "boolean"},
                                "reason": {"type": "string", "minLength": 1, "maxLength": 200,
                                           "pattern": "[^\\s\\x00-\\x1f\\x7f-\\x9f]"}},
            required=["hold", "reason"], op_id="setLegalHold", errors=("400", "401", "403", "404", "503"),
            ok={"type": "object", "required": ["ticket", "legal_hold"],
                "properties": {"ticket": S, "legal_hold": {"type": "boolean"}}})},
        "/api/orders": {"get": _with_links(_op(
            "Dispatch orders, each with its ticket's facts (number dialled, category and its label, town, "
            "transcript, caller or contact). A unit token: its own unit's; supervisors: every unit's",
            "unit (own orders), supervisor, admin", ok={"type": "array", "items": JSON_OBJ}, op_id="listOrders",
            query=[_query("unit", "only this unit's (a unit token: its own only)",
                          {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,39}$"}),
                   _query("open", "1: open orders only (default), 0: every order", {"type": "string",
                                                                                    "enum": ["0", "1"]}),
                   _query("limit", "at most this many (default 200)",
                          {"type": "integer", "minimum": 1, "maximum": 1000})],
            errors=("400", "401", "403", "503")), _links("order", "/0/id", "getOrder", "ackOrder", "reportOrder"))},
        "/api/orders/{order}": {"parameters": [ORDER], "get": _op(
            "One dispatch order with its ticket's facts (another unit's order: 404 to a unit token)",
            "unit (own orders), supervisor, admin", op_id="getOrder", errors=("401", "403", "404", "503"))},
        "/api/orders/{order}/ack": {"parameters": [ORDER], "post": {**_closed(_op(
            "The unit acknowledges the order (in time, or late: then it counts as overdue)", "unit (own orders)",
            body={"by": {"type": "string", "maxLength": 32, "description": "who at the unit acknowledges"}},
            op_id="ackOrder", errors=("400", "401", "403", "404", "409", "503"))), "description":
            "Role: unit (own orders). 409: the order was already acknowledged, reported or escalated to "
            "the next unit."}},
        "/api/orders/{order}/report": {"parameters": [ORDER], "post": {**_closed(_op(
            "The unit reports back: what was done and whether the matter is solved (110: the ticket is solved; "
            "96345: the seats call the citizen back first)", "unit (own orders)",
            body={"result": {"type": "string", "minLength": 1, "maxLength": 2000,
                             "pattern": "[^\\s\\x00-\\x1f\\x7f-\\x9f]"},
                  "solved": {"type": "boolean"}},
            required=["result", "solved"], op_id="reportOrder",
            errors=("400", "401", "403", "404", "409", "503"))),
            "description": "Role: unit (own orders). A report without an acknowledgement acknowledges too. "
                           "409: already reported, or escalated to the next unit."}},
        "/api/events": {"get": {
            "operationId": "events", "summary": "WebSocket: live queue, seat, call and ticket changes (an agent: "
            "its seat and its calls) and dispatch orders' changes (order_opened, order_acknowledged, "
            "order_reported, order_escalated: a unit its own orders and nothing else, supervisors all, agents "
            "none), and the other channels' requests (intake, linked: supervisors and admins only, no contact). Pages use the session cookie; other clients ?token= or the header",
            "description": "Role: any, unit. A client that reads too slowly is closed with 1013 and should reconnect.",
            "parameters": [_query("token", "a token, for WebSocket clients that cannot send headers", S)],
            "responses": {"101": {"description": "switching protocols"}, "400": _err("400"), "401": _err("401"),
                          "403": _err("403")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics", "description": "Role: any.",
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": S}}}, "401": _err("401")}}},
        "/api/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "description": "Role: any.",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": JSON_OBJ}}}, "401": _err("401")}}},
    },
}


def _outside_the_ladder(doc: dict[str, Any]) -> None:
    """Every operation may answer 403: a token whose role is outside the ladder (unit,
    intake) reaches only its own paths, whatever the operation's own rule."""
    for item in doc["paths"].values():
        for method, op in item.items():
            if method != "parameters" and "403" not in op["responses"]:
                op["responses"]["403"] = {"description": "a unit or intake token: not one of its own paths",
                                          "content": {"application/json": {"schema": _ERR_REF}}}


_outside_the_ladder(OPENAPI)


# request fields whose valid values are data the engine loads (the number plan, the units file)
_CATEGORY_FIELDS = ("/api/calls/{call}/reclassify", "/api/tickets/{ticket}/reclassify", "/api/intake")
_TOWN_FIELDS = ("/api/tickets/{ticket}/town", "/api/intake")


def with_reference(categories: Sequence[str], towns: Sequence[str] | None) -> dict[str, Any]:
    """The document as this engine serves it: ``category`` fields list the number plan's
    categories and ``town`` fields the units file's towns (or null), as the API accepts them."""
    doc = copy.deepcopy(OPENAPI)

    def props(path: str) -> dict[str, Any]:
        schema: dict[str, Any] = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return schema["properties"]  # type: ignore[no-any-return]
    for path in _CATEGORY_FIELDS:
        props(path)["category"] = {"type": "string", "enum": list(categories),
                                   "description": "a category of the number plan (GET /api/categories)"}
    if towns is not None:
        for path in _TOWN_FIELDS:
            props(path)["town"] = {"enum": [*towns, None], "description": "a town id of GET /api/units; null: unknown"}
    return doc
