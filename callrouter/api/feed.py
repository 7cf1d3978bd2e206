"""The live event feed (WebSocket) and Prometheus metrics, from one stream of engine events.

`CallService.listeners` reports every call, seat, overflow and transfer change as it
happens; the feed fans them out to WebSocket clients (each with its own bounded queue: a
slow client is dropped, never waited for: its socket is closed with 1013 "try again
later" so its page knows to reconnect) and keeps the counters /metrics reports.

An agent's feed carries its own seat and the calls on it; line-wide changes (overflow)
too; never another seat's callers.

Dispatch orders' changes (``order_opened``, ``order_acknowledged``, ``order_reported``,
``order_escalated``) come from the outbox relay (:meth:`Feed.on_outbox_row`), whichever
process (the dispatcher, another engine) wrote them: a unit's feed carries its own
unit's orders and nothing else; supervisors and admins get every order; agents none.
Requests from the other channels (``intake``: a new ticket, ``linked``: a request joined to
an open ticket) come the same way, to supervisors and admins only, as the ticket's id,
channel, line, category and town: never the citizen's contact or words (the wallboard is a
screen in the room; it reads the figures over the API).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections import Counter
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from callrouter.api.common import PRINCIPAL, for_principal, status_summary
from callrouter.api.tokens import Principal
from callrouter.calls.service import CallService

log = logging.getLogger("callrouter.api")

WAIT_BUCKETS = (1.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
CLIENT_QUEUE = 1000
SEAT_KEYS = ("seat", "by_seat", "consult_seat")


ORDER_KINDS = ("order_opened", "order_acknowledged", "order_reported", "order_escalated")
INTAKE_KINDS = ("intake", "linked")
INTAKE_FIELDS = ("channel", "line", "category", "town")  # no contact, caller or text


class FeedClient:
    def __init__(self, role: str, seat: str | None = None, unit: str | None = None) -> None:
        self.role = role
        self.seat = seat  # an agent's seat: what it may see
        self.unit = unit  # a unit's id: its orders are all it sees
        self.queue: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self.dropped = False


def visible_to(client: FeedClient, message: dict[str, Any]) -> bool:
    """Whether ``client`` gets ``message``. Orders: a unit its own, supervisors and admins
    all, agents none. The rest: an agent the changes of its seat and of calls on it, and
    changes that name no seat and no call; supervisors and admins everything; a role
    outside the ladder (a unit) nothing."""
    data = message.get("data") or {}
    if message.get("type") in INTAKE_KINDS:
        return client.role in ("supervisor", "admin")
    if message.get("type") in ORDER_KINDS:
        if client.role == "unit":
            return client.unit is not None and data.get("unit") == client.unit
        return client.role in ("supervisor", "admin")
    if client.role in ("supervisor", "admin"):
        return True
    if client.role != "agent" or client.seat is None:
        return False
    if any(data.get(k) == client.seat for k in SEAT_KEYS):
        return True
    return not any(data.get(k) for k in SEAT_KEYS) and "call_id" not in data and "caller" not in data


def order_message(row: dict[str, Any]) -> dict[str, Any] | None:
    """The feed message of a published outbox row, if it is a dispatch order's change: the
    order (``order_id``, ``unit``, ``ticket_id``, state...) as its data; None for the rest."""
    if row.get("kind") not in ORDER_KINDS:
        return None
    raw = row.get("ticket")
    payload: dict[str, Any] = raw if isinstance(raw, dict) else {}
    nested = payload.get("order")
    order: dict[str, Any] = nested if isinstance(nested, dict) else payload
    data = {k: v for k, v in order.items() if not isinstance(v, dict | list)}  # no nested ticket facts
    data.setdefault("order_id", order.get("id"))
    data.setdefault("unit", order.get("unit_id"))
    data.setdefault("ticket_id", row.get("ticket_id"))
    if not data.get("order_id") or not data.get("unit"):
        log.warning("event=feed_order_row_unreadable kind=%s event_id=%s", row.get("kind"), row.get("event_id"))
        return None
    return {"type": row["kind"], "at": row.get("at"), "data": data}


def intake_message(row: dict[str, Any]) -> dict[str, Any] | None:
    """The feed message of a published ``intake`` or ``linked`` outbox row: the ticket's id,
    channel, line, category and town (nothing that names or reaches the citizen); None for
    other rows."""
    if row.get("kind") not in INTAKE_KINDS:
        return None
    raw = row.get("ticket")
    ticket: dict[str, Any] = raw if isinstance(raw, dict) else {}
    data: dict[str, Any] = {"ticket_id": row.get("ticket_id") or ticket.get("id")}
    data.update({k: ticket.get(k) for k in INTAKE_FIELDS if isinstance(ticket.get(k), str | None)})
    if not isinstance(data["ticket_id"], str) or not data["ticket_id"]:
        log.warning("event=feed_intake_row_unreadable kind=%s event_id=%s", row.get("kind"), row.get("event_id"))
        return None
    return {"type": row["kind"], "at": row.get("at"), "data": data}


class Feed:
    def __init__(self, service: CallService) -> None:
        self.service = service
        self.clients: set[FeedClient] = set()
        self.dropped_total = 0
        self.calls_total: Counter[tuple[str, str]] = Counter()  # (line, outcome)
        self.wait_counts = [0] * (len(WAIT_BUCKETS) + 1)
        self.wait_sum = 0.0
        service.listeners.append(self.on_event)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "call_ended":
            self.calls_total[(str(data.get("line")), str(data.get("outcome")))] += 1
        elif kind == "call_connected":
            wait = float(data.get("wait_s") or 0.0)
            self.wait_counts[bisect.bisect_left(WAIT_BUCKETS, wait)] += 1
            self.wait_sum += wait
        self.publish({"type": kind, "at": time.time(), "data": data})

    def on_outbox_row(self, row: dict[str, Any]) -> None:
        """The outbox relay's listener: dispatch orders' changes and the other channels'
        requests go to the clients allowed to see them (the page then reads the order, or
        the wallboard's figures, over the API)."""
        message = order_message(row) or intake_message(row)
        if message is not None:
            self.publish(message)

    def publish(self, message: dict[str, Any]) -> None:
        if not self.clients:
            return  # nobody watching: no JSON encode per call event
        text = json.dumps(message, ensure_ascii=False, default=str)
        for client in list(self.clients):
            if not visible_to(client, message):
                continue
            try:
                client.queue.put_nowait(text)
            except asyncio.QueueFull:
                # too slow: its pump closes the socket (1013) once it next wakes, and the
                # page reconnects and starts from a fresh status
                client.dropped = True
                self.clients.discard(client)
                self.dropped_total += 1
                log.warning("event=feed_client_dropped reason=queue_full role=%s seat=%s unit=%s", client.role,
                            client.seat, client.unit)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:

        principal: Principal = request[PRINCIPAL]
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        client = FeedClient(principal.role, principal.seat if principal.role == "agent" else None,
                            principal.unit if principal.role == "unit" else None)
        self.clients.add(client)
        await ws.send_str(json.dumps({"type": "status", "at": time.time(), "data": for_principal(status_summary(
            {"acd": self.service.acd.snapshot(self.service.now_ts())}), principal)}, default=str))

        async def pump() -> None:
            while True:
                text = await client.queue.get()
                if client.dropped:
                    break
                await ws.send_str(text)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow for the feed: reconnect")
        sender = asyncio.create_task(pump(), name="feed-client")
        try:
            async for msg in ws:  # clients send nothing; this notices the close
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.clients.discard(client)
            if not sender.done():
                sender.cancel()
            for result in await asyncio.gather(sender, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, ConnectionError):
                    log.warning("event=feed_client_error error=%r", result)
        return ws

    def metrics_text(self, outbox_lag_s: float | None) -> str:
        snap = self.service.acd.snapshot(self.service.now_ts())
        out: list[str] = ["# HELP callrouter_calls_total Calls ended, by line and outcome.",
                          "# TYPE callrouter_calls_total counter"]
        out += [f'callrouter_calls_total{{line="{line}",outcome="{outcome}"}} {n}'
                for (line, outcome), n in sorted(self.calls_total.items())]
        out += ["# HELP callrouter_waiting Callers waiting for a seat.", "# TYPE callrouter_waiting gauge"]
        out += [f'callrouter_waiting{{line="{lid}"}} {line["waiting"]}' for lid, line in snap["lines"].items()]
        out += ["# HELP callrouter_longest_wait_seconds Longest current wait.",
                "# TYPE callrouter_longest_wait_seconds gauge"]
        out += [f'callrouter_longest_wait_seconds{{line="{lid}"}} {line["longest_wait_s"]}'
                for lid, line in snap["lines"].items()]
        out += ["# HELP callrouter_seats Seats serving a line, by state.", "# TYPE callrouter_seats gauge"]
        for lid, line in snap["lines"].items():
            out += [f'callrouter_seats{{line="{lid}",state="{state}"}} {n}' for state, n in line["seats"].items()]
        out += ["# HELP callrouter_overflow_active Overflow pool serving the line (1) or not (0).",
                "# TYPE callrouter_overflow_active gauge"]
        out += [f'callrouter_overflow_active{{line="{lid}"}} {int(bool(line["overflow_active"]))}'
                for lid, line in snap["lines"].items()]
        out += ["# HELP callrouter_wait_seconds Wait from arrival to a seat answering.",
                "# TYPE callrouter_wait_seconds histogram"]
        cumulative = 0
        for bound, n in zip((*WAIT_BUCKETS, float("inf")), self.wait_counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'callrouter_wait_seconds_bucket{{le="{le}"}} {cumulative}')
        out += [f"callrouter_wait_seconds_sum {self.wait_sum:.3f}", f"callrouter_wait_seconds_count {cumulative}"]
        out += ["# HELP callrouter_feed_clients Event-feed WebSocket clients connected.",
                "# TYPE callrouter_feed_clients gauge", f"callrouter_feed_clients {len(self.clients)}",
                "# HELP callrouter_feed_clients_dropped_total Feed clients closed (1013) for reading too slowly.",
                "# TYPE callrouter_feed_clients_dropped_total counter",
                f"callrouter_feed_clients_dropped_total {self.dropped_total}"]
        if outbox_lag_s is not None:
            out += ["# HELP callrouter_outbox_lag_seconds Age of the oldest ticket event not yet on the stream.",
                    "# TYPE callrouter_outbox_lag_seconds gauge", f"callrouter_outbox_lag_seconds {outbox_lag_s:.3f}"]
        return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def relay_metrics_text(status: dict[str, Any]) -> str:
    """The outbox relay's bounded-growth figures (``OutboxRelay.metrics()``) for /metrics."""
    behind = status.get("groups_behind") or []
    out = ["# HELP callrouter_stream_groups_behind Consumer groups behind the stream's trim point.",
           "# TYPE callrouter_stream_groups_behind gauge", f"callrouter_stream_groups_behind {len(behind)}",
           "# HELP callrouter_stream_events_missed Events trimmed before the group read them (-1: unknown).",
           "# TYPE callrouter_stream_events_missed gauge"]
    out += [f'callrouter_stream_events_missed{{group="{_label(str(g["group"]))}"}} '
            f'{-1 if g.get("missed") is None else int(g["missed"])}' for g in behind]
    out += ["# HELP callrouter_outbox_purged_total Sent outbox rows deleted after their retention.",
            "# TYPE callrouter_outbox_purged_total counter",
            f"callrouter_outbox_purged_total {int(status.get('purged', 0))}"]
    return "\n".join(out) + "\n"
