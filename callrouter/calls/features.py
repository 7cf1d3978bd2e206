"""Seat feature codes dialled from the softphone itself.

    *11  log in       *12  log out       *13  pause       *14  resume

The seat's `[from-seat]` dialplan sends these to `Stasis(callrouter,feature,<code>)`;
the engine changes the seat's state, answers, confirms with a beep and hangs up. An
unknown code or a phone that is not a seat hears the error tone instead.
"""

from __future__ import annotations

import asyncio
import logging

from callrouter.acd import Event as AcdEvent
from callrouter.acd import SeatLogin, SeatLogout, SeatPause, SeatResume, WrapUpDone
from callrouter.ari import AriError, Channel
from callrouter.calls.service import CallService

log = logging.getLogger("callrouter.calls")

FEATURE_CODES: dict[str, str] = {"*11": "login", "*12": "logout", "*13": "pause", "*14": "resume"}


def seat_event(action: str, seat: str, reason: str = "feature_code") -> AcdEvent:
    if action == "login":
        return SeatLogin(seat)
    if action == "logout":
        return SeatLogout(seat)
    if action == "pause":
        return SeatPause(seat, reason)
    if action == "resume":
        return SeatResume(seat)
    if action == "wrapup_done":
        return WrapUpDone(seat)
    raise ValueError(f"unknown seat action {action!r}: use login, logout, pause, resume or wrapup_done")


def handle_feature(service: CallService, channel: Channel, code: str) -> None:
    seat = service.seat_of_channel(channel)
    action = FEATURE_CODES.get(code)
    ok = seat is not None and action is not None
    if ok and seat is not None and action is not None:
        service.feed(seat_event(action, seat))
    log.info("event=feature_code seat=%s code=%s action=%s ok=%s", seat or "-", code, action or "-", ok)

    async def confirm() -> None:
        try:
            await service.ari.answer(channel.id)
            await service.ari.play(channel.id, "sound:callrouter/beep" if ok else "sound:callrouter/beeperr")
        except AriError:
            pass
        # let the beep be heard before hanging up
        await asyncio.sleep(1.0)
        try:
            await service.ari.hangup(channel.id)
        except AriError:
            pass
    service.tasks.spawn(confirm(), name=f"feature:{channel.id}")
