"""ARI client: REST + events WebSocket on aiohttp, typed events, reconnect."""

from callrouter.ari.client import AriClient, AriError
from callrouter.ari.events import (
    Bridge,
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelEnteredBridge,
    ChannelHangupRequest,
    ChannelLeftBridge,
    ChannelStateChange,
    EndpointStateChange,
    Event,
    PlaybackEvent,
    StasisEnd,
    StasisStart,
    UnknownEvent,
    parse_event,
)

__all__ = [
    "AriClient", "AriError", "Bridge", "Channel", "ChannelDestroyed", "ChannelDtmfReceived",
    "ChannelEnteredBridge", "ChannelHangupRequest", "ChannelLeftBridge", "ChannelStateChange",
    "EndpointStateChange", "Event", "PlaybackEvent", "StasisEnd", "StasisStart", "UnknownEvent", "parse_event",
]
