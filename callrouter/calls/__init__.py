"""The imperative shell: ARI events in, ACD events out; ACD actions in, ARI requests out.

Wired in `callrouter.engine.run_engine`, above this package and the API (which uses it):
nothing here imports the API, speech or recordings.
"""

from callrouter.calls.model import CallPhase, LiveCall, SeatLeg
from callrouter.calls.service import CallService
from callrouter.calls.stasis import StasisRouter

__all__ = ["CallPhase", "CallService", "LiveCall", "SeatLeg", "StasisRouter"]
