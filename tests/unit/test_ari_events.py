"""parse_event: ARI event JSON (as Asterisk 20+ sends it) -> typed dataclasses; ARI timestamps."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from callrouter.ari import (
    Bridge,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelEnteredBridge,
    ChannelHangupRequest,
    ChannelLeftBridge,
    ChannelStateChange,
    PlaybackEvent,
    StasisEnd,
    StasisStart,
    UnknownEvent,
    parse_event,
)
from callrouter.calls.service import parse_ari_time

TS = "2026-11-29T05:43:52.150+0000"
COMMON = {"asterisk_id": "52:54:00:12:34:56", "application": "callrouter", "timestamp": TS}

CHANNEL: dict[str, Any] = {
    "id": "1795844632.42",
    "name": "PJSIP/trunk-0000002a",
    "state": "Ring",
    "protocol_id": "3c2a7d1e-9f1b@127.0.0.1",
    "caller": {"name": "Zhang San", "number": "13800138000"},
    "connected": {"name": "", "number": ""},
    "accountcode": "",
    "dialplan": {"context": "callrouter-engine", "exten": "s", "priority": 2,
                 "app_name": "Stasis", "app_data": "callrouter,05786119119"},
    "creationtime": "2026-11-29T05:43:50.002+0000",
    "language": "zh",
    "channelvars": {"CR_DIALLED": "05786119119", "CR_HELD": "1"},
}

BRIDGE: dict[str, Any] = {
    "id": "callrouter-110-hold",
    "technology": "holding_bridge",
    "bridge_type": "holding",
    "bridge_class": "stasis",
    "creator": "Stasis",
    "name": "callrouter-110-hold",
    "channels": ["1795844632.42", "1795844633.43"],
    "creationtime": "2026-11-29T05:40:00.000+0000",
    "video_mode": "none",
}


def event(etype: str, **fields: Any) -> dict[str, Any]:
    return {"type": etype, **copy.deepcopy(COMMON), **copy.deepcopy(fields)}


def test_stasis_start_with_args_and_channelvars() -> None:
    data = event("StasisStart", args=["05786119119"], channel=CHANNEL)
    ev = parse_event(data)
    assert isinstance(ev, StasisStart)
    assert (ev.type, ev.timestamp, ev.application) == ("StasisStart", TS, "callrouter")
    assert ev.args == ("05786119119",)
    assert ev.replace_channel is None
    assert ev.channel == Channel(
        id="1795844632.42", name="PJSIP/trunk-0000002a", state="Ring", caller_number="13800138000",
        caller_name="Zhang San", exten="s", context="callrouter-engine",
        creationtime="2026-11-29T05:43:50.002+0000",
        channelvars={"CR_DIALLED": "05786119119", "CR_HELD": "1"},
    )
    assert ev.raw is data  # kept for logging


def test_stasis_start_replacing_a_channel() -> None:
    replaced = {**CHANNEL, "id": "1795844632.41"}
    ev = parse_event(event("StasisStart", args=[], channel=CHANNEL, replace_channel=replaced))
    assert isinstance(ev, StasisStart)
    assert ev.replace_channel == "1795844632.41"
    assert ev.args == ()


def test_stasis_end() -> None:
    ev = parse_event(event("StasisEnd", channel={**CHANNEL, "state": "Up"}))
    assert isinstance(ev, StasisEnd)
    assert ev.channel.id == "1795844632.42"
    assert ev.channel.state == "Up"


def test_channel_destroyed_with_cause() -> None:
    ev = parse_event(event("ChannelDestroyed", cause=16, cause_txt="Normal Clearing", channel=CHANNEL))
    assert isinstance(ev, ChannelDestroyed)
    assert (ev.cause, ev.cause_txt) == (16, "Normal Clearing")
    assert ev.channel.id == "1795844632.42"


def test_playback_finished() -> None:
    playback = {"id": "greet-1795844632.42", "media_uri": "sound:callrouter/greeting-110",
                "target_uri": "channel:1795844632.42", "language": "zh", "state": "done"}
    ev = parse_event(event("PlaybackFinished", playback=playback))
    assert isinstance(ev, PlaybackEvent)
    assert ev.type == "PlaybackFinished"
    assert (ev.playback_id, ev.target_uri, ev.state) == ("greet-1795844632.42", "channel:1795844632.42", "done")
    started = parse_event(event("PlaybackStarted", playback={**playback, "state": "playing"}))
    assert isinstance(started, PlaybackEvent)
    assert (started.type, started.state) == ("PlaybackStarted", "playing")


def test_channel_entered_and_left_bridge() -> None:
    ev = parse_event(event("ChannelEnteredBridge", bridge=BRIDGE, channel=CHANNEL))
    assert isinstance(ev, ChannelEnteredBridge)
    assert ev.channel.id == "1795844632.42"
    assert ev.bridge == Bridge(id="callrouter-110-hold", bridge_type="holding",
                               channels=("1795844632.42", "1795844633.43"), name="callrouter-110-hold")
    left = parse_event(event("ChannelLeftBridge", bridge={**BRIDGE, "channels": []}, channel=CHANNEL))
    assert isinstance(left, ChannelLeftBridge)
    assert left.bridge.channels == ()


def test_channel_state_hangup_request_and_dtmf() -> None:
    assert isinstance(parse_event(event("ChannelStateChange", channel=CHANNEL)), ChannelStateChange)
    assert isinstance(parse_event(event("ChannelHangupRequest", cause=16, channel=CHANNEL)),
                      ChannelHangupRequest)
    dtmf = parse_event(event("ChannelDtmfReceived", digit="5", duration_ms=120, channel=CHANNEL))
    assert isinstance(dtmf, ChannelDtmfReceived)
    assert dtmf.digit == "5"


def test_unknown_type_is_unknown_event() -> None:
    data = event("ChannelVarset", variable="CR_HELD", value="2", channel=CHANNEL)
    ev = parse_event(data)
    assert type(ev) is UnknownEvent
    assert (ev.type, ev.application, ev.raw) == ("ChannelVarset", "callrouter", data)


def test_missing_fields_are_tolerated() -> None:
    ev = parse_event({"type": "StasisStart", "channel": {"id": "c1"}})
    assert isinstance(ev, StasisStart)
    assert (ev.timestamp, ev.application, ev.args, ev.replace_channel) == ("", "", (), None)
    assert ev.channel == Channel(id="c1", name="", state="", caller_number="", caller_name="", exten="",
                                 context="", creationtime="", channelvars={})
    destroyed = parse_event({"type": "ChannelDestroyed", "channel": {"id": "c1"}})
    assert isinstance(destroyed, ChannelDestroyed)
    assert (destroyed.cause, destroyed.cause_txt) == (0, "")
    playback = parse_event({"type": "PlaybackFinished"})
    assert isinstance(playback, PlaybackEvent)
    assert (playback.playback_id, playback.target_uri, playback.state) == ("", "", "")
    nulls = parse_event({"type": "StasisStart", "args": None,
                         "channel": {"id": "c1", "caller": None, "dialplan": None, "channelvars": None}})
    assert isinstance(nulls, StasisStart)
    assert (nulls.args, nulls.channel.caller_number, nulls.channel.channelvars) == ((), "", {})


def test_events_without_their_objects_are_unknown() -> None:
    # A channel event without a channel (or a bridge event without a bridge) cannot be
    # handled: it comes through as UnknownEvent rather than an event with holes.
    assert type(parse_event({"type": "StasisStart"})) is UnknownEvent
    assert type(parse_event({"type": "StasisEnd", "channel": "c1"})) is UnknownEvent
    assert type(parse_event({"type": "ChannelEnteredBridge", "channel": CHANNEL})) is UnknownEvent
    assert type(parse_event({})) is UnknownEvent


def test_raw_is_left_out_of_equality_and_repr() -> None:
    a = parse_event(event("StasisEnd", channel=CHANNEL))
    b = parse_event({**event("StasisEnd", channel=CHANNEL), "asterisk_id": "other"})
    assert a == b
    assert "raw" not in repr(a)


# --- ARI timestamps (callrouter.calls.service.parse_ari_time) --------------------------
def test_parse_ari_time() -> None:
    assert parse_ari_time(TS) == datetime(2026, 11, 29, 5, 43, 52, 150000, tzinfo=UTC)
    # an Asterisk in local time (UTC+8) still gives UTC
    local = parse_ari_time("2026-11-29T13:43:52.150+0800")
    assert local == datetime(2026, 11, 29, 5, 43, 52, 150000, tzinfo=UTC)
    assert local is not None and local.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["", "yesterday", "2026-11-29T05:43:52+0000", "2026-11-29 05:43:52.150"])
def test_parse_ari_time_rejects_other_forms(value: str) -> None:
    assert parse_ari_time(value) is None
