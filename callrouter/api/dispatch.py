"""Dispatch orders over the API: what a unit's page (/unit) and a unit's own system use.

* ``GET /api/orders``: a unit token its own unit's orders (open ones; ``?open=0`` all);
  supervisors and admins every unit's (``?unit=<id>``, ``?open=0|1``); agents none (403).
* ``GET /api/orders/{id}``: one order with its ticket's facts; another unit's is 404 to
  a unit token (it does not learn that the order exists).
* ``POST /api/orders/{id}/ack`` ``{"by": "<who, optional>"}``: the unit acknowledges.
* ``POST /api/orders/{id}/report`` ``{"result": "<1..2000 characters>", "solved": true|false}``:
  the unit reports back (a 110 ticket is then solved; a 96345 one goes to the seats'
  follow-up call).

Acknowledging and reporting are the unit's own acts (its accountability is measured by
them): only a unit token does them. A report without an acknowledgement acknowledges too.
A request the order's state does not allow (a second acknowledgement or report, an order
escalated to the next unit) is 409 with the reason.
The work runs in :class:`~callrouter.dispatch.store.DispatchStore`, in a thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from callrouter.api.common import PRINCIPAL, _json, clean_text, error, printable
from callrouter.api.tokens import UNIT_ID_RE, Principal
from callrouter.dispatch.store import DispatchStore, OrderError

DISPATCH_KEY: web.AppKey[DispatchStore] = web.AppKey("dispatch", DispatchStore)

MAX_RESULT = 2000
MAX_BY = 32  # "unit:<id>:<who>" fits the order's acknowledged_by (80)
ORDER_ERRORS = {404: "unknown_order", 409: "order_state", 400: "bad_order"}


def _reader(request: web.Request) -> Principal:
    """A unit (its own orders) or a supervisor or admin (all); 403 for an agent."""
    principal: Principal = request[PRINCIPAL]
    if principal.role != "unit" and not principal.at_least("supervisor"):
        raise web.HTTPForbidden(text="orders are read by their unit and by supervisors")
    return principal


def _unit_only(request: web.Request) -> str:
    principal: Principal = request[PRINCIPAL]
    if principal.role != "unit" or not principal.unit:
        raise web.HTTPForbidden(text="only the unit the order went to acknowledges it or reports on it "
                                     "(callrouter tokens create --role unit --unit <id>)")
    return principal.unit


def _order_id(request: web.Request) -> str:
    order_id = request.match_info["order"]
    if not printable(order_id, 100):
        raise web.HTTPNotFound(text="order ids are up to 100 printable characters")
    return order_id


def order_unit(row: dict[str, Any]) -> str | None:
    unit = row.get("unit", row.get("unit_id"))
    return unit if isinstance(unit, str) else None


def _refused(exc: OrderError) -> web.Response:
    return error(exc.status, ORDER_ERRORS.get(exc.status, "refused"), exc.reason)


async def list_orders(request: web.Request) -> web.Response:
    principal = _reader(request)
    q = request.query
    unknown = set(q) - {"unit", "open", "limit"}
    if unknown:
        return error(400, "bad_query", f"unknown parameter {min(unknown)[:40]!r}: use unit, open, limit")
    open_text, limit_text = q.get("open", "1"), q.get("limit", "200")
    if open_text not in ("0", "1"):
        return error(400, "bad_query", "open is 1 (open orders only, the default) or 0 (every order)")
    if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= 1000):
        return error(400, "bad_query", "limit must be an integer 1 to 1000")
    unit = q.get("unit")
    if unit is not None and not UNIT_ID_RE.fullmatch(unit):
        return error(400, "bad_query", "unit is a unit id of queues/units.toml (lowercase slug)")
    if principal.role == "unit":
        if unit is not None and unit != principal.unit:
            return error(403, "forbidden", f"a unit token reads only unit {principal.unit}'s orders")
        unit = principal.unit
    rows = await asyncio.to_thread(request.app[DISPATCH_KEY].orders, unit=unit, open_only=open_text == "1",
                                   limit=int(limit_text))
    return web.json_response(rows)


async def get_order(request: web.Request) -> web.Response:
    principal = _reader(request)
    order_id = _order_id(request)
    row = await asyncio.to_thread(request.app[DISPATCH_KEY].order, order_id)
    if row is None or (principal.role == "unit" and order_unit(row) != principal.unit):
        return error(404, "unknown_order", f"no order {order_id!r}" + (
            f" for unit {principal.unit}" if principal.role == "unit" else ""))
    return web.json_response(row)


async def ack_order(request: web.Request) -> web.Response:
    unit = _unit_only(request)
    order_id = _order_id(request)
    body = await _json(request)
    extra = set(body) - {"by"}
    if extra:
        return error(400, "bad_ack", f"unknown field {min(extra)[:40]!r}: body is {{}} or "
                     '{"by": "<who acknowledges, up to 32 characters>"}')
    by = body.get("by", "")
    if not isinstance(by, str) or len(by) > MAX_BY:
        return error(400, "bad_ack", 'by: who acknowledges, a string of up to 32 characters')
    who = f"unit:{unit}" + (f":{name}" if (name := clean_text(by, MAX_BY).strip()) else "")
    try:
        row = await asyncio.to_thread(request.app[DISPATCH_KEY].acknowledge, order_id, unit, who,
                                      datetime.now(UTC))
    except OrderError as exc:
        return _refused(exc)
    return web.json_response(row)


def _report_body(body: dict[str, Any]) -> tuple[str, bool] | str:
    """The report's (result, solved), or what is wrong with the body."""
    extra = set(body) - {"result", "solved"}
    if extra:
        return f"unknown field {min(extra)[:40]!r}"
    result, solved = body.get("result"), body.get("solved")
    if not isinstance(result, str) or len(result) > MAX_RESULT or not clean_text(result, MAX_RESULT).strip():
        return f"result: what was done, 1 to {MAX_RESULT} characters"
    if not isinstance(solved, bool):
        return "solved: true (the matter is dealt with) or false"
    return clean_text(result, MAX_RESULT).strip(), solved


async def report_order(request: web.Request) -> web.Response:
    unit = _unit_only(request)
    order_id = _order_id(request)
    parsed = _report_body(await _json(request))
    if isinstance(parsed, str):
        return error(400, "bad_report", parsed + '; body is {"result": "...", "solved": true | false}')
    result, solved = parsed
    try:
        row = await asyncio.to_thread(request.app[DISPATCH_KEY].report, order_id, unit, result, solved,
                                      datetime.now(UTC))
    except OrderError as exc:
        return _refused(exc)
    return web.json_response(row)


def add_order_routes(app: web.Application) -> None:
    """The orders routes; build_app put the DispatchStore on the app (``DISPATCH_KEY``)."""
    app.router.add_get("/api/orders", list_orders)
    app.router.add_get("/api/orders/{order}", get_order)
    app.router.add_post("/api/orders/{order}/ack", ack_order)
    app.router.add_post("/api/orders/{order}/report", report_order)
