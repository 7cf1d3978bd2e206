"""Requests from the other channels (the web form, the WeChat account, the county forum).

``POST /api/intake`` (role ``intake``: ``callrouter tokens create --role intake --name
<system>``; admins too, for a test by hand)::

    {"channel": "web" | "wechat" | "forum", "contact": "<how to reach the citizen>",
     "category": "<a category slug of GET /api/categories>", "town": "<town id>" | null,
     "text": "<what the citizen wrote, 1..2000 characters>"}

opens a ticket of the same model as a call's (``channel``, ``contact`` instead of a caller
number, no call fields) on the category's line, which goes to dispatch like a call's
ticket: 201 ``{"ticket_id", "linked": false}``. The same contact asking about the same
category within ``intake_window_s`` (a setting) while that ticket is open links to it
instead: 200 ``{"ticket_id": <the open ticket>, "linked": true}``. The decision and the
write are one transaction in the database, so the answer is the committed truth and a
channel system that retries after a lost answer makes no second ticket.

Contacts are compared in one form: a telephone number in the number plan's national form
(``+86 138 0000 0000`` and ``13800000000`` are one citizen), anything else (a WeChat
openid, an e-mail address) trimmed and case-folded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from datetime import UTC, datetime

from aiohttp import web

from callrouter.api.common import PRINCIPAL, SERVICE_KEY, STORE_KEY, _json, clean_text, error
from callrouter.api.dispatch_seat import REFERENCE_KEY
from callrouter.api.tokens import Principal
from callrouter.categories import plan_categories
from callrouter.numberplan import normalise
from callrouter.tickets.models import OpenIntake

log = logging.getLogger("callrouter.api")

CHANNELS = ("web", "wechat", "forum")
MAX_CONTACT = 64
MAX_TEXT = 2000
INTAKE_WINDOW_KEY: web.AppKey[int] = web.AppKey("intake_window_s", int)
SHAPE = ('{"channel": "web" | "wechat" | "forum", "contact": "...", "category": "<slug of GET /api/categories>", '
         '"town": "<town id>" | null, "text": "..."}')
_PHONE = re.compile(r"\+?[0-9][0-9 ()\-.]{4,30}")


def contact_key(raw: str) -> str:
    """The one form a contact is compared in (see the module docstring); "" when empty."""
    text = " ".join(unicodedata.normalize("NFKC", raw).split())
    if _PHONE.fullmatch(text):
        return normalise(text)
    return text.casefold()


def _bad(reason: str) -> web.Response:
    return error(400, "bad_intake", f"{reason}; body is {SHAPE}")


async def post_intake(request: web.Request) -> web.Response:
    principal: Principal = request[PRINCIPAL]
    if principal.role != "intake" and not principal.at_least("admin"):
        raise web.HTTPForbidden(text="intake requests come from a channel system's intake token "
                                     "(callrouter tokens create --role intake --name <system>)")
    body = await _json(request)
    extra = set(body) - {"channel", "contact", "category", "town", "text"}
    if extra:
        return _bad(f"unknown field {min(extra)[:40]!r}")
    channel, contact, category = body.get("channel"), body.get("contact"), body.get("category")
    town, text = body.get("town"), body.get("text")
    if channel not in CHANNELS:
        return _bad("channel must be web, wechat or forum (calls make their own tickets)")
    if not isinstance(contact, str) or len(contact) > MAX_CONTACT or not contact_key(clean_text(contact, MAX_CONTACT)):
        return _bad(f"contact: how to reach the citizen (telephone, WeChat id, e-mail), 1 to {MAX_CONTACT} characters")
    lines = plan_categories(request.app[SERVICE_KEY].plan)
    if not isinstance(category, str) or category not in lines:
        return _bad("category must be a category slug of GET /api/categories")
    ref = request.app[REFERENCE_KEY]
    if town is not None:
        if ref.units is None:
            return error(503, "units_unavailable", f"the units file did not load: {ref.problem}")
        if not isinstance(town, str) or ref.units.town(town) is None:
            return _bad("town must be a town id of the units file (or null: unknown)")
    if not isinstance(text, str) or len(text) > MAX_TEXT or not clean_text(text, MAX_TEXT).strip():
        return _bad(f"text: what the citizen wrote, 1 to {MAX_TEXT} characters")
    try:
        op = OpenIntake(channel=channel, contact=contact_key(clean_text(contact, MAX_CONTACT)), line=lines[category],
                        category=category, town=town, text=clean_text(text, MAX_TEXT).strip(), at=datetime.now(UTC),
                        window_s=request.app[INTAKE_WINDOW_KEY])
    except ValueError as exc:  # what the ticket model refuses (a contact of format characters only ...)
        return _bad(str(exc)[:200])
    result = await asyncio.to_thread(request.app[STORE_KEY].open_intake, op)
    log.info("event=intake channel=%s by=%s category=%s ticket=%s linked=%s", channel, principal.name or principal.role,
             category, result.ticket_id, result.linked)
    return web.json_response({"ticket_id": result.ticket_id, "linked": result.linked,
                              "category": category, "category_label": ref.label(category)},
                             status=200 if result.linked else 201)


def add_intake_routes(app: web.Application, *, intake_window_s: int) -> None:
    app[INTAKE_WINDOW_KEY] = intake_window_s
    app.router.add_post("/api/intake", post_intake)
