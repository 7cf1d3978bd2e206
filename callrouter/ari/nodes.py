"""One engine, several Asterisk nodes: one ARI connection per node behind the AriClient
interface the shell uses.

Routing needs no table the engine could lose on a restart: Asterisk's channel ids carry
the node's ``systemname`` (``node1-1764590000.12``), and every id the engine makes for a
call carries the node of that call (the caller's channel id inside it, or the node's name
as its own part: ``cr-leg-node1-7-1764590000``, ``callrouter-node1-110-hold-0``). So a
request goes to the node named by the first ``-``-separated part of its id that is a
node's name. Playbacks are also remembered (id -> node) until they finish.

Events of every node reach the one handler in each node's arrival order; each connect or
reconnect of a node runs ``on_node_connected(name, client)`` first (the shell reconciles
that node only). A node whose connection stays down for ``lost_after_s`` and whose
Asterisk does not answer a ping either is reported once to ``on_node_lost(name)``: its
calls are gone with it (a kill -9, a dead machine).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote

from callrouter.ari.client import AriClient, AriError, ConnectHandler, EventHandler, request_kind
from callrouter.ari.events import Bridge, Channel, Event, PlaybackEvent

log = logging.getLogger("callrouter.ari")

NodeConnected = Callable[[str, AriClient], Awaitable[None]]
NodeLost = Callable[[str], object]
# a resource's id sits right after these path parts (/channels/<id>/..., /bridges/<id>/...)
ID_RESOURCES = ("channels", "bridges", "playbacks")


def node_of(object_id: str, nodes: Iterable[str]) -> str | None:
    """The node an id belongs to: its first ``-``-separated part that names a node; None
    when no part does (single-node ids, or an id that is no call's)."""
    names = nodes if isinstance(nodes, frozenset | set) else frozenset(nodes)
    if not names:
        return None
    for part in object_id.split("-"):
        if part in names:
            return part
    return None


def path_id(path: str, params: dict[str, str] | None = None) -> str | None:
    """The id a REST request acts on: ``/channels/<id>/...``, ``/bridges/<id>/...``,
    ``/playbacks/<id>``; an originate or external media by its ``channelId``."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if len(parts) >= 2 and parts[0] in ID_RESOURCES and parts[1] not in ("externalMedia", "create"):
        return parts[1]
    if params and params.get("channelId"):
        return params["channelId"]
    return None


class NodesClient(AriClient):
    """Several nodes' AriClients as one. ``clients`` maps node name (its systemname) to
    its client; the first is where requests naming no node go (there should be none)."""

    def __init__(self, clients: dict[str, AriClient], *, lost_after_s: float = 3.0) -> None:
        if not clients:
            raise ValueError("NodesClient needs at least one node")
        first = next(iter(clients.values()))
        super().__init__(first.base_url, "", "", first.app)
        self.clients = clients
        self.gate = self._gate  # the base class set it before the clients were known
        self.names = frozenset(clients)
        self.lost_after_s = lost_after_s
        self.playbacks: dict[str, str] = {}  # playback id -> node, until PlaybackFinished
        self.down_since: dict[str, float] = {}
        self.lost: set[str] = set()  # nodes reported lost and not back yet
        self.node_counts: Counter[str] = Counter()  # connects and losses by node

    @property
    def gate(self) -> Callable[[], bool] | None:
        return self._gate

    @gate.setter
    def gate(self, gate: Callable[[], bool] | None) -> None:
        """Several engines (callrouter.ha): every node's client asks the lease before it
        sends anything, as the one client does on a single Asterisk."""
        self._gate = gate
        for client in getattr(self, "clients", {}).values():
            client.gate = gate

    def node(self, object_id: str) -> str:
        name = node_of(object_id, self.names) or self.playbacks.get(object_id)
        if name is None:
            raise AriError("-", object_id, 0, f"no node named in id {object_id!r} (nodes: {sorted(self.names)})")
        return name

    def client_for(self, object_id: str) -> AriClient:
        return self.clients[self.node(object_id)]

    async def open(self) -> None:
        for client in self.clients.values():
            await client.open()

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    # ------------------------------------------------------------------ REST
    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: dict[str, Any] | None = None, over_ws: bool = True) -> Any:
        object_id = path_id(path, params)
        if object_id is not None:
            self.requests[request_kind(method, path)] += 1
            return await self.client_for(object_id).request(method, path, params=params, body=body,
                                                           over_ws=over_ws)
        # no object: every connected node (an application's subscription or filter)
        result: Any = None
        failure: AriError | None = None
        for name, client in self.clients.items():
            if not client.connected.is_set():
                continue
            try:
                result = await client.request(method, path, params=params, body=body, over_ws=over_ws)
            except AriError as exc:
                log.warning("event=node_request_failed node=%s method=%s path=%s error=%s", name, method, path, exc)
                failure = exc
        if failure is not None and result is None:
            raise failure
        return result

    async def play(self, channel_id: str, media: str, playback_id: str | None = None) -> str:
        node = self.node(channel_id)
        if playback_id:
            self.playbacks[playback_id] = node
        try:
            got = await self.clients[node].play(channel_id, media, playback_id)
        except AriError:
            if playback_id:
                self.playbacks.pop(playback_id, None)
            raise
        self.requests[request_kind("POST", "/channels/c/play")] += 1
        if got:
            self.playbacks[got] = node
        return got

    async def stop_playback(self, playback_id: str) -> None:
        self.requests["DELETE playbacks"] += 1
        try:
            await self.client_for(playback_id).stop_playback(playback_id)
        finally:
            self.playbacks.pop(playback_id, None)

    # listings: every reachable node's, merged (a node that does not answer is skipped)
    async def _each(self, what: str, fn: Callable[[AriClient], Awaitable[list[Any]]]) -> list[Any]:
        out: list[Any] = []
        for name, client in self.clients.items():
            try:
                out += await fn(client)
            except AriError as exc:
                log.warning("event=node_listing_failed node=%s what=%s error=%s", name, what, exc)
        return out

    async def applications(self) -> list[dict[str, Any]]:
        """Every node's applications: one entry per node and application (a take-over
        moves each node's channels on that node)."""
        return await self._each("applications", lambda c: c.applications())

    async def list_channels(self) -> list[Channel]:
        return await self._each("channels", lambda c: c.list_channels())

    async def list_bridges(self) -> list[Bridge]:
        return await self._each("bridges", lambda c: c.list_bridges())

    async def list_endpoints(self, technology: str = "PJSIP") -> list[tuple[str, str]]:
        return await self._each("endpoints", lambda c: c.list_endpoints(technology))

    async def application(self) -> dict[str, Any]:
        merged: dict[str, Any] = {"name": self.app, "channel_ids": [], "bridge_ids": [], "endpoint_ids": []}
        for name, client in self.clients.items():
            try:
                app = await client.application()
            except AriError as exc:
                log.warning("event=node_listing_failed node=%s what=application error=%s", name, exc)
                continue
            for key in ("channel_ids", "bridge_ids", "endpoint_ids"):
                merged[key] += list(app.get(key) or [])
        return merged

    def metrics_text(self) -> str:
        for client in self.clients.values():
            self.events.update(client.events)
            client.events.clear()
        out = [super().metrics_text(), "# TYPE callrouter_node_connected gauge"]
        out += [f'callrouter_node_connected{{node="{n}"}} {int(c.connected.is_set())}' for n, c in self.clients.items()]
        out.append("# TYPE callrouter_node_lost_total counter")
        out += [f'callrouter_node_lost_total{{node="{n}"}} {self.node_counts[f"lost:{n}"]}' for n in self.clients]
        return "\n".join(out) + "\n"

    def status(self) -> dict[str, Any]:
        return {"nodes": {n: {"connected": c.connected.is_set(), "lost": n in self.lost,
                              "connects": self.node_counts[f"connect:{n}"], "losses": self.node_counts[f"lost:{n}"]}
                          for n, c in self.clients.items()}}

    # ------------------------------------------------------------------ events
    def _handler(self, handler: EventHandler) -> EventHandler:
        def handle(event: Event) -> None:
            if isinstance(event, PlaybackEvent) and event.type == "PlaybackFinished":
                self.playbacks.pop(event.playback_id, None)
            handler(event)
        return handle

    async def run_events(self, handler: EventHandler, on_connected: ConnectHandler, *,
                         backoff_initial: float = 0.2, backoff_max: float = 5.0) -> None:
        async def each(_name: str, _client: AriClient) -> None:
            await on_connected()
        await self.run_nodes(handler, each, lambda _name: None, backoff_initial=backoff_initial,
                             backoff_max=backoff_max)

    async def run_nodes(self, handler: EventHandler, on_node_connected: NodeConnected, on_node_lost: NodeLost, *,
                        backoff_initial: float = 0.2, backoff_max: float = 1.0, watch_s: float = 0.25) -> None:
        """Every node's events into ``handler``, reconnecting each on its own; cancel to stop."""
        merged = self._handler(handler)

        def connected_hook(name: str, client: AriClient) -> ConnectHandler:
            async def hook() -> None:
                self.node_counts[f"connect:{name}"] += 1
                self.down_since.pop(name, None)
                if name in self.lost:
                    self.lost.discard(name)
                    log.info("event=node_back node=%s", name)
                await on_node_connected(name, client)
            return hook

        async with asyncio.TaskGroup() as group:
            for name, client in self.clients.items():
                group.create_task(client.run_events(merged, connected_hook(name, client),
                                                    backoff_initial=backoff_initial, backoff_max=backoff_max),
                                  name=f"ari-events:{name}")
            group.create_task(self._watch(on_node_lost, watch_s), name="ari-nodes-watch")

    @staticmethod
    async def _answers(client: AriClient, timeout_s: float = 1.0) -> bool:
        try:
            await asyncio.wait_for(client.request("GET", "/asterisk/ping", over_ws=False), timeout_s)
        except (AriError, TimeoutError):
            return False
        return True

    async def _watch(self, on_node_lost: NodeLost, every_s: float) -> None:
        """A node whose connection stays down for ``lost_after_s`` after it was up is lost."""
        ever_up: set[str] = set()
        while True:
            now = time.monotonic()
            for name, client in self.clients.items():
                if client.connected.is_set():
                    ever_up.add(name)
                    self.down_since.pop(name, None)
                    continue
                if name not in ever_up or name in self.lost:
                    continue
                since = self.down_since.setdefault(name, now)
                if now - since >= self.lost_after_s:
                    if await self._answers(client):
                        # Asterisk is there, only its events socket is not: its calls are
                        # not lost (the reconnect reconciles them); judged again later
                        self.down_since[name] = time.monotonic()
                        log.warning("event=node_events_down node=%s down_s=%.1f: Asterisk answers, calls kept",
                                    name, now - since)
                        continue
                    self.lost.add(name)
                    self.node_counts[f"lost:{name}"] += 1
                    log.error("event=node_lost node=%s down_s=%.1f", name, now - since)
                    try:
                        on_node_lost(name)
                    except Exception:
                        log.exception("event=node_lost_handler_failed node=%s", name)
            if any(c.connected.is_set() for c in self.clients.values()):
                self.connected.set()
            else:
                self.connected.clear()
            await asyncio.sleep(every_s)
