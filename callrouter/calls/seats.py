"""Seats as Asterisk sees them: which PJSIP endpoint is which seat, and watching their
registrations (EndpointStateChange, or a registrar's list in a cluster)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from callrouter.acd import LinesConfig
from callrouter.ari import AriClient, AriError
from callrouter.logs import q

log = logging.getLogger("callrouter.calls")


def endpoint_seats(config: LinesConfig) -> dict[str, str]:
    """PJSIP endpoint -> seat id, for every line's seats and the overflow pool."""
    mapping = {s.endpoint: s.id for line in config.lines for s in line.seats}
    mapping.update({p.endpoint: p.id for p in config.pool})
    return mapping


def endpoint_of_channel(name: str) -> str:
    """PJSIP/s110-01-0000002a -> s110-01."""
    return name.split("/", 1)[-1].rsplit("-", 1)[0]


async def watch_endpoints(ari: AriClient, endpoints: list[str], on_state: Callable[[str, str], None]) -> None:
    """Subscribe to the seats' endpoints (EndpointStateChange: registered or not) and
    read their state now (``on_state(endpoint, state)`` for every PJSIP endpoint).

    Only the seats' endpoints, never the whole technology (``endpoint:PJSIP``): the
    trunk is an endpoint too, and its EndpointStateChange, sent at every arrival and
    every departure, lists the id of every channel on it. Measured at 1,400 held:
    about 30 KB per event, 100 events a second while callers come and go, built and
    written by Asterisk's one ARI taskprocessor of the application, which backed up
    (500+ queued) until PJSIP ignored new INVITEs (answered at the caller's
    retransmission, 0.5 s later) and decoded by the engine's event loop.
    """
    try:
        # an older engine's subscription to every PJSIP endpoint outlives it in Asterisk;
        # Asterisk 22.10 answers 200 but keeps it (reconcile warns, see wide_endpoint_watch)
        await ari.unsubscribe("endpoint:PJSIP")
    except AriError:
        pass  # 422: not subscribed (the usual case)
    sources = [f"endpoint:PJSIP/{endpoint}" for endpoint in endpoints]
    try:
        if sources:
            await ari.subscribe(*sources)
    except AriError:
        # one endpoint Asterisk does not have (a seat added to lines.toml since
        # `callrouter asterisk up`) fails the whole request: one at a time
        for source in sources:
            try:
                await ari.subscribe(source)
            except AriError as exc:
                log.warning("event=endpoint_subscribe_failed source=%s error=%s", source, q(exc))
    try:
        for resource, state in await ari.list_endpoints("PJSIP"):
            on_state(resource, state)  # it knows which endpoints are seats (the trunk is not)
    except AriError as exc:
        log.warning("event=endpoint_list_failed error=%s", q(exc))


async def poll_registrations(fetch: Callable[[], Iterable[str]], endpoints: Callable[[], Iterable[str]],
                             on_state: Callable[[str, str], None], every_s: float = 1.0) -> None:
    """Seat presence from a registrar outside Asterisk (Kamailio in a cluster, whose nodes
    reach every seat through it, so their endpoint states say nothing): every ``every_s``
    ``fetch()`` (blocking: run in a thread) names the registered endpoints, and each seat
    endpoint's state goes to ``on_state`` (``online``/``offline``; only changes matter to
    it). A registrar that does not answer changes nobody: seats keep their last state."""
    failing = False
    while True:
        try:
            registered = set(await asyncio.to_thread(fetch))
        except (OSError, ValueError) as exc:  # the registrar's control socket, its answer
            if not failing:
                log.warning("event=registrations_unavailable error=%s: seats keep their state", q(exc))
            failing = True
        else:
            if failing:
                log.info("event=registrations_available")
            failing = False
            for endpoint in endpoints():
                on_state(endpoint, "online" if endpoint in registered else "offline")
        await asyncio.sleep(every_s)
