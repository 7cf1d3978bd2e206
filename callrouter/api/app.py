"""The control API: status, seats, overflow. Loopback by default; a bearer token always.

Errors are JSON ``{"status": 400, "error": "unknown_seat", "details": "..."}`` with a
stable error id; bad input is a 4xx with the reason, a failing Asterisk or database a 503
with the reason, never a 500.

The pages (wallboard, agent console) are opened once with ``?token=``: the engine answers
with a redirect to the bare page and the token in an HttpOnly, SameSite=Strict cookie, so
the token leaves the address bar and no script on the page (nor one injected into it) can
read it. Every response carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from sqlalchemy.exc import SQLAlchemyError

from callrouter.acd import AcdError, AddSeat, ConfigFileError, RemoveSeat, UnknownLine, UnknownSeat, load_lines
from callrouter.acd.lines import seat_name_problem
from callrouter.api.common import (
    PRINCIPAL,
    SERVICE_KEY,
    STORE_KEY,
    _json,
    _when,
    _who,
    clean_text,
    error,
    for_principal,
    printable,
    require,
    require_seat,
    seats_who_took,
    status_summary,
)
from callrouter.api.dispatch import add_order_routes
from callrouter.api.dispatch_seat import REFERENCE_KEY, add_seat_routes, reload_reference
from callrouter.api.feed import Feed, relay_metrics_text
from callrouter.api.intake import add_intake_routes
from callrouter.api.openapi import with_reference
from callrouter.api.staffing import add_routes as add_staffing_routes
from callrouter.api.tokens import Principal, TokenStore
from callrouter.ari import AriError
from callrouter.calls.features import seat_event
from callrouter.calls.service import CallService, TransferError
from callrouter.categories import plan_categories
from callrouter.numberplan import PlanError, load_plan, normalise
from callrouter.tickets import AddNote, Reclassify, RecordingAccessed, SetLegalHold, TicketStore
from callrouter.tickets.machine import rules_of
from callrouter.tickets.models import CHANNELS, RECORDING_FILE

log = logging.getLogger("callrouter.api")

TOKENS_KEY: web.AppKey[TokenStore] = web.AppKey("tokens", TokenStore)
FEED_KEY: web.AppKey[Feed] = web.AppKey("feed", Feed)
LINES_PATH_KEY: web.AppKey[Path] = web.AppKey("lines_path", Path)
PLAN_PATH_KEY: web.AppKey[Path] = web.AppKey("plan_path", Path)
SPEECH_KEY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("speech_status")
# several engines (callrouter.ha): this engine's role, and where the holder's API is
HA_KEY: web.AppKey[Callable[[], Awaitable[dict[str, Any]]]] = web.AppKey("ha_status")
# what only the lease holder knows or may change: the live calls, seats and lines (a
# standby's are empty, and a change there would be lost at its next take-over)
LIVE_STATE = ("/api/calls", "/api/seats/", "/api/lines/", "/api/plan/reload")
CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]{1,39}")
SEAT_ACTIONS = ("login", "logout", "pause", "resume", "wrapup_done")
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGES = {"/wallboard": "wallboard.html", "/agent": "agent.html", "/unit": "unit.html"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "callrouter_session"
SESSION_MAX_AGE_S = 12 * 3600  # a shift; then the page is opened with ?token= again
# No inline script or style at all: the pages load their own files only, talk to this
# origin only (the event feed's ws:// included) and cannot be framed.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; connect-src 'self'")
HOST_RE = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


# a refused call action: a call that is not live is 404, bad input 400, and a well-formed
# request the call's state does not allow (same line, not talking, consult under way) 409
CALL_ERROR_STATUS = {"unknown_call": 404, "unknown_line": 400, "bad_category": 400}


def call_error(exc: TransferError) -> web.Response:
    return error(CALL_ERROR_STATUS.get(exc.error_id, 409), exc.error_id, exc.details)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response (pages, files, JSON, errors, the WebSocket handshake)."""
    host = request.host if HOST_RE.fullmatch(request.host or "") else ""
    ws = f" ws://{host} wss://{host}" if host else ""  # older browsers do not count ws: as 'self'
    response.headers["Content-Security-Policy"] = CSP + ws
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if request.path.startswith("/api/") or request.path in PAGES:
        response.headers["Cache-Control"] = "no-store"  # caller data stays out of caches


def _presented_token(request: web.Request) -> tuple[str, bool]:
    """The token of the request and whether it came in the page session cookie."""
    header = request.headers.get("Authorization")
    if header is not None:
        return (header[7:] if header.startswith("Bearer ") else ""), False
    if request.path == "/api/events" and "token" in request.query:
        return request.query["token"], False  # WebSocket clients that are not our pages
    return request.cookies.get(SESSION_COOKIE, ""), True


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PAGES or request.path.startswith("/static/"):
        return await handler(request)  # pages and their assets hold no data; their API calls need the token
    token, from_cookie = _presented_token(request)
    try:
        principal = request.app[TOKENS_KEY].lookup(token)
    except (OSError, ValueError, KeyError) as exc:  # tokens.json unreadable or damaged
        log.warning("event=api_unavailable part=tokens error=%r", exc)
        return error(503, "tokens_unavailable", "the token file cannot be read; see the engine's log")
    if principal is None:
        return error(401, "unauthorized", "send Authorization: Bearer <token> (callrouter tokens create), "
                     "or open the page with ?token=<token>")
    origin = request.headers.get("Origin")
    if from_cookie and origin is not None and origin != _origin(request):
        # the cookie is the pages' own: another origin's page does not get to use it
        return error(403, "cross_origin", f"requests from {origin[:100]!r} do not carry this engine's session")
    if not principal.may_reach(request.path):  # a unit (or intake) token: its own endpoints only
        return error(403, "forbidden", f"a {principal.role} token reaches only its own endpoints")
    request[PRINCIPAL] = principal
    ha = request.app.get(HA_KEY)
    if ha is not None and request.path.startswith(LIVE_STATE) and not request.app[SERVICE_KEY].acting():
        role = await ha()
        response = web.json_response({"status": 503, "error": "standby", "leader": role.get("leader"),
                                      "details": "this engine is a hot standby; the lease holder's API "
                                                 "(leader.api) has the live calls, seats and lines"}, status=503)
        response.headers["Retry-After"] = "1"
        return response
    try:
        return await handler(request)
    except web.HTTPException as exc:
        response = error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        if "Allow" in exc.headers:  # 405: which methods the path has
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (UnknownSeat, UnknownLine) as exc:  # a seat or line of the path that does not exist
        return error(404, type(exc).__name__.lower(), str(exc))
    except AcdError as exc:  # the queue engine refused; nothing changed
        return error(409, "refused", str(exc))
    except AriError as exc:
        if exc.status == 404:
            return error(404, "gone", f"Asterisk no longer has it: {exc}")
        log.warning("event=api_unavailable part=asterisk path=%s error=%r", request.path, str(exc))
        return error(503, "asterisk_unavailable", f"Asterisk did not do it: {exc}; try again")
    except SQLAlchemyError as exc:
        log.warning("event=api_unavailable part=database path=%s error=%r", request.path, str(exc)[:300])
        return error(503, "database_unavailable", "the ticket database did not answer; try again")
    except (OSError, TimeoutError) as exc:
        log.warning("event=api_unavailable part=io path=%s error=%r", request.path, exc)
        return error(503, "unavailable", f"a part the engine needs did not answer ({type(exc).__name__}); try again")


async def get_status(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]  # every role reads the lines' occupancy
    summary = status_summary({"acd": service.acd.snapshot(service.now_ts()),
                              "engine": {**service.counters, "tickets_pending": service.writer.pending}})
    speech = request.app.get(SPEECH_KEY)
    if speech is not None:
        summary["speech"] = speech()  # transcription on/off, in use, refused, failures
    if service.recorder is not None:
        summary["recording"] = service.recorder.status()  # on/off, a full disk, failures
    if service.cluster_status is not None:
        summary["cluster"] = service.cluster_status()  # nodes connected, lost; what is off
    ha = request.app.get(HA_KEY)
    if ha is not None:
        summary["ha"] = await ha()  # leader or standby (and then where the leader is)
    return web.json_response(for_principal(summary, request[PRINCIPAL]))


async def seat_action(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    seat, action = request.match_info["seat"], request.match_info["action"]
    require_seat(request, seat)
    if action not in SEAT_ACTIONS:
        return error(400, "unknown_action", f"{action!r}: use one of {', '.join(SEAT_ACTIONS)}")
    body = await _json(request)
    if not isinstance(body.get("reason", ""), str):
        return error(400, "bad_reason", 'body is {"reason": "<text>"} or empty')
    reason = clean_text(body.get("reason"), 120) or "supervisor"
    service.acd.seat_state(seat)  # raises UnknownSeat -> 400 before anything changes
    service.feed(seat_event(action, seat, reason), raise_refusal=True)
    return web.json_response({"seat": seat, "state": service.acd.seat_state(seat).value,
                              "reason": service.acd.seat_reason(seat)})


async def add_seat(request: web.Request) -> web.Response:
    require(request, "supervisor")
    service = request.app[SERVICE_KEY]
    line = request.match_info["line"]
    body = await _json(request)
    seat = body.get("seat")
    if not isinstance(seat, str) or not seat:
        return error(400, "missing_seat", 'body must be {"seat": "<seat id>", "endpoint": "<optional>"}')
    endpoint = body.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        return error(400, "bad_endpoint", "endpoint is the seat's PJSIP endpoint name, a string")
    problem = seat_name_problem(seat) or (seat_name_problem(endpoint, "endpoint") if endpoint is not None else None)
    if problem:
        return error(400, "bad_seat", problem)
    service.acd.overflow_active(line)  # UnknownLine -> 400
    service.feed(AddSeat(seat, line, endpoint), raise_refusal=True)
    return web.json_response({"line": line, "seats": list(service.acd.overflow_seats(line))})


async def remove_seat(request: web.Request) -> web.Response:
    require(request, "supervisor")
    service = request.app[SERVICE_KEY]
    line, seat = request.match_info["line"], request.match_info["seat"]
    service.acd.overflow_active(line)
    service.acd.seat_state(seat)
    service.feed(RemoveSeat(seat, line), raise_refusal=True)  # a line's own seat: 409 with the reason
    return web.json_response({"line": line, "seats": list(service.acd.overflow_seats(line))})


async def list_calls(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    principal: Principal = request[PRINCIPAL]
    calls = [c for c in service.calls.values() if principal.role != "agent" or c.seat == principal.seat]
    return web.json_response([call.summary() for call in calls])


def live_call_for(request: web.Request) -> str:
    """The call id of the path, after checking an agent token's seat is on that call."""
    call_id = request.match_info["call"]
    call = request.app[SERVICE_KEY].calls.get(call_id)
    require_seat(request, call.seat if call is not None else None)
    return call_id


async def transfer_call(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _json(request)
    to_line = body.get("to")
    if not isinstance(to_line, str):
        return error(400, "missing_to", 'body must be {"to": "96345" | "110", "reason": "..."}')
    priority = body.get("priority")
    if isinstance(priority, float) and priority.is_integer():
        priority = int(priority)  # JSON has one number type: 3.0 is 3
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 9):
        return error(400, "bad_priority", "priority must be an integer 1 (most urgent) to 9")
    try:
        call = service.transfer(live_call_for(request), to_line, clean_text(body.get("reason"), 200),
                                priority=priority)
    except TransferError as exc:
        return call_error(exc)
    return web.json_response(call.summary())


async def consult_call(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _json(request)
    line = body.get("line")
    if not isinstance(line, str):
        return error(400, "missing_line", 'body must be {"line": "96345" | "110"}')
    try:
        call = service.consult(live_call_for(request), line)
    except TransferError as exc:
        return call_error(exc)
    return web.json_response({**call.summary(), "consult_line": line})


async def reclassify_call(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = await _json(request)
    category = body.get("category")
    if not isinstance(category, str):
        return error(400, "missing_category", 'body must be {"category": "<slug>"}')
    try:
        call = service.reclassify(live_call_for(request), category)
    except TransferError as exc:
        return call_error(exc)
    return web.json_response({**call.summary(), "category": category})


async def hangup_call(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    call_id = request.match_info["call"]
    if call_id in service.calls:
        live_call_for(request)
    if call_id not in service.calls:
        return error(404, "unknown_call", f"no live call {call_id!r}")
    await service.ari.hangup(call_id)
    return web.json_response({"call_id": call_id, "hung_up": True})


async def list_tickets(request: web.Request) -> web.Response:
    """Tickets, newest first; filters: line, category, number (legacy, normalised), caller,
    channel (phone, web, wechat, forum), since/until (ISO-8601), limit (1-1000). An agent
    sees its own seat's tickets, and every earlier ticket of the caller it is talking to
    (``caller=<that caller>``)."""
    q = request.query
    for key, text in q.items():
        if not printable(text):
            return error(400, "bad_query", f"{key[:40]!r}: up to 200 printable characters")
    try:
        limit = int(q.get("limit", "50"))
        since = datetime.fromisoformat(q["since"]) if "since" in q else None
        until = datetime.fromisoformat(q["until"]) if "until" in q else None
    except ValueError as exc:
        return error(400, "bad_query", f"{exc}: limit is an integer, since/until ISO-8601 times")
    if not 1 <= limit <= 1000:
        return error(400, "bad_query", "limit must be 1 to 1000")
    for value in (since, until):
        if value is not None and value.tzinfo is None:
            return error(400, "bad_query", "since/until need a time zone, e.g. 2026-11-29T08:00:00+08:00")
    if q.get("line") not in (None, "110", "96345"):
        return error(400, "bad_query", "line is 110 or 96345")
    if q.get("channel") not in (None, *CHANNELS):
        return error(400, "bad_query", f"channel is one of {', '.join(CHANNELS)}")
    number = normalise(q["number"]) if "number" in q else None
    principal: Principal = request[PRINCIPAL]
    seat = None
    if principal.role == "agent":
        # the caller on the line is the agent's business, with all their history; the
        # rest of the records only as far as this seat handled them
        talking_to = {c.caller for c in request.app[SERVICE_KEY].calls.values() if c.seat == principal.seat and c.caller}
        seat = None if q.get("caller") in talking_to else principal.seat
    rows = await asyncio.to_thread(request.app[STORE_KEY].list, limit, q.get("line"), category=q.get("category"),
                                   number=number, caller=q.get("caller"), since=since, until=until, seat=seat,
                                   channel=q.get("channel"))
    return web.json_response(rows)


async def get_today(request: web.Request) -> web.Response:
    """The day's figures per line (service level, abandon rate) and calls per legacy number
    and category, counted by the database over every ticket since ``since`` (default: the
    engine's local midnight)."""
    since = _when(request.query.get("since"), "since") or datetime.now().astimezone().replace(
        hour=0, minute=0, second=0, microsecond=0)
    targets = {line.id: line.target_s for line in request.app[SERVICE_KEY].acd.config.lines}
    figures = await asyncio.to_thread(request.app[STORE_KEY].figures, since, target_s=targets)
    return web.json_response(figures)


async def get_ticket(request: web.Request) -> web.Response:
    if not printable(request.match_info["ticket"], 64):
        return error(404, "unknown_ticket", "ticket ids are up to 64 printable characters")
    row = await asyncio.to_thread(request.app[STORE_KEY].get, request.match_info["ticket"])
    if row is None:
        return error(404, "unknown_ticket", f"no ticket {request.match_info['ticket']!r}")
    principal: Principal = request[PRINCIPAL]
    if principal.role == "agent" and row.get("seat") != principal.seat:
        return error(403, "forbidden", f"an agent token reads only seat {principal.seat}'s tickets")
    return web.json_response(row)


async def get_me(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    return web.json_response({"role": principal.role, "seat": principal.seat, "name": principal.name,
                              "unit": principal.unit})


async def page(request: web.Request) -> web.StreamResponse:
    """A page; opened with ?token=, it trades the token for the session cookie and
    reloads without it (the token never stays in the address bar or the history)."""
    if "token" not in request.query:
        return web.FileResponse(STATIC_DIR / PAGES[request.path])
    response = web.HTTPSeeOther(request.path)
    try:
        principal = request.app[TOKENS_KEY].lookup(request.query["token"])
    except (OSError, ValueError, KeyError) as exc:  # tokens.json unreadable: the page will say 401
        log.warning("event=api_unavailable part=tokens error=%r", exc)
        principal = None
    if principal is not None:
        response.set_cookie(SESSION_COOKIE, request.query["token"], max_age=SESSION_MAX_AGE_S, path="/",
                            httponly=True, samesite="Strict", secure=request.secure)
    else:
        response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def add_note(request: web.Request) -> web.Response:
    """A seat writes a note on a ticket (an agent: on its own seat's tickets)."""
    body = await _json(request)
    text = body.get("text")
    if not isinstance(text, str) or not clean_text(text, 2000).strip() or len(text) > 2000:
        return error(400, "bad_note", 'body must be {"text": "..."} with 1 to 2000 characters')
    text = clean_text(text, 2000)
    ticket_id = request.match_info["ticket"]
    if not printable(ticket_id, 64):
        return error(404, "unknown_ticket", "ticket ids are up to 64 printable characters")
    row = await asyncio.to_thread(request.app[STORE_KEY].get, ticket_id)
    service = request.app[SERVICE_KEY]
    live = next((c for c in service.calls.values() if c.ticket_id == ticket_id), None)
    if row is None and live is None:
        return error(404, "unknown_ticket", f"no ticket {ticket_id!r}")
    seat = live.seat if live is not None else (row or {}).get("seat")
    principal = require_seat(request, str(seat) if seat else None)
    service.writer.submit(AddNote(id=ticket_id, text=text.strip(), seat=principal.seat or principal.name or
                                  principal.role, at=datetime.now(UTC)))
    return web.json_response({"ticket": ticket_id, "noted": True})


async def reclassify_ticket(request: web.Request) -> web.Response:
    """Correct a ticket's category after the call (an agent: its own seat's tickets)."""
    body = await _json(request)
    category = body.get("category")
    if not isinstance(category, str) or not CATEGORY_RE.fullmatch(category):
        return error(400, "bad_category", 'body must be {"category": "<lowercase slug>"}, e.g. gas_repair')
    if category not in plan_categories(request.app[SERVICE_KEY].plan):  # else no unit would take it
        return error(400, "bad_category", f"{category!r} is not a category of the number plan (GET /api/categories)")
    ticket_id = request.match_info["ticket"]
    if not printable(ticket_id, 64):
        return error(404, "unknown_ticket", "ticket ids are up to 64 printable characters")
    row = await asyncio.to_thread(request.app[STORE_KEY].get, ticket_id)
    if row is None:
        return error(404, "unknown_ticket", f"no ticket {ticket_id!r}")
    principal = require_seat(request, str(row["seat"]) if row.get("seat") else None)
    request.app[SERVICE_KEY].writer.submit(Reclassify(id=ticket_id, category=category, at=datetime.now(UTC),
                                                      seat=principal.seat or principal.name or principal.role))
    return web.json_response({"ticket": ticket_id, "category": category})


async def get_recording(request: web.Request) -> web.StreamResponse:
    """Stream a call's recording (audio/wav; Range requests welcome) to a supervisor or
    admin, or to an agent whose seat took the call; nobody else (403). Every access,
    granted or refused, goes to the ticket's events (``recording_accessed`` /
    ``recording_access_denied``, with the token and the optional ``reason``)."""
    ticket_id = request.match_info["ticket"]
    if not printable(ticket_id, 64):
        return error(404, "unknown_ticket", "ticket ids are up to 64 printable characters")
    reason = request.query.get("reason", "")
    if not printable(reason, 200):
        return error(400, "bad_reason", "reason: why the recording is listened to, up to 200 printable characters")
    row = await asyncio.to_thread(request.app[STORE_KEY].get, ticket_id)
    if row is None:
        return error(404, "unknown_ticket", f"no ticket {ticket_id!r}")
    principal: Principal = request[PRINCIPAL]
    service = request.app[SERVICE_KEY]
    allowed = principal.at_least("supervisor") or (principal.seat is not None and principal.seat in seats_who_took(row))
    part = request.headers.get("Range", "")[:100]
    if not allowed:
        service.writer.submit(RecordingAccessed(id=ticket_id, at=datetime.now(UTC), by=_who(principal), granted=False,
                                                reason=reason, part=part))
        log.warning("event=recording_access_denied ticket=%s by=%s", ticket_id, _who(principal))
        return error(403, "forbidden", "a recording is for supervisors and the seat that took the call")
    recording = row.get("recording") or {}
    live = any(c.ticket_id == ticket_id for c in service.calls.values())
    if not recording.get("sha256"):
        if live:
            return error(409, "recording_in_progress", "the call is still on: its recording is kept when it ends")
        why = f" ({recording['failed']}: {recording.get('detail', '')})" if recording.get("failed") else ""
        return error(404, "not_recorded", f"ticket {ticket_id} has no recording{why}")
    if recording.get("purged_at"):
        return error(404, "purged", f"purged at {recording['purged_at']} after its retention")
    recorder = service.recorder
    rel = str(recording.get("file") or "")
    if recorder is None or not RECORDING_FILE.fullmatch(rel):
        return error(503, "unavailable", "this engine keeps no recordings")
    path = recorder.store_dir / rel
    if not await asyncio.to_thread(path.is_file):
        log.error("event=recording_missing ticket=%s file=%s", ticket_id, path)
        return error(404, "recording_missing", f"the recording of {ticket_id} is not in the store ({rel})")
    service.writer.submit(RecordingAccessed(id=ticket_id, at=datetime.now(UTC), by=_who(principal), granted=True,
                                            reason=reason, part=part))
    log.info("event=recording_accessed ticket=%s by=%s part=%s", ticket_id, _who(principal), part or "all")
    return web.FileResponse(path, headers={"Content-Type": "audio/wav",
                                           "Content-Disposition": f'inline; filename="{ticket_id}.wav"'})


async def set_legal_hold(request: web.Request) -> web.Response:
    """Put a ticket on legal hold (its recording is never purged) or release it."""
    principal = require(request, "supervisor")
    body = await _json(request)
    held, reason = body.get("hold"), body.get("reason")
    if not isinstance(held, bool):
        return error(400, "bad_hold", 'body must be {"hold": true | false, "reason": "..."}')
    if not isinstance(reason, str) or not clean_text(reason, 200).strip() or len(reason) > 200:
        return error(400, "bad_reason", "reason: 1 to 200 characters, e.g. the case or order number")
    ticket_id = request.match_info["ticket"]
    if not printable(ticket_id, 64):
        return error(404, "unknown_ticket", "ticket ids are up to 64 printable characters")
    if await asyncio.to_thread(request.app[STORE_KEY].get, ticket_id) is None:
        return error(404, "unknown_ticket", f"no ticket {ticket_id!r}")
    request.app[SERVICE_KEY].writer.submit(SetLegalHold(id=ticket_id, held=held, by=_who(principal),
                                                        reason=clean_text(reason, 200).strip(), at=datetime.now(UTC)))
    log.info("event=legal_hold ticket=%s held=%s by=%s", ticket_id, held, _who(principal))
    return web.json_response({"ticket": ticket_id, "legal_hold": held})


async def get_plan(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE_KEY].plan.to_json_list())


async def openapi(request: web.Request) -> web.Response:

    ref = request.app.get(REFERENCE_KEY)
    towns = [t.id for t in ref.units.towns] if ref is not None and ref.units is not None else None
    return web.json_response(with_reference(list(plan_categories(request.app[SERVICE_KEY].plan)), towns))


async def reload_lines(request: web.Request) -> web.Response:
    """Validate queues/lines.toml again and apply it; no waiting or talking call is dropped."""
    require(request, "admin")
    service = request.app[SERVICE_KEY]
    path = request.app[LINES_PATH_KEY]
    try:
        config = await asyncio.to_thread(load_lines, path)
    except ConfigFileError as exc:
        return error(400, "invalid_lines", str(exc))
    service.reconfigure(config, raise_refusal=True)  # a file that drops a line: 409 with the reason
    request.app[STORE_KEY].rules = rules_of(config)  # callbacks of abandoned calls per line
    return web.json_response({"reloaded": str(path), "lines": list(config.line_ids),
                              "seats": sum(len(line.seats) for line in config.lines) + len(config.pool)})


async def reload_plan(request: web.Request) -> web.Response:
    """Validate the number plan again and use it for every new call."""
    require(request, "admin")
    service = request.app[SERVICE_KEY]
    path = request.app[PLAN_PATH_KEY]
    try:
        plan = await asyncio.to_thread(load_plan, path)
    except PlanError as exc:
        return error(400, "invalid_plan", str(exc))

    problem = await reload_reference(request.app, plan)
    if problem:  # a category without a Chinese label or a unit: the old plan stays
        return error(400, "invalid_plan", f"the plan's categories need a label and a unit: {problem}")
    service.plan = plan
    log.info("event=plan_reloaded path=%s entries=%d", path, len(plan.entries))
    return web.json_response({"reloaded": str(path), "entries": len(plan.entries)})


class MalformedRequestFilter(logging.Filter):
    """A request aiohttp cannot parse (a NUL in a header, a broken request line) is the
    client's error, answered 400 by aiohttp: one warning line, not an error with a traceback
    (anyone who can reach the port could otherwise fill the log with them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.msg, record.args = "event=malformed_http_request answered=400 reason=%r", (str(exc)[:200],)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def build_app(service: CallService, tokens: TokenStore, store: TicketStore, lines_path: Path, plan_path: Path,
              outbox_lag: Callable[[], float] | None = None,
              relay_status: Callable[[], dict[str, Any]] | None = None,
              extra_metrics: Callable[[], str] | None = None,
              speech_status: Callable[[], dict[str, Any]] | None = None,
              staffing_dir: Path | None = None, categories_path: Path | None = None,
              units_path: Path | None = None, intake_window_s: int = 86400,
              ha_status: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> web.Application:
    app = web.Application(middlewares=[auth_and_errors])
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
    app.on_response_prepare.append(security_headers)
    app[SERVICE_KEY] = service
    app[TOKENS_KEY] = tokens
    feed = app[FEED_KEY] = Feed(service)
    if speech_status is not None:
        app[SPEECH_KEY] = speech_status
    if ha_status is not None:
        app[HA_KEY] = ha_status

    async def metrics(request: web.Request) -> web.Response:
        text = feed.metrics_text(outbox_lag() if outbox_lag else None)
        if relay_status is not None:
            text += relay_metrics_text(relay_status())
        if extra_metrics is not None:
            text += extra_metrics()  # Asterisk's security events, calls recorded from its CEL file
        if service.recorder is not None:
            text += service.recorder.metrics_text()
        text += service.ari.metrics_text()  # ARI requests and events: the engine's cost per call
        return web.Response(text=text, content_type="text/plain", charset="utf-8")
    app[STORE_KEY] = store
    app.router.add_get("/api/events", feed.websocket)
    app.router.add_get("/api/tickets", list_tickets)
    app.router.add_get("/api/today", get_today)
    app.router.add_get("/api/tickets/{ticket}", get_ticket)
    app.router.add_post("/api/tickets/{ticket}/notes", add_note)
    app.router.add_post("/api/tickets/{ticket}/reclassify", reclassify_ticket)
    app.router.add_get("/api/tickets/{ticket}/recording", get_recording)
    app.router.add_post("/api/tickets/{ticket}/legal-hold", set_legal_hold)
    app.router.add_get("/api/plan", get_plan)
    app.router.add_get("/api/me", get_me)
    add_order_routes(app)  # dispatch orders: read by their unit and supervisors, acknowledged and reported by the unit
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    app[LINES_PATH_KEY] = lines_path
    app[PLAN_PATH_KEY] = plan_path
    app.router.add_post("/api/lines/reload", reload_lines)
    app.router.add_get("/api/calls", list_calls)
    app.router.add_post("/api/calls/{call}/transfer", transfer_call)
    app.router.add_delete("/api/calls/{call}", hangup_call)
    app.router.add_post("/api/calls/{call}/consult", consult_call)
    app.router.add_post("/api/calls/{call}/reclassify", reclassify_call)
    app.router.add_post("/api/plan/reload", reload_plan)
    app.router.add_get("/api/status", get_status)
    app.router.add_post("/api/seats/{seat}/{action}", seat_action)
    app.router.add_post("/api/lines/{line}/seats", add_seat)
    app.router.add_delete("/api/lines/{line}/seats/{seat}", remove_seat)
    if staffing_dir is not None:  # the staffing plan `callrouter staffing --publish` wrote
        add_staffing_routes(app, staffing_dir)
    # the seats' and the wallboard's side of dispatch, and the other channels' requests
    # (category labels and units default to the files beside the number plan)
    add_seat_routes(app, plan_path=plan_path, categories_path=categories_path or plan_path.with_name("categories.toml"),
                    units_path=units_path or plan_path.with_name("units.toml"))
    add_intake_routes(app, intake_window_s=intake_window_s)
    return app
