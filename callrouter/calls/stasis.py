"""ARI events -> CallService calls. Nothing else: no decisions and no I/O here.

Runs synchronously inside the event reader, so it must stay fast: the PJSIP
distributor stops taking INVITEs when Asterisk's ARI taskprocessor backs up.
"""

from __future__ import annotations

import logging

from callrouter.ari import ChannelDestroyed, Event, PlaybackEvent, StasisEnd, StasisStart
from callrouter.calls.service import CallService

log = logging.getLogger("callrouter.calls")


class StasisRouter:
    def __init__(self, service: CallService) -> None:
        self.service = service

    def __call__(self, event: Event) -> None:
        if isinstance(event, StasisStart):
            self.service.call_arrived(event.channel, event.args)
        elif isinstance(event, StasisEnd):
            self.service.call_ended(event.channel.id, "left the application")
        elif isinstance(event, ChannelDestroyed):
            # normally preceded by StasisEnd; this covers a channel destroyed mid-reconcile
            self.service.call_ended(event.channel.id, event.cause_txt)
        elif isinstance(event, PlaybackEvent) and event.type == "PlaybackFinished":
            self.service.playback_finished(event.playback_id)
