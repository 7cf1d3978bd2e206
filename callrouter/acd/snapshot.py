"""The core's state as JSON-ready data, and back.

``dump`` serves two readers: supervisors (the per-line summary: waiting, longest wait,
seats by state, overflow, service-level counters) and ``load`` after a restart (every
seat and live call with its original times). Times are whatever clock the shell uses
for ``now``; to survive a restart that must be wall-clock time (``time.time()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callrouter.acd.errors import SnapshotError
from callrouter.acd.lines import LinesConfig, seat_name_problem
from callrouter.acd.model import Call, CallState, Seat, SeatState
from callrouter.acd.overflow import OverflowState
from callrouter.acd.state import AcdState, LineRuntime, seats_from_config
from callrouter.acd.stats import ArrivalRate, LineCounters

VERSION = 1


def dump(state: AcdState, now: float) -> dict[str, Any]:
    return {
        "version": VERSION,
        "at": now,
        "seq": state.seq,
        "lines": {lid: _dump_line(state, line, now) for lid, line in state.lines.items()},
        "seats": {sid: _dump_seat(seat) for sid, seat in state.seats.items()},
        "calls": _dump_calls(state, now),
    }


def _dump_line(state: AcdState, line: LineRuntime, now: float) -> dict[str, Any]:
    lid = line.cfg.id
    by_state = {s.value: 0 for s in SeatState}
    unregistered = 0
    for seat in state.seats.values():
        if seat.serves(lid):
            by_state[seat.state.value] += 1
            if not seat.registered and seat.state is not SeatState.LOGGED_OUT:
                unregistered += 1
    oldest = line.queue.oldest_queued_at()
    c = line.counters
    done = c.answered + c.abandoned
    return {
        "name": line.cfg.name,
        "waiting": len(line.queue),
        "longest_wait_s": 0.0 if oldest is None else round(max(0.0, now - oldest), 3),
        "seats": by_state,
        "seats_unregistered": unregistered,
        "overflow_active": line.overflow.active,
        "overflow_policy": line.cfg.overflow.policy,
        "overflow_seats": sorted(s.id for s in state.seats.values() if lid in s.extra_lines),
        "overflow_activated_at": line.overflow.activated_at,
        "overflow_calm_since": line.overflow.calm_since,
        "service": {
            **c.as_dict(),
            "target_s": line.cfg.target_s,
            "target_service_level": line.cfg.target_service_level,
            "service_level": round(c.answered_in_target / done, 4) if done else None,
        },
        "arrival_rate_per_min": round(line.arrivals.rate(now) * 60, 3),
        "aht_s": round(line.aht_s, 1),
        "predicted_service_level": (
            None if line.predicted_sl is None else round(line.predicted_sl, 4)
        ),
        "talk_mean_s": line.talk.mean_s,
        "talk_samples": line.talk.samples,
        "arrivals": line.arrivals.times(now),
    }


def _dump_seat(seat: Seat) -> dict[str, Any]:
    return {
        "state": seat.state.value,
        "since": seat.since,
        "reason": seat.reason,
        "registered": seat.registered,
        "endpoint": seat.endpoint,
        "home": seat.home,
        "runtime": seat.runtime,
        "idle_since": seat.idle_since,
        "missed": seat.missed,
        "call_id": seat.call_id,
        "call_line": seat.call_line,
        "wrap_until": seat.wrap_until,
        "overflow_lines": sorted(seat.overflow_lines),
        "pinned_lines": sorted(seat.pinned_lines),
        "pending": seat.pending,
        "pending_reason": seat.pending_reason,
    }


def _dump_calls(state: AcdState, now: float) -> list[dict[str, Any]]:
    ordered: list[Call] = []
    for line in state.lines.values():
        ordered.extend(line.queue.ordered(now))
    ordered.extend(c for c in state.calls.values() if c.state is not CallState.WAITING)
    return [
        {
            "call_id": c.id,
            "line": c.line,
            "priority": c.priority,
            "arrived_at": c.arrived_at,
            "queued_at": c.queued_at,
            "escalated": c.escalated,
            "seq": c.seq,
            "state": c.state.value,
            "seat": c.seat,
            "answered_at": c.answered_at,
            "announced_at": c.announced_at,
            "tried": sorted(c.tried),
        }
        for c in ordered
    ]


# --- restore ----------------------------------------------------------------------


def load(config: LinesConfig, data: Mapping[str, Any]) -> AcdState:
    if data.get("version") != VERSION:
        raise SnapshotError(f"snapshot version {data.get('version')!r}, expected {VERSION}")
    state = AcdState(
        config=config,
        lines={cfg.id: LineRuntime.new(cfg) for cfg in config.lines},
        seats={s.id: s for s in seats_from_config(config)},
        calls={},
        ringing={},
        seq=_int(data, "seq", "snapshot"),
    )
    for lid, ldata in _mapping(data, "lines", "snapshot").items():
        line = state.lines.get(lid)
        if line is None:
            continue  # a line no longer configured has no callers (checked below)
        _load_line(line, _as_mapping(ldata, f"lines.{lid}"))
    for sid, sdata in _mapping(data, "seats", "snapshot").items():
        _load_seat(state, sid, _as_mapping(sdata, f"seats.{sid}"))
    calls = data.get("calls")
    if not isinstance(calls, list):
        raise SnapshotError("snapshot.calls must be a list")
    for i, cdata in enumerate(calls):
        _load_call(state, _as_mapping(cdata, f"calls[{i}]"), f"calls[{i}]")
    at = _float(data, "at", "snapshot")
    # a seat that was ringing lost its offer with the engine: ready again
    for seat in state.seats.values():
        if seat.state is SeatState.RINGING:
            seat.state, seat.call_id, seat.call_line = SeatState.READY, None, None
        if seat.state is SeatState.ON_CALL and (
            seat.call_id is None or seat.call_id not in state.calls
        ):
            # its call was not saved (ended in the gap): let it wrap up
            seat.state, seat.call_id, seat.wrap_until = SeatState.WRAP_UP, None, at
    return state


def _load_line(line: LineRuntime, d: Mapping[str, Any]) -> None:
    where = f"lines.{line.cfg.id}"
    service = _mapping(d, "service", where)
    counters = LineCounters()
    for key in counters.as_dict():
        setattr(counters, key, _int(service, key, f"{where}.service"))
    line.counters = counters
    line.overflow = OverflowState(
        active=bool(d.get("overflow_active", False)),
        calm_since=_opt_float(d, "overflow_calm_since", where),
        activated_at=_opt_float(d, "overflow_activated_at", where),
    )
    times = d.get("arrivals", [])
    if not isinstance(times, list) or not all(isinstance(t, int | float) for t in times):
        raise SnapshotError(f"{where}.arrivals must be a list of times")
    line.arrivals = ArrivalRate(line.cfg.overflow.rate_window_s, [float(t) for t in times])
    line.talk.mean_s = _float(d, "talk_mean_s", where)
    line.talk.samples = _int(d, "talk_samples", where)


def _load_seat(state: AcdState, sid: str, d: Mapping[str, Any]) -> None:
    where = f"seats.{sid}"
    seat = state.seats.get(sid)
    if seat is None:
        if not d.get("runtime"):
            return  # removed from the configuration while the engine was away
        endpoint = _str(d, "endpoint", where)
        # the saved state is data like any other: a seat it adds must follow the naming rule
        problem = seat_name_problem(sid) or seat_name_problem(endpoint, "endpoint")
        if problem:
            raise SnapshotError(f"{where}: {problem}")
        seat = Seat(sid, endpoint, None, frozenset(), runtime=True)
        state.seats[sid] = seat
    try:
        seat.state = SeatState(_str(d, "state", where))
    except ValueError as exc:
        raise SnapshotError(f"{where}.state: {exc}") from exc
    seat.since = _float(d, "since", where)
    seat.reason = _str(d, "reason", where)
    seat.registered = bool(d.get("registered", False))
    seat.idle_since = _float(d, "idle_since", where)
    seat.missed = _int(d, "missed", where)
    seat.call_id = _opt_str(d, "call_id", where)
    seat.call_line = _opt_str(d, "call_line", where)
    seat.wrap_until = _opt_float(d, "wrap_until", where)
    seat.overflow_lines = {x for x in _strs(d, "overflow_lines", where) if x in seat.may_serve}
    seat.pinned_lines = {x for x in _strs(d, "pinned_lines", where) if x in state.lines}
    pending = _opt_str(d, "pending", where)
    seat.pending = pending if pending in ("pause", "logout") else None
    seat.pending_reason = _str(d, "pending_reason", where)


def _load_call(state: AcdState, d: Mapping[str, Any], where: str) -> None:
    line_id = _str(d, "line", where)
    line = state.lines.get(line_id)
    if line is None:
        raise SnapshotError(
            f"{where}: call on line {line_id!r}, which the configuration no longer has"
        )
    try:
        call_state = CallState(_str(d, "state", where))
    except ValueError as exc:
        raise SnapshotError(f"{where}.state: {exc}") from exc
    call = Call(
        id=_str(d, "call_id", where),
        line=line_id,
        priority=_int(d, "priority", where),
        arrived_at=_float(d, "arrived_at", where),
        queued_at=_float(d, "queued_at", where),
        escalated=bool(d.get("escalated", False)),
        seq=_int(d, "seq", where),
        announced_at=_float(d, "announced_at", where),
        tried=set(_strs(d, "tried", where)),
    )
    seat_id = _opt_str(d, "seat", where)
    seat = state.seats.get(seat_id) if seat_id is not None else None
    if call_state is CallState.ON_CALL and seat is not None:
        call.state, call.seat = CallState.ON_CALL, seat.id
        call.answered_at = _opt_float(d, "answered_at", where)
        seat.state, seat.call_id, seat.call_line = SeatState.ON_CALL, call.id, line_id
        state.calls[call.id] = call
        return
    # waiting, or ringing when the engine stopped: back in the queue at its place
    state.calls[call.id] = call
    line.queue.add(call)


# --- typed field access -----------------------------------------------------------


def _as_mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SnapshotError(f"{where} must be an object")
    return value


def _mapping(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    return _as_mapping(d.get(key), f"{where}.{key}")


def _float(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SnapshotError(f"{where}.{key} must be a number, got {v!r}")
    return float(v)


def _opt_float(d: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if d.get(key) is None else _float(d, key, where)


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SnapshotError(f"{where}.{key} must be a whole number, got {v!r}")
    return v


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise SnapshotError(f"{where}.{key} must be a string, got {v!r}")
    return v


def _opt_str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if d.get(key) is None else _str(d, key, where)


def _strs(d: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SnapshotError(f"{where}.{key} must be a list of strings")
    return list(v)
