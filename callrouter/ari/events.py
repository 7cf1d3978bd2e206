"""Typed ARI events: the JSON Asterisk sends on the events WebSocket, as dataclasses.

Only the fields callrouter reads are typed; the raw message stays on every event for
logging. Unknown event types come through as ``UnknownEvent`` and are ignored by the
shell rather than crashing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    state: str
    caller_number: str
    caller_name: str
    exten: str
    context: str
    creationtime: str
    channelvars: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Channel:
        caller = data.get("caller") or {}
        dialplan = data.get("dialplan") or {}
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            state=str(data.get("state", "")),
            caller_number=str(caller.get("number", "")),
            caller_name=str(caller.get("name", "")),
            exten=str(dialplan.get("exten", "")),
            context=str(dialplan.get("context", "")),
            creationtime=str(data.get("creationtime", "")),
            channelvars={str(k): str(v) for k, v in (data.get("channelvars") or {}).items()},
        )


@dataclass(frozen=True)
class Bridge:
    id: str
    bridge_type: str
    channels: tuple[str, ...]
    name: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bridge:
        return cls(
            id=str(data.get("id", "")),
            bridge_type=str(data.get("bridge_type", "")),
            channels=tuple(data.get("channels") or ()),
            name=str(data.get("name", "")),
        )


@dataclass(frozen=True)
class Event:
    type: str
    timestamp: str
    application: str
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class StasisStart(Event):
    channel: Channel
    args: tuple[str, ...]
    replace_channel: str | None


@dataclass(frozen=True)
class StasisEnd(Event):
    channel: Channel


@dataclass(frozen=True)
class ChannelDestroyed(Event):
    channel: Channel
    cause: int
    cause_txt: str


@dataclass(frozen=True)
class ChannelStateChange(Event):
    channel: Channel


@dataclass(frozen=True)
class ChannelHangupRequest(Event):
    channel: Channel


@dataclass(frozen=True)
class ChannelDtmfReceived(Event):
    channel: Channel
    digit: str


@dataclass(frozen=True)
class PlaybackEvent(Event):
    playback_id: str
    target_uri: str
    state: str


@dataclass(frozen=True)
class ChannelEnteredBridge(Event):
    channel: Channel
    bridge: Bridge


@dataclass(frozen=True)
class ChannelLeftBridge(Event):
    channel: Channel
    bridge: Bridge


@dataclass(frozen=True)
class EndpointStateChange(Event):
    technology: str
    resource: str
    state: str  # "online" once a contact is registered, "offline" otherwise


@dataclass(frozen=True)
class UnknownEvent(Event):
    pass


def parse_event(data: dict[str, Any]) -> Event:
    etype = str(data.get("type", ""))
    base: dict[str, Any] = {
        "type": etype,
        "timestamp": str(data.get("timestamp", "")),
        "application": str(data.get("application", "")),
        "raw": data,
    }
    chan = data.get("channel")
    channel = Channel.from_json(chan) if isinstance(chan, dict) else None
    if etype == "StasisStart" and channel:
        rep = data.get("replace_channel")
        return StasisStart(**base, channel=channel, args=tuple(str(a) for a in data.get("args") or ()),
                           replace_channel=str(rep["id"]) if isinstance(rep, dict) else None)
    if etype == "StasisEnd" and channel:
        return StasisEnd(**base, channel=channel)
    if etype == "ChannelDestroyed" and channel:
        return ChannelDestroyed(**base, channel=channel, cause=int(data.get("cause", 0) or 0),
                                cause_txt=str(data.get("cause_txt", "")))
    if etype == "ChannelStateChange" and channel:
        return ChannelStateChange(**base, channel=channel)
    if etype == "ChannelHangupRequest" and channel:
        return ChannelHangupRequest(**base, channel=channel)
    if etype == "ChannelDtmfReceived" and channel:
        return ChannelDtmfReceived(**base, channel=channel, digit=str(data.get("digit", "")))
    if etype in ("PlaybackStarted", "PlaybackFinished", "PlaybackContinuing"):
        pb = data.get("playback") or {}
        return PlaybackEvent(**base, playback_id=str(pb.get("id", "")), target_uri=str(pb.get("target_uri", "")),
                             state=str(pb.get("state", "")))
    if etype in ("ChannelEnteredBridge", "ChannelLeftBridge") and channel and isinstance(data.get("bridge"), dict):
        cls = ChannelEnteredBridge if etype == "ChannelEnteredBridge" else ChannelLeftBridge
        return cls(**base, channel=channel, bridge=Bridge.from_json(data["bridge"]))
    if etype == "EndpointStateChange" and isinstance(data.get("endpoint"), dict):
        ep = data["endpoint"]
        return EndpointStateChange(**base, technology=str(ep.get("technology", "")),
                                   resource=str(ep.get("resource", "")), state=str(ep.get("state", "")))
    return UnknownEvent(**base)
