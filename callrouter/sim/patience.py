"""Callers who give up only while they wait: a benchmark's patience, kept from Asterisk's view.

A SIPp caller cannot tell whether the party that answered it is a holding bridge or a seat,
so a caller that hangs up a fixed time after its 200 OK ends conversations too (an answer in
its last second becomes a call of under a second). Here the trunk callers wait for the far
end's BYE (``CallSpec.hold_s < 0``) and ``PatienceKeeper`` plays their patience: when a
caller's patience runs out (``patience_s`` after its channel was created in Asterisk) and
its channel is not in a bridge with a seat's channel, the keeper hangs it up through ARI
(``DELETE /channels/{id}``, as if the caller had put the phone down); a caller with a seat
at that moment is left alone and the seat ends the call after its talk time.

Asterisk's own view decides, the same way whoever queues the callers (the engine over ARI,
or app_queue in the dialplan): ``GET /channels`` (every channel of Asterisk, with its
creation time and caller id) and ``GET /bridges`` (every bridge, Stasis' and app_queue's,
with its channels' ids). The keeper asks only around the callers' deadlines, on one
keep-alive HTTP connection, and counts its own requests and their wall time (an upper
bound of the Asterisk CPU it costs: each request is served by one Asterisk thread).

The decision is pure (``due``, ``with_seat``, ``decide``) and unit-tested; the keeper is the
thread around it.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Action = Literal["keep", "hangup"]


@dataclass(frozen=True)
class Caller:
    """A waiting caller as Asterisk lists it: channel id, caller id number, creation time (Unix s)."""

    id: str
    number: str
    created: float


@dataclass
class Decision:
    caller: Caller
    deadline: float  # created + patience
    at: float  # when the keeper decided (Unix s)
    action: Action
    result: str = ""  # hangup: "ok" | "gone" (the channel ended meanwhile) | "error <status>"


def ari_time(text: str) -> float:
    """ARI's '2026-12-01T14:38:00.123+0000' as Unix seconds."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def callers_of(channels: Iterable[Mapping[str, Any]], caller_prefix: str,
               seat_prefixes: Sequence[str]) -> list[Caller]:
    """The benchmark's callers among ``GET /channels``: caller id starting with
    ``caller_prefix`` and not a seat's channel (a seat's leg carries the caller's id too)."""
    out = []
    for ch in channels:
        number = str((ch.get("caller") or {}).get("number") or "")
        name = str(ch.get("name") or "")
        if number.startswith(caller_prefix) and not is_seat(name, seat_prefixes) and ch.get("creationtime"):
            out.append(Caller(str(ch["id"]), number, ari_time(str(ch["creationtime"]))))
    return out


def is_seat(name: str, seat_prefixes: Sequence[str]) -> bool:
    """'PJSIP/s110-01-0000002a' is seat s110-01's channel (prefixes 'PJSIP/s110-01-', ...)."""
    return any(name.startswith(p) for p in seat_prefixes)


def seat_prefixes(seats: Iterable[str]) -> list[str]:
    return [f"PJSIP/{s}-" for s in seats]


def due(callers: Iterable[Caller], decided: Iterable[str], now: float, patience_s: float) -> list[Caller]:
    """Callers whose patience ran out by ``now`` and who were not decided yet, oldest first."""
    done = set(decided)
    return sorted((c for c in callers if c.id not in done and c.created + patience_s <= now),
                  key=lambda c: c.created)


def with_seat(caller_id: str, bridges: Iterable[Iterable[str]], names: Mapping[str, str],
              seat_prefixes: Sequence[str]) -> bool:
    """Is the caller's channel in a bridge with a seat's channel? ``bridges``: each bridge's
    channel ids; ``names``: channel id -> name for (at least) the other members of the
    caller's bridge. A holding bridge full of callers (and its announcer) is not a seat."""
    for members in bridges:
        ids = set(members)
        if caller_id in ids:
            return any(is_seat(names.get(other, ""), seat_prefixes) for other in ids - {caller_id})
    return False


def unknown_members(caller_ids: Iterable[str], bridges: Iterable[Iterable[str]], names: Mapping[str, str]) -> set[str]:
    """Channel ids in the callers' bridges whose name is not known yet (to look up)."""
    wanted = set(caller_ids)
    out: set[str] = set()
    for members in bridges:
        ids = set(members)
        if ids & wanted:
            out |= {i for i in ids - wanted if i not in names}
    return out


def decide(caller: Caller, bridges: Iterable[Iterable[str]], names: Mapping[str, str],
           seat_prefixes: Sequence[str]) -> Action:
    """At the caller's deadline: still waiting (not with a seat) -> it gives up."""
    return "keep" if with_seat(caller.id, bridges, names, seat_prefixes) else "hangup"


@dataclass
class KeeperStats:
    requests: int = 0
    request_wall_s: float = 0.0  # sum of the requests' round trips
    listings: int = 0  # GET /channels
    bridge_reads: int = 0  # GET /bridges
    lookups: int = 0  # GET /channels/{id}
    hangups: int = 0  # DELETE /channels/{id}
    cpu_s: float = 0.0  # the keeper thread's own CPU (this process)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "request_wall_s": round(self.request_wall_s, 4),
                "listings": self.listings, "bridge_reads": self.bridge_reads, "lookups": self.lookups,
                "hangups": self.hangups, "cpu_s": round(self.cpu_s, 4), "errors": self.errors[:20]}


class PatienceKeeper(threading.Thread):
    """Plays the benchmark callers' patience against one Asterisk over ARI (see the module).

    Started just before the calls, with ``first_deadline`` (Unix s: the first caller's
    creation + patience, or a little before) and ``last_deadline`` (the last caller's): it
    sleeps until shortly before the first, then lists the channels every ``list_every_s``
    and checks due callers every ``tick_s`` until every listed caller was decided and the
    last deadline passed, or ``stop()``.
    """

    def __init__(self, ari_url: str, user: str, password: str, *, patience_s: float, seats: Iterable[str],
                 caller_prefix: str, first_deadline: float, last_deadline: float, tick_s: float = 0.2,
                 list_every_s: float = 2.0) -> None:
        super().__init__(name="patience-keeper", daemon=True)
        url = urllib.parse.urlsplit(ari_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.base = url.path.rstrip("/")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.patience_s = patience_s
        self.seats = seat_prefixes(seats)
        self.caller_prefix = caller_prefix
        self.first_deadline, self.last_deadline = first_deadline, last_deadline
        self.tick_s, self.list_every_s = tick_s, list_every_s
        self.decisions: list[Decision] = []
        self.stats = KeeperStats()
        self._halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def stop(self) -> None:
        self._halt.set()

    def _request(self, method: str, path: str) -> tuple[int, Any]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            t0 = time.monotonic()
            try:
                self._conn.request(method, self.base + path, headers={"Authorization": self.auth})
                resp = self._conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                # Asterisk closes a keep-alive session idle for 30 s: reconnect once
                self._conn.close()
                self._conn = None
                if attempt:
                    self.stats.errors.append(f"{method} {path}: {exc!r}")
                    return 0, None
                continue
            finally:
                self.stats.requests += 1
                self.stats.request_wall_s += time.monotonic() - t0
            return resp.status, json.loads(body) if body else None
        return 0, None

    def run(self) -> None:
        cpu0 = time.thread_time()
        try:
            self._run()
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
            # a benchmark thread: report what broke it, never die silently
            self.stats.errors.append(f"keeper failed: {exc!r}")
        finally:
            self.stats.cpu_s = time.thread_time() - cpu0
            if self._conn is not None:
                self._conn.close()

    def _run(self) -> None:
        if self._halt.wait(max(0.0, self.first_deadline - 1.0 - time.time())):
            return
        callers: dict[str, Caller] = {}
        names: dict[str, str] = {}
        decided: set[str] = set()
        listed_at = 0.0
        while not self._halt.is_set():
            now = time.time()
            if now - listed_at >= self.list_every_s:
                status, body = self._request("GET", "/channels")
                self.stats.listings += 1
                listed_at = now
                if status == 200 and isinstance(body, list):
                    for c in callers_of(body, self.caller_prefix, self.seats):
                        callers.setdefault(c.id, c)
                    names.update({str(ch["id"]): str(ch.get("name") or "") for ch in body})
            todo = due(callers.values(), decided, time.time(), self.patience_s)
            if todo:
                self._decide(todo, names, decided)
            if now > self.last_deadline + 1.0 and len(decided) >= len(callers):
                return
            self._halt.wait(self.tick_s)

    def _decide(self, todo: list[Caller], names: dict[str, str], decided: set[str]) -> None:
        status, body = self._request("GET", "/bridges")
        self.stats.bridge_reads += 1
        if status != 200 or not isinstance(body, list):
            return  # next tick
        bridges = [[str(i) for i in b.get("channels") or []] for b in body]
        for other in unknown_members((c.id for c in todo), bridges, names):
            st, ch = self._request("GET", f"/channels/{urllib.parse.quote(other, safe='')}")
            self.stats.lookups += 1
            names[other] = str(ch.get("name") or "") if st == 200 and isinstance(ch, dict) else ""
        for caller in todo:
            action = decide(caller, bridges, names, self.seats)
            d = Decision(caller, caller.created + self.patience_s, time.time(), action)
            if action == "hangup":
                st, _ = self._request("DELETE", f"/channels/{urllib.parse.quote(caller.id, safe='')}")
                self.stats.hangups += 1
                d.result = "ok" if st == 204 else "gone" if st == 404 else f"error {st}"
            self.decisions.append(d)
            decided.add(caller.id)

    def summary(self) -> dict[str, Any]:
        """What the keeper did: decisions by action and result, how late after the
        deadline (s), and its cost."""
        late = sorted(d.at - d.deadline for d in self.decisions)
        return {
            "kept": sum(1 for d in self.decisions if d.action == "keep"),
            "hung_up": sum(1 for d in self.decisions if d.action == "hangup" and d.result == "ok"),
            "gone": sum(1 for d in self.decisions if d.action == "hangup" and d.result == "gone"),
            "failed": sum(1 for d in self.decisions if d.action == "hangup" and d.result.startswith("error")),
            "late_p50_s": late[len(late) // 2] if late else None, "late_max_s": late[-1] if late else None,
            "decisions": [{"number": d.caller.number, "id": d.caller.id, "deadline": d.deadline, "at": d.at,
                           "action": d.action, "result": d.result} for d in self.decisions],
            **self.stats.to_json(),
        }


def unconnected_answers(callers: Sequence[Mapping[str, Any]],
                        decisions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The callers' outcomes as the callers lived them: a caller the keeper hung up (not in a
    bridge with a seat at its deadline) gave up then, even when a seat's answer was recorded
    a moment before (the seat had answered, the caller was not yet connected to it): such a
    caller becomes ``answered`` False, ``wait_s`` = hang-up - arrival, with
    ``unconnected_seat`` = the seat and ``seat_answered_s`` = the recorded wait.

    ``callers``: dicts with ``channel`` (Asterisk's channel id), ``answered``, ``wait_s``,
    ``arrived`` (Unix s), ``seat``; ``decisions``: ``PatienceKeeper.summary()["decisions"]``.
    Callers without a channel id are left as they are. Returns new dicts."""
    hung_up = {str(d["id"]): float(d["at"]) for d in decisions
               if d.get("action") == "hangup" and d.get("result") == "ok"}
    out = []
    for c in callers:
        c = dict(c)
        at = hung_up.get(str(c.get("channel") or ""))
        if at is not None and c.get("answered"):
            c.update(answered=False, unconnected_seat=c.get("seat"), seat_answered_s=c.get("wait_s"), seat=None,
                     wait_s=max(0.0, at - float(c["arrived"])) if c.get("arrived") is not None else c.get("wait_s"))
        out.append(c)
    return out
