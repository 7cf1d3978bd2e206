"""What every part of the API shares: the app and request keys, JSON errors, role checks,
request text and time parsing, the status summary. Imports no other module of the API,
so app.py, feed.py and the feature routes (dispatch, dispatch_seat, intake, staffing)
all import it and none of them imports app.py.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Any

from aiohttp import web

from callrouter.api.tokens import Principal
from callrouter.calls.service import CallService
from callrouter.tickets import TicketStore

SERVICE_KEY: web.AppKey[CallService] = web.AppKey("service", CallService)
STORE_KEY: web.AppKey[TicketStore] = web.AppKey("store", TicketStore)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


def error(status: int, error_id: str, details: str) -> web.Response:
    return web.json_response({"status": status, "error": error_id, "details": details}, status=status)


def require(request: web.Request, role: str) -> Principal:
    """403 unless the token's role is at least ``role``."""
    principal: Principal = request[PRINCIPAL]
    if not principal.at_least(role):
        raise web.HTTPForbidden(text=f"needs the {role} role; this token is {principal.role}")
    return principal


def require_seat(request: web.Request, seat: str | None) -> Principal:
    """An agent acts only on its own seat; supervisors and admins on any."""
    principal: Principal = request[PRINCIPAL]
    if principal.role == "agent" and (seat is None or seat != principal.seat):
        raise web.HTTPForbidden(text=f"an agent token acts only on seat {principal.seat}")
    return principal


def clean_text(value: object, limit: int) -> str:
    """A free-text field from a request: at most ``limit`` characters, no control characters
    but newline and tab (PostgreSQL refuses NUL; logs and pages need no escapes)."""
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"))[:limit]


def printable(value: str, limit: int = 200) -> bool:
    """A query or path value we look up: bounded, no control characters or lone surrogates."""
    return len(value) <= limit and all(unicodedata.category(c) not in ("Cc", "Cs") for c in value)


def for_principal(summary: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """An agent sees the lines' occupancy and its own seat, not the other seats; a role
    outside the ladder (a unit) none of it."""
    if not principal.at_least("agent"):
        return {"at": summary.get("at")}
    if principal.role != "agent":
        return summary
    return {**summary, "seats": {k: v for k, v in summary.get("seats", {}).items() if k == principal.seat}}


def status_summary(snapshot: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Per line: waiting, longest wait, seats by state, overflow; what `status --json` prints.

    ``now`` ages a saved snapshot: the longest wait keeps growing after it was written.
    """
    acd = snapshot.get("acd", snapshot)
    age = max(0.0, now - float(acd.get("at") or now)) if now is not None else 0.0
    lines = {}
    for line_id, line in acd.get("lines", {}).items():
        waiting = line.get("waiting") or 0
        lines[line_id] = {
            "name": line.get("name"),
            "waiting": waiting,
            "longest_wait_s": round(float(line.get("longest_wait_s") or 0) + (age if waiting else 0.0), 1),
            "seats": line.get("seats"),
            "overflow_active": line.get("overflow_active"),
            "overflow_seats": line.get("overflow_seats"),
            "service_level": (line.get("service") or {}).get("service_level"),
            "offered": (line.get("service") or {}).get("offered"),
            "answered": (line.get("service") or {}).get("answered"),
            "abandoned": (line.get("service") or {}).get("abandoned"),
            "predicted_service_level": line.get("predicted_service_level"),
        }
    seats = {sid: {k: s.get(k) for k in ("state", "reason", "registered", "since")}
             for sid, s in acd.get("seats", {}).items()}
    return {"at": acd.get("at"), "lines": lines, "seats": seats, "engine": snapshot.get("engine", {})}


def _when(value: str | None, name: str) -> datetime | None:
    """An ISO-8601 time with a zone from the query; HTTPBadRequest with the reason."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name}: {exc}; use ISO-8601, e.g. 2026-11-29T08:00:00+08:00") from exc
    if when.tzinfo is None:
        raise web.HTTPBadRequest(text=f"{name} needs a time zone, e.g. 2026-11-29T08:00:00+08:00")
    return when


def _who(principal: Principal) -> str:
    """The token, as ticket events name it: role and seat (an agent) or name."""
    return ":".join(p for p in (principal.role, principal.seat or principal.name) if p)


def seats_who_took(ticket: dict[str, Any]) -> set[str]:
    """Every seat that answered the call: the last one, and each that handed it on
    (a transfer or a consult's hand-over names the seat it came from)."""
    seats = {str(t.get("seat")) for t in ticket.get("transfers") or [] if t.get("seat")}
    return seats | ({str(ticket["seat"])} if ticket.get("seat") else set())


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data
