"""ARI client on aiohttp: REST requests and the events WebSocket with reconnect.

The domain never sees HTTP or JSON: it calls typed methods here and receives typed
events. When the WebSocket drops, Asterisk keeps the channels in Stasis but loses the
events of the gap and replays nothing, so every (re)connect calls ``on_connected``
first: the shell reconciles with what Asterisk holds before handling new events.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from callrouter.ari.events import Bridge, Channel, Event, parse_event

log = logging.getLogger("callrouter.ari")

EventHandler = Callable[[Event], None]
# a request over the socket is answered in milliseconds; waiting longer only delays the
# fall-back to HTTP
WS_REQUEST_TIMEOUT_S = 3.0
ConnectHandler = Callable[[], Awaitable[None]]


def request_kind(method: str, path: str) -> str:
    """A request's kind without its ids: ``POST /channels/c1/play/p1`` -> ``POST channels/play``
    (resource names and actions sit at even positions of ARI paths; ``asterisk/ping`` is whole)."""
    parts = path.strip("/").split("/")
    if parts[0] == "asterisk":
        return f"{method} {'/'.join(parts[:2])}"
    return f"{method} {'/'.join(parts[0::2])}"


class AriError(Exception):
    """An ARI request failed: carries the HTTP status (0 when Asterisk is unreachable)."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"ARI {method} {path}: {status} {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class AriClient:
    def __init__(self, base_url: str, user: str, password: str, app: str, *,
                 request_timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.app = app
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        # REST requests ride on the events WebSocket once it is up (Asterisk 20.14/22.4+:
        # RESTRequest/RESTResponse messages): no HTTP request per call, a fraction of the
        # CPU in a storm. Before the socket is up, and for reconciliation, plain HTTP.
        self.rest_over_ws = True
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # REST over this connection's socket only once a probe request came back: seen here,
        # a socket that re-attaches to an application kept alive by its channels (after the
        # previous engine died) delivers events but never answers RESTRequests
        self._ws_rest_ready = False
        self._pending: dict[str, asyncio.Future[tuple[int, str]]] = {}
        self._ids = itertools.count(1)
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session: aiohttp.ClientSession | None = None
        self.connected = asyncio.Event()
        # what the engine costs Asterisk: requests by kind, events by type (since start)
        self.requests: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        # None (one engine): every request goes out; else only while this returns True
        self.gate: Callable[[], bool] | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            # Many concurrent requests in a storm: allow them, all to one local host.
            connector = aiohttp.TCPConnector(limit=64, limit_per_host=64)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout,
                                                  connector=connector)

    async def close(self) -> None:
        if self.requests or self.events:
            log.info("event=ari_counts requests=%d events=%d by_request=%s by_event=%s", sum(self.requests.values()),
                     sum(self.events.values()), _counts(self.requests), _counts(self.events))
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AriClient used before open()")
        return self._session

    # ------------------------------------------------------------------ REST
    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      body: dict[str, Any] | None = None, over_ws: bool = True) -> Any:
        """One REST request; over the events WebSocket when it is ready, unless ``over_ws``
        is False. Listings (every channel, every bridge, every endpoint) grow with the
        callers held and go over HTTP: Asterisk 22.10 writes a WebSocket frame on its
        thread's stack, and measured here a ``GET /channels`` answer at 1,400 held
        (about 1 MB) crashed it (segfault in ``ast_websocket_write``); on the socket such
        an answer would also hold up every event behind it."""
        if self.gate is not None and not self.gate():
            # several engines: one not sure it holds the lease (a standby, or a holder back
            # from a stall before its renewal is answered) sends Asterisk nothing
            raise AriError(method, path, 0, "this engine does not lead now")
        self.requests[request_kind(method, path)] += 1
        if over_ws and self._ws_rest_ready and self._ws is not None and not self._ws.closed:
            try:
                status, text = await self._request_ws(method, path, params, body)
            except AriError as exc:
                if "Timeout" not in exc.message:
                    raise
                # the socket stopped answering requests: HTTP for the rest of this connection
                self._ws_rest_ready = False
                log.warning("event=ari_ws_rest_timeout method=%s path=%s: falling back to HTTP", method, path)
                status, text = await self._request_http(method, path, params, body)
        else:
            status, text = await self._request_http(method, path, params, body)
        if status >= 400:
            try:
                message = json.loads(text).get("message", text)
            except (ValueError, AttributeError):
                message = text
            raise AriError(method, path, status, str(message))
        return json.loads(text) if text else None

    async def _request_http(self, method: str, path: str, params: dict[str, str] | None,
                            body: dict[str, Any] | None) -> tuple[int, str]:
        url = f"{self.base_url}{path}"
        try:
            async with self.session.request(method, url, params=params, json=body) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AriError(method, path, 0, f"{type(exc).__name__}: {exc}") from exc

    async def _request_ws(self, method: str, path: str, params: dict[str, str] | None,
                          body: dict[str, Any] | None) -> tuple[int, str]:
        ws = self._ws
        if ws is None:
            raise AriError(method, path, 0, "events WebSocket not connected")
        request_id = f"r{next(self._ids)}"
        message: dict[str, Any] = {"type": "RESTRequest", "request_id": request_id, "method": method,
                                   "uri": path.lstrip("/")}
        if params:
            message["query_strings"] = [{"name": k, "value": v} for k, v in params.items()]
        if body is not None:
            message["content_type"] = "application/json"
            message["message_body"] = json.dumps(body)
        future: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await ws.send_str(json.dumps(message))
            return await asyncio.wait_for(future, WS_REQUEST_TIMEOUT_S)
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise AriError(method, path, 0, f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    async def _probe_ws_rest(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            status, _ = await asyncio.wait_for(self._request_ws("GET", "/asterisk/ping", None, None), 2.0)
        except (AriError, TimeoutError) as exc:
            log.warning("event=ari_ws_rest_unavailable error=%r: REST requests go over HTTP on this connection", exc)
            return
        if status == 200 and self._ws is ws:
            self._ws_rest_ready = True
            log.info("event=ari_ws_rest_ready")
        else:
            log.warning("event=ari_ws_rest_unavailable status=%d: REST requests go over HTTP", status)

    def _rest_response(self, data: dict[str, Any]) -> None:
        future = self._pending.get(str(data.get("request_id", "")))
        if future is not None and not future.done():
            future.set_result((int(data.get("status_code", 0) or 0), str(data.get("message_body") or "")))

    def _fail_pending(self, why: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(why))
        self._pending.clear()

    # channels
    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{quote(channel_id)}/answer")

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        await self.request("DELETE", f"/channels/{quote(channel_id)}", params={"reason": reason})

    async def play(self, channel_id: str, media: str, playback_id: str | None = None) -> str:
        path = f"/channels/{quote(channel_id)}/play"
        if playback_id:
            path += f"/{quote(playback_id)}"
        result = await self.request("POST", path, params={"media": media})
        return str(result.get("id", playback_id or "")) if isinstance(result, dict) else (playback_id or "")

    async def start_moh(self, channel_id: str, moh_class: str = "default") -> None:
        await self.request("POST", f"/channels/{quote(channel_id)}/moh", params={"mohClass": moh_class})

    async def list_channels(self) -> list[Channel]:
        return [Channel.from_json(c) for c in await self.request("GET", "/channels", over_ws=False)]

    async def originate(self, endpoint: str, *, channel_id: str, app_args: str, timeout_s: int,
                        caller_id: str) -> Channel:
        params = {"endpoint": endpoint, "app": self.app, "appArgs": app_args, "channelId": channel_id,
                  "timeout": str(timeout_s), "callerId": caller_id}
        return Channel.from_json(await self.request("POST", "/channels", params=params))

    async def snoop(self, channel_id: str, snoop_id: str, *, spy: str = "in", app_args: str = "") -> Channel:
        """A channel that hears ``channel_id`` (``spy=in``: only what that channel sends)
        and says nothing to it; it enters this application."""
        params = {"spy": spy, "whisper": "none", "app": self.app, "snoopId": snoop_id}
        if app_args:
            params["appArgs"] = app_args
        return Channel.from_json(await self.request("POST", f"/channels/{quote(channel_id)}/snoop", params=params))

    async def external_media(self, channel_id: str, external_host: str, audio_format: str) -> Channel:
        """An ExternalMedia channel sending the audio it is given as RTP over UDP to
        ``external_host`` (host:port) in ``audio_format`` (slin16 ...)."""
        params = {"app": self.app, "channelId": channel_id, "external_host": external_host,
                  "format": audio_format, "encapsulation": "rtp", "transport": "udp", "direction": "both"}
        return Channel.from_json(await self.request("POST", "/channels/externalMedia", params=params))

    async def stop_playback(self, playback_id: str) -> None:
        await self.request("DELETE", f"/playbacks/{quote(playback_id)}")

    # bridges
    async def create_bridge(self, bridge_id: str, bridge_type: str) -> Bridge:
        return Bridge.from_json(await self.request("POST", f"/bridges/{quote(bridge_id)}",
                                                   params={"type": bridge_type}))

    async def add_to_bridge(self, bridge_id: str, *channel_ids: str) -> None:
        await self.request("POST", f"/bridges/{quote(bridge_id)}/addChannel", params={"channel": ",".join(channel_ids)})

    async def bridge_moh(self, bridge_id: str, moh_class: str = "default") -> None:
        await self.request("POST", f"/bridges/{quote(bridge_id)}/moh", params={"mohClass": moh_class})

    async def list_bridges(self) -> list[Bridge]:
        return [Bridge.from_json(b) for b in await self.request("GET", "/bridges", over_ws=False)]

    async def destroy_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{quote(bridge_id)}")

    # endpoints
    async def subscribe(self, *event_sources: str) -> None:
        """The application receives the events of these sources too (one request)."""
        await self.request("POST", f"/applications/{quote(self.app)}/subscription",
                           params={"eventSource": ",".join(event_sources)})

    async def unsubscribe(self, *event_sources: str) -> None:
        await self.request("DELETE", f"/applications/{quote(self.app)}/subscription",
                           params={"eventSource": ",".join(event_sources)})

    async def list_endpoints(self, technology: str = "PJSIP") -> list[tuple[str, str]]:
        """(resource, state) of every endpoint of ``technology``."""
        result = await self.request("GET", f"/endpoints/{quote(technology)}", over_ws=False)
        return [(str(e.get("resource", "")), str(e.get("state", ""))) for e in result or []]

    async def filter_events(self, disallowed: list[str]) -> None:
        """Ask Asterisk not to send these event types to the application at all."""
        await self.request("PUT", f"/applications/{quote(self.app)}/eventFilter",
                           body={"disallowed": [{"type": t} for t in disallowed]})

    # several engines (StasisBroadcast)
    async def claim(self, channel_id: str) -> bool:
        """Claim a broadcast channel for this application: True if ours (204), False if
        another application won it (409) or the offer expired (404)."""
        try:
            await self.request("POST", "/events/claim", params={"channelId": channel_id, "application": self.app})
        except AriError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def move(self, channel_id: str, app_args: str = "") -> None:
        """Move a channel in another application's Stasis into this one (it keeps its
        bridge; this application gets StasisStart with ``app_args``)."""
        params = {"app": self.app}
        if app_args:
            params["appArgs"] = app_args
        await self.request("POST", f"/channels/{quote(channel_id)}/move", params=params)

    async def applications(self) -> list[dict[str, Any]]:
        result = await self.request("GET", "/applications", over_ws=False)
        return [a for a in result or [] if isinstance(a, dict)]

    # application
    async def application(self) -> dict[str, Any]:
        # lists every channel and bridge the application holds: over HTTP (see request)
        result = await self.request("GET", f"/applications/{quote(self.app)}", over_ws=False)
        return result if isinstance(result, dict) else {}

    def metrics_text(self) -> str:
        """Prometheus lines: ARI requests sent by kind and events received by type."""
        out = ["# TYPE callrouter_ari_requests_total counter"]
        out += [f'callrouter_ari_requests_total{{request="{k}"}} {n}' for k, n in sorted(self.requests.items())]
        out.append("# TYPE callrouter_ari_events_total counter")
        out += [f'callrouter_ari_events_total{{type="{k}"}} {n}' for k, n in sorted(self.events.items())]
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------------ events
    def _ws_url(self) -> str:
        ws = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        return f"{ws}/events?app={quote(self.app)}&subscribeAll=false"

    async def run_events(self, handler: EventHandler, on_connected: ConnectHandler, *,
                         backoff_initial: float = 0.2, backoff_max: float = 5.0) -> None:
        """Deliver events to ``handler`` forever, reconnecting with jittered backoff.

        ``handler`` is called synchronously in arrival order and must not block; it
        spawns work of its own where needed. Cancel the task to stop.
        """
        delay = backoff_initial
        while True:
            probe: asyncio.Task[None] | None = None
            try:
                ws_timeout = aiohttp.ClientWSTimeout(ws_close=5.0)
                async with self.session.ws_connect(self._ws_url(), heartbeat=10.0, timeout=ws_timeout) as ws:
                    log.info("event=ari_connected url=%s app=%s", self.base_url, self.app)
                    delay = backoff_initial
                    self.connected.set()
                    try:
                        # over HTTP: responses on the socket are not read until this returns
                        await on_connected()
                    except Exception:
                        # Reconciliation failing must not stop live events: log and go on.
                        log.exception("event=reconcile_failed")
                    self._ws = ws
                    probe = asyncio.create_task(self._probe_ws_rest(ws), name="ari-ws-rest-probe") \
                        if self.rest_over_ws else None
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            try:
                                data = json.loads(msg.data)
                            except ValueError:
                                log.warning("event=ari_bad_json data=%.200s", msg.data)
                                continue
                            if data.get("type") == "RESTResponse":
                                self._rest_response(data)
                                continue
                            self.events[str(data.get("type"))] += 1
                            try:
                                handler(parse_event(data))
                            except Exception:
                                log.exception("event=handler_failed type=%s", data.get("type"))
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
                log.warning("event=ari_disconnected retry_in=%.1fs", delay)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("event=ari_connect_failed error=%r retry_in=%.1fs", exc, delay)
            finally:
                if probe is not None:
                    probe.cancel()
                self._ws = None
                self._ws_rest_ready = False
                self._fail_pending("events WebSocket closed")
                self.connected.clear()
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(backoff_max, delay * 2)


def _counts(counter: Counter[str]) -> str:
    """``kind:n`` pairs, most first, for one log line (spaces in kinds become ``_``)."""
    return ",".join(f"{k.replace(' ', '_')}:{n}" for k, n in counter.most_common())
