"""Call recordings: MixMonitor on the caller's channel (``recorder``), files kept by ticket
and date (``files``), retention per line with legal hold and the purge (``purge``); the
API streams them to a supervisor or the seat that took the call, every access on record.

The engine imports ``callrouter.recordings.recorder`` itself; this package's top level
stays light for the CLI's purge.
"""

from .files import retain_until, store_relpath
from .purge import PurgeReport, purge_recordings

__all__ = ["PurgeReport", "purge_recordings", "retain_until", "store_relpath"]
