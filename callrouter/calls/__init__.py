"""The imperative shell: ARI events in, ACD events out; ACD actions in, ARI requests out.

`callrouter.calls.engine.run_engine` wires it all (imported from there: the engine also
pulls in the API, which itself uses this package).
"""

from callrouter.calls.model import CallPhase, LiveCall, SeatLeg
from callrouter.calls.service import CallService
from callrouter.calls.stasis import StasisRouter

__all__ = ["CallPhase", "CallService", "LiveCall", "SeatLeg", "StasisRouter"]
