"""Asterisk's events as an onlooker sees them, for e2e assertions on what Asterisk did
(which sounds it played to which channel, in what order, for how long).

A WebSocket of its own ARI application, beside the engine's, subscribed to every event
source (``subscribeAll``): it receives the events of every channel, bridge and playback
and owns no channel, so the engine's call handling is untouched. Events are kept in
arrival order, as Asterisk sent them (plain dicts).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from callrouter.config import Settings


class AriWatch:
    def __init__(self, settings: Settings) -> None:
        self.app = f"crtest-watch-{secrets.token_hex(4)}"
        ws = settings.ari_url.replace("http://", "ws://", 1)
        self._url = f"{ws}/events?app={quote(self.app)}&subscribeAll=true"
        token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=self.app, daemon=True)

    def start(self, timeout: float = 10.0) -> AriWatch:
        self._thread.start()
        if not self._connected.wait(timeout):
            self.stop()
            raise AssertionError(f"ARI watcher: no events WebSocket within {timeout:.0f} s ({self._error!r})")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            raise AssertionError("ARI watcher thread did not end within 10 s")

    def events(self, where: Callable[[dict[str, Any]], bool] = lambda _e: True) -> list[dict[str, Any]]:
        if self._error is not None:
            raise AssertionError(f"ARI watcher failed: {self._error!r}")
        with self._lock:
            return [e for e in self._events if where(e)]

    def channels(self) -> dict[str, dict[str, Any]]:
        """Every channel seen, by id: its latest snapshot (name, state, caller ...)."""
        seen: dict[str, dict[str, Any]] = {}
        for e in self.events(lambda e: isinstance(e.get("channel"), dict)):
            seen[str(e["channel"].get("id"))] = e["channel"]
        return seen

    def channel_caller(self, channel_id: str) -> str:
        """The caller number Asterisk showed for a channel."""
        return str(self.channels().get(channel_id, {}).get("caller", {}).get("number", ""))

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # noqa: BLE001 - raised by events() and start() in the test
            self._error = exc

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession(headers=self._headers) as session, session.ws_connect(self._url) as ws:
            self._connected.set()
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                while not stopping.done():
                    receive = asyncio.ensure_future(ws.receive())
                    await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not receive.done():
                        receive.cancel()
                        break
                    msg = receive.result()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    with self._lock:
                        self._events.append(json.loads(msg.data))
            finally:
                stopping.cancel()
