"""Where the engine listens for the callers' audio, and whether every Asterisk can reach it.

The address is also what the ExternalMedia channel is told to send to (``external_host``),
so it must be one concrete address of the engine's machine that each Asterisk routes to:
on one machine any loopback address does (each cluster node on its own 127.x address
sends to the engine's); with nodes on other machines a loopback address cannot work, and
the engine says so at start instead of setting up snoops whose audio never arrives.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

UNSPECIFIED = ("", "0.0.0.0", "::")
FALLBACK = "127.0.0.1"


def listen_address(speech_rtp_bind: str, http_bind: str) -> str:
    """``speech_rtp_bind`` when set, else ``http_bind`` (where the one Asterisk's HTTP is:
    the engine runs beside it); an unspecified address becomes 127.0.0.1, since Asterisk
    cannot be told to send to 0.0.0.0."""
    chosen = speech_rtp_bind.strip() or http_bind.strip()
    return FALLBACK if chosen in UNSPECIFIED else chosen


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: taken to be another machine


def unreachable_from(listen: str, node_addresses: Iterable[str]) -> str | None:
    """Why the nodes at ``node_addresses`` cannot send audio to ``listen``; None when they can
    (both on loopback, or ``listen`` is not a loopback address)."""
    if not _is_loopback(listen):
        return None
    remote = [a for a in node_addresses if not _is_loopback(a)]
    if not remote:
        return None
    return (f"the engine listens for the callers' audio on {listen}, a loopback address, but the node(s) at "
            f"{', '.join(remote)} are on other machines and cannot send to it: set speech_rtp_bind to an address "
            "of the engine's machine that every node reaches (UDP, any port)")
