"""ARI events -> CallService calls. Nothing else: no decisions and no I/O here.

Runs synchronously inside the event reader, so it must stay fast: the PJSIP
distributor stops taking INVITEs when Asterisk's ARI taskprocessor backs up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from callrouter.ari import (
    ChannelDestroyed,
    ChannelDtmfReceived,
    EndpointStateChange,
    Event,
    PlaybackEvent,
    StasisEnd,
    StasisStart,
)
from callrouter.calls.features import handle_feature
from callrouter.calls.recovery import ADOPTED
from callrouter.calls.service import LEG_PREFIX, SIDE_PREFIX, CallService

log = logging.getLogger("callrouter.calls")


class StasisRouter:
    def __init__(self, service: CallService) -> None:
        self.service = service
        # several engines (callrouter.ha): None with one engine. ``acting`` says whether
        # this engine leads now; a standby (or a holder not sure of its lease) ignores
        # every event; ``on_broadcast`` claims an offered call
        self.acting: Callable[[], bool] | None = None
        self.on_broadcast: Callable[[Event], None] | None = None
        # a channel moved in from another engine's application arrived (take-over)
        self.on_adopted: Callable[[str], None] | None = None

    def __call__(self, event: Event) -> None:
        service = self.service
        if self.acting is not None:
            if event.type == "CallBroadcast":
                if self.on_broadcast is not None:
                    self.on_broadcast(event)
                return
            if not self.acting():
                return
            # a channel moved in from another engine's application: the take-over's
            # reconcile adopts it, with what the snapshot and Asterisk say
            if isinstance(event, StasisStart) and event.args[:1] == (ADOPTED,):
                if self.on_adopted is not None:
                    self.on_adopted(event.channel.id)
                return
        if isinstance(event, StasisStart):
            kind = event.args[0] if event.args else ""
            if event.channel.id.startswith(SIDE_PREFIX):
                return  # a snoop or external media channel the speech feature made
            if kind == "seat" or event.channel.id.startswith(LEG_PREFIX):
                service.leg_answered(event.channel, event.args)
            elif kind == "feature":
                handle_feature(service, event.channel, event.args[1] if len(event.args) > 1 else "")
            else:
                service.call_arrived(event.channel, event.args)
        elif isinstance(event, StasisEnd | ChannelDestroyed):
            cid = event.channel.id
            cause = event.cause if isinstance(event, ChannelDestroyed) else 16
            if cid in service.legs:
                service.leg_ended(cid, cause)
            elif cid in service.calls:
                if service.recorder is not None and service.recorder.left(cid):
                    return  # the caller left for the recording detour: back in a moment
                service.caller_ended(cid, event.cause_txt if isinstance(event, ChannelDestroyed) else "hang-up")
        elif event.type == "ChannelTransfer":
            service.seat_refer(event.raw)
        elif isinstance(event, ChannelDtmfReceived):
            if event.channel.id in service.legs:
                service.seat_dtmf(event.channel.id, event.digit)
        elif isinstance(event, PlaybackEvent) and event.type == "PlaybackFinished":
            service.playback_finished(event.playback_id)
        elif isinstance(event, EndpointStateChange) and event.technology == "PJSIP" and not service.presence_external:
            service.endpoint_state(event.resource, event.state)
