"""The imperative shell: ARI events in, ARI requests and ticket ops out."""

from callrouter.calls.engine import run_engine
from callrouter.calls.service import CallService, LiveCall
from callrouter.calls.stasis import StasisRouter

__all__ = ["CallService", "LiveCall", "StasisRouter", "run_engine"]
