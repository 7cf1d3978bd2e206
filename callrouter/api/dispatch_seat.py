"""The seats' and the wallboard's side of dispatch over the API.

* ``GET /api/categories``: every category a ticket may carry, ``[{slug, label, line}]``,
  in plan order (the console's category list; every page shows the label, never the slug).
* ``GET /api/units``: ``{towns: [{id, name}], units: [{id, name, kind, area, categories,
  ...}]}`` from the units file; a liaison's name and phone only to supervisors and admins.
* ``POST /api/tickets/{id}/town`` ``{"town": "<town id>" | null}``: the caller's town (the
  dispatcher chooses that town's unit; null: unknown, the county-wide one).
* ``POST /api/tickets/{id}/dispatch`` ``{}``: send the ticket to dispatch now (202).
* ``GET /api/follow-ups``: 96345 tickets whose unit reported back, waiting for the seats'
  call to the citizen (回访).
* ``POST /api/tickets/{id}/follow-up`` ``{"outcome": "reached" | "no_answer", "note": "..."}``:
  the call was made; reached closes the ticket as solved.
* ``GET /api/dispatch/summary[?month=YYYY-MM]``: open and overdue orders per unit (overdue
  first) and the month's accountability per unit (the wallboard).
* ``GET /api/intake/summary[?since=<ISO-8601>&limit=20]``: the other channels (web, WeChat,
  the forum) on the wallboard: per channel the requests since ``since`` (default: the
  engine's local midnight), linked ones and unsolved ones, and the newest unsolved requests
  with their category, town and order (unit, state). Never a contact: it is a wall screen.
* ``GET /api/history?minutes=60``: per line and minute, waiting callers and service level
  (:mod:`callrouter.api.history`).

An agent acts only on tickets its seat took (the call on it now, or a seat that answered
it), and sees the follow-ups of those and of tickets no seat took (web, WeChat, forum);
supervisors and admins act on any ticket. Units and intake tokens reach none of this.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from callrouter.api.common import (
    PRINCIPAL,
    SERVICE_KEY,
    STORE_KEY,
    _json,
    _when,
    _who,
    clean_text,
    error,
    printable,
    require,
    seats_who_took,
)
from callrouter.api.dispatch import DISPATCH_KEY
from callrouter.api.history import LineHistory, sampler
from callrouter.api.tokens import Principal
from callrouter.categories import CategoriesError, load_categories, plan_categories
from callrouter.dispatch.store import DispatchStore
from callrouter.dispatch.units import Units, UnitsError, load_units
from callrouter.numberplan import NumberPlan, PlanError, load_plan
from callrouter.tickets.models import CALLBACK_OUTCOMES, FollowUpDone, SendToDispatch, SetTown

log = logging.getLogger("callrouter.api")

MONTH_RE = re.compile(r"(20[0-9]{2})-(0[1-9]|1[0-2])")
MAX_NOTE = 500
MAX_MINUTES = 24 * 60
MAX_INTAKE_ROWS = 100


@dataclass
class Reference:
    """What the seats choose from: category labels and the units file (as loaded at start
    and at every number plan reload; a file that failed to load at start is ``problem``
    and its routes answer 503)."""

    labels: dict[str, str]
    units: Units | None
    problem: str = ""
    categories_path: Path | None = None
    units_path: Path | None = None

    def label(self, category: str) -> str:
        return self.labels.get(category, category)


REFERENCE_KEY: web.AppKey[Reference] = web.AppKey("dispatch_reference", Reference)
HISTORY_KEY: web.AppKey[LineHistory] = web.AppKey("line_history", LineHistory)


def load_reference(plan: Path | NumberPlan, categories_path: Path, units_path: Path) -> Reference:
    """Labels and units for the API; never raises (a broken file is logged and reported)."""
    labels: dict[str, str] = {}
    if not isinstance(plan, NumberPlan):
        try:
            plan = load_plan(plan)
        except PlanError as exc:
            return Reference({}, None, f"number plan: {exc}", categories_path, units_path)
    problems: list[str] = []
    try:
        labels = load_categories(categories_path, plan)
    except CategoriesError as exc:
        problems += exc.problems
        log.error("event=categories_invalid problems=%r", exc.problems[:5])
    units: Units | None = None
    try:
        units = load_units(units_path, plan)
    except UnitsError as exc:
        problems += exc.problems
        log.error("event=units_invalid problems=%r", exc.problems[:5])
    return Reference(labels, units, "; ".join(problems[:5]), categories_path, units_path)


async def reload_reference(app: web.Application, plan: NumberPlan) -> str:
    """Read the labels and units again against a reloaded number plan (the files in a
    thread). On success the API (and its DispatchStore) use them and "" is returned; else
    nothing changes and the problems are returned: a plan whose categories have no label or
    no unit is not taken."""
    ref = app[REFERENCE_KEY]
    if ref.categories_path is None or ref.units_path is None:
        return ""
    fresh = await asyncio.to_thread(load_reference, plan, ref.categories_path, ref.units_path)
    if fresh.problem:
        return fresh.problem
    ref.labels, ref.units, ref.problem = fresh.labels, fresh.units, ""
    store = app[DISPATCH_KEY]
    store.labels, store.units = dict(fresh.labels), fresh.units
    return ""


def _units(request: web.Request) -> Units:
    ref = request.app[REFERENCE_KEY]
    if ref.units is None:
        raise web.HTTPServiceUnavailable(text=f"the units file did not load: {ref.problem}; fix it and restart")
    return ref.units


def _ladder(request: web.Request) -> Principal:
    return require(request, "agent")  # units and intake tokens never get here (403 in the middleware too)


async def _ticket(request: web.Request) -> dict[str, Any]:
    """The ticket of the path, after checking that the token may act on it: 404 unknown,
    403 an agent whose seat did not take it."""
    ticket_id = request.match_info["ticket"]
    if not printable(ticket_id, 64):
        raise web.HTTPNotFound(text="ticket ids are up to 64 printable characters")
    row = await asyncio.to_thread(request.app[STORE_KEY].get, ticket_id)
    service = request.app[SERVICE_KEY]
    live = next((c for c in service.calls.values() if c.ticket_id == ticket_id), None)
    if row is None:
        if live is None:
            raise web.HTTPNotFound(text=f"no ticket {ticket_id!r}")
        raise web.HTTPConflict(text=f"ticket {ticket_id} is being written; try again in a moment")
    principal = _ladder(request)
    if principal.role == "agent":
        took = seats_who_took(row) | ({live.seat} if live is not None and live.seat else set())
        if principal.seat not in took:
            raise web.HTTPForbidden(text=f"an agent acts only on tickets seat {principal.seat} took")
    return row


def _body_keys(body: dict[str, Any], allowed: set[str], shape: str) -> None:
    extra = set(body) - allowed
    if extra:
        raise web.HTTPBadRequest(text=f"unknown field {min(extra)[:40]!r}: body is {shape}")


# --------------------------------------------------------------------------- reference


async def get_categories(request: web.Request) -> web.Response:
    _ladder(request)
    ref = request.app[REFERENCE_KEY]
    lines = plan_categories(request.app[SERVICE_KEY].plan)
    return web.json_response([{"slug": slug, "label": ref.label(slug), "line": line} for slug, line in lines.items()])


async def get_units(request: web.Request) -> web.Response:
    principal = _ladder(request)
    units = _units(request)
    liaison = principal.at_least("supervisor")
    return web.json_response({"towns": [{"id": t.id, "name": t.name} for t in units.towns],
                              "units": [u.to_json(liaison=liaison) for u in units.units]})


# --------------------------------------------------------------------------- ticket actions


async def set_town(request: web.Request) -> web.Response:
    body = await _json(request)
    _body_keys(body, {"town"}, '{"town": "<town id of GET /api/units>" | null}')
    if "town" not in body:
        return error(400, "bad_town", 'body must be {"town": "<town id of GET /api/units>" | null}')
    town = body["town"]
    units = _units(request)
    if town is not None and (not isinstance(town, str) or units.town(town) is None):
        return error(400, "bad_town", "town must be a town id of GET /api/units (or null: unknown)")
    row = await _ticket(request)
    principal: Principal = request[PRINCIPAL]
    request.app[SERVICE_KEY].writer.submit(SetTown(ticket_id=row["id"], town=town, by=_who(principal),
                                                   at=datetime.now(UTC)))
    found = units.town(town)
    return web.json_response({"ticket": row["id"], "town": town, "town_name": found.name if found else None})


async def send_to_dispatch(request: web.Request) -> web.Response:
    body = await _json(request)
    _body_keys(body, set(), "{} (nothing to say: the ticket's category and town choose the unit)")
    units = _units(request)
    row = await _ticket(request)
    if row.get("dispatched_at"):
        return error(409, "already_dispatched", f"ticket {row['id']} went to dispatch at {row['dispatched_at']}")
    chain = units.choose(str(row.get("category") or ""), row.get("town"))
    if not chain:
        return error(409, "no_unit", f"no unit handles category {row.get('category')!r}: check queues/units.toml")
    principal: Principal = request[PRINCIPAL]
    request.app[SERVICE_KEY].writer.submit(SendToDispatch(ticket_id=row["id"], by=_who(principal),
                                                          at=datetime.now(UTC)))
    log.info("event=dispatch_requested ticket=%s by=%s", row["id"], _who(principal))
    return web.json_response({"ticket": row["id"], "dispatch_requested": True,
                              "unit": chain[0].id, "unit_name": chain[0].name}, status=202)


async def list_follow_ups(request: web.Request) -> web.Response:
    principal = _ladder(request)
    limit_text = request.query.get("limit", "200")
    if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= 1000):
        return error(400, "bad_query", "limit must be an integer 1 to 1000")
    dispatch, store = request.app[DISPATCH_KEY], request.app[STORE_KEY]

    def read() -> list[dict[str, Any]]:
        rows = dispatch.follow_ups(int(limit_text))
        if principal.role != "agent":
            return rows
        # an agent: the tickets its seat took, and those no seat took (web, WeChat, forum)
        mine = []
        for row in rows:
            took = seats_who_took(store.get(str(row["id"])) or {})
            if not took or principal.seat in took:
                mine.append(row)
        return mine
    return web.json_response(await asyncio.to_thread(read))


async def follow_up_done(request: web.Request) -> web.Response:
    body = await _json(request)
    shape = '{"outcome": "reached" | "no_answer", "note": "<up to 500 characters, optional>"}'
    _body_keys(body, {"outcome", "note"}, shape)
    outcome, note = body.get("outcome"), body.get("note", "")
    if outcome not in CALLBACK_OUTCOMES:
        return error(400, "bad_outcome", f"outcome must be reached or no_answer; body is {shape}")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        return error(400, "bad_note", f"note: a string of up to {MAX_NOTE} characters")
    row = await _ticket_for_follow_up(request)
    if row.get("follow_up") != "pending":
        return error(409, "no_follow_up", f"ticket {row['id']} has no follow-up call waiting "
                     f"(follow_up: {row.get('follow_up')})")
    principal: Principal = request[PRINCIPAL]
    request.app[SERVICE_KEY].writer.submit(FollowUpDone(ticket_id=row["id"], outcome=str(outcome), by=_who(principal),
                                                        note=clean_text(note, MAX_NOTE).strip(), at=datetime.now(UTC)))
    return web.json_response({"ticket": row["id"], "outcome": outcome,
                              "follow_up": "done" if outcome == "reached" else "pending"})


async def _ticket_for_follow_up(request: web.Request) -> dict[str, Any]:
    """Like _ticket, but a ticket no seat took (web, WeChat, forum) is every seat's to call back."""
    ticket_id = request.match_info["ticket"]
    if not printable(ticket_id, 64):
        raise web.HTTPNotFound(text="ticket ids are up to 64 printable characters")
    row = await asyncio.to_thread(request.app[STORE_KEY].get, ticket_id)
    if row is None:
        raise web.HTTPNotFound(text=f"no ticket {ticket_id!r}")
    principal = _ladder(request)
    took = seats_who_took(row)
    if principal.role == "agent" and took and principal.seat not in took:
        raise web.HTTPForbidden(text=f"an agent calls back only the citizens of tickets seat {principal.seat} took")
    return row


# --------------------------------------------------------------------------- wallboard


async def dispatch_summary(request: web.Request) -> web.Response:
    require(request, "supervisor")
    now = datetime.now(UTC)
    month = request.query.get("month", now.strftime("%Y-%m"))
    if not MONTH_RE.fullmatch(month):
        return error(400, "bad_query", "month is YYYY-MM, e.g. 2026-12")
    store = request.app[DISPATCH_KEY]
    units = await asyncio.to_thread(store.summary, now)
    report = await asyncio.to_thread(store.monthly_report, month)
    ref = request.app[REFERENCE_KEY]
    names = {u.id: u.name for u in ref.units.units} if ref.units is not None else {}
    for row in (*units, *report):
        row["unit_name"] = names.get(str(row.get("unit")), str(row.get("name") or row.get("unit")))
    return web.json_response({"at": now.isoformat(), "units": units, "month": month, "accountability": report})


async def intake_summary(request: web.Request) -> web.Response:
    require(request, "supervisor")
    since = _when(request.query.get("since"), "since") or datetime.now().astimezone().replace(
        hour=0, minute=0, second=0, microsecond=0)
    text = request.query.get("limit", "20")
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_INTAKE_ROWS):
        return error(400, "bad_query", f"limit must be an integer 1 to {MAX_INTAKE_ROWS}")
    return web.json_response(await asyncio.to_thread(request.app[DISPATCH_KEY].intake_summary, since, int(text)))


async def get_history(request: web.Request) -> web.Response:
    _ladder(request)
    text = request.query.get("minutes", "60")
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_MINUTES):
        return error(400, "bad_query", f"minutes must be an integer 1 to {MAX_MINUTES}")
    service = request.app[SERVICE_KEY]
    history = request.app[HISTORY_KEY]
    targets = {line.id: line.target_s for line in service.acd.config.lines}
    return web.json_response({"minute_s": 60, "target_s": targets,
                              "lines": history.samples(service.now_ts(), int(text))})


def add_seat_routes(app: web.Application, *, plan_path: Path, categories_path: Path, units_path: Path,
                    history_every_s: float = 5.0) -> None:
    """The routes above; the reference files are read once, here; the engine samples its
    lines for /api/history while the app runs."""
    ref = app[REFERENCE_KEY] = load_reference(plan_path, categories_path, units_path)
    # the one DispatchStore of the API (the orders' routes read it too): with the units and
    # labels, so every order and follow-up carries the unit's, town's and category's names
    app[DISPATCH_KEY] = DispatchStore(app[STORE_KEY], units=ref.units, labels=ref.labels)
    history = app[HISTORY_KEY] = LineHistory()

    async def sample(app: web.Application) -> Any:
        service = app[SERVICE_KEY]

        def snapshot() -> tuple[float, dict[str, Any]]:
            now = service.now_ts()
            return now, service.acd.snapshot(now).get("lines", {})
        task = asyncio.create_task(sampler(history, snapshot, history_every_s), name="line-history")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    app.cleanup_ctx.append(sample)
    app.router.add_get("/api/categories", get_categories)
    app.router.add_get("/api/units", get_units)
    app.router.add_post("/api/tickets/{ticket}/town", set_town)
    app.router.add_post("/api/tickets/{ticket}/dispatch", send_to_dispatch)
    app.router.add_get("/api/follow-ups", list_follow_ups)
    app.router.add_post("/api/tickets/{ticket}/follow-up", follow_up_done)
    app.router.add_get("/api/dispatch/summary", dispatch_summary)
    app.router.add_get("/api/history", get_history)
    app.router.add_get("/api/intake/summary", intake_summary)
