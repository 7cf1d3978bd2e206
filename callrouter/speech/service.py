"""What a waiting caller says, transcribed beside the call path and put on the ticket.

For each caller the engine has answered (``call_held``), if a slot is free: a snoop
channel that hears only the caller (``spy=in``), an ExternalMedia channel that sends
that audio as slin16 RTP to a UDP socket of ours (``speech.address``: on the machine's
loopback, or an address every cluster node reaches), and a bridge joining the two
(``callrouter-speech-<caller>``). Every id names the caller's channel, so in a cluster
each request goes to the caller's node (``ari.nodes``); a node that dies takes its
callers' snoops and bridges with it, and nothing is asked of it afterwards. A task per caller feeds the audio to its vosk
recogniser in a bounded thread pool; each utterance's text goes to the ticket
(``SetTranscript``), to the live call (the agent console shows it when the call pops)
and through the keyword rules (``queues/keywords.toml``): a flag for the wallboard and
the seat, and maybe a higher priority in the queue (``RaisePriority``). The caller is
heard until ``speech_max_s`` or ``speech_after_answer_s`` after a seat answered; when
they leave, everything made for them in Asterisk is removed.

Nothing here stands in front of a call: the setup starts after the caller is answered
and greeted, in tasks of its own; every failure (no model, every slot taken, a refused
snoop, a caller gone mid-setup, a recogniser error) is logged, counted for /metrics and
shown on the wallboard, and the call goes on as if there were no speech at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from callrouter.acd import RaisePriority
from callrouter.acd.errors import ConfigFileError
from callrouter.ari import AriError
from callrouter.calls.bridges import BRIDGE_PREFIX
from callrouter.calls.model import CallPhase
from callrouter.calls.service import SIDE_PREFIX, CallService
from callrouter.logs import q
from callrouter.speech.address import listen_address
from callrouter.speech.keywords import KeywordRules, load_keywords
from callrouter.speech.limits import Slots
from callrouter.speech.recognizer import ModelError, Recognizer, check_model_dir, load_model, model_name, probe_command
from callrouter.speech.rtp import NotRtp, parse_rtp
from callrouter.tasks import TaskOwner
from callrouter.tickets import SetTranscript

log = logging.getLogger("callrouter.speech")

AUDIO_FORMAT = "slin16"  # 16 kHz: what the models are trained on; L16 on the wire
BYTES_PER_S = 32000
CHUNK_BYTES = BYTES_PER_S // 5  # 0.2 s of audio per recogniser step
BACKLOG_BYTES = 5 * BYTES_PER_S  # a caller's audio waiting for a worker; older audio is dropped
IDLE_FLUSH_S = 0.4  # no packet for this long: what arrived is recognised without a full chunk
PROBE_TIMEOUT_S = 180.0
TEARDOWN_TIMEOUT_S = 2.0
ADD_ATTEMPTS = 8  # joining the speech bridge: 50 ms, 100 ms ... (1.8 s in all)
BRIDGE_PREFIX_SPEECH = f"{BRIDGE_PREFIX}speech-"


class SpeechState(StrEnum):
    OFF = "off"  # no model configured
    LOADING = "loading"  # probing and loading the model (seconds)
    READY = "ready"
    BROKEN = "broken"  # configured but unusable: see ``error``


def speech_bridge_id(call_id: str) -> str:
    return f"{BRIDGE_PREFIX_SPEECH}{call_id}"


def side_ids(call_id: str) -> tuple[str, str, str]:
    """The snoop channel, ExternalMedia channel and bridge made for the caller ``call_id``:
    each holds the caller's id whole, so in a cluster each names the caller's node."""
    return f"{SIDE_PREFIX}speech-{call_id}-snoop", f"{SIDE_PREFIX}speech-{call_id}-media", speech_bridge_id(call_id)


@dataclass
class Session:
    call_id: str
    ticket_id: str
    deadline: float  # monotonic: stop listening then
    snoop_id: str = ""
    media_id: str = ""
    bridge_id: str = ""
    transport: asyncio.DatagramTransport | None = None
    pending: bytearray = field(default_factory=bytearray)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    made: set[str] = field(default_factory=set)  # "snoop", "media", "bridge": what to remove
    node_gone: bool = False  # the caller's cluster node died: what was made went with it
    source: tuple[str | Any, int] | None = None  # where the audio comes from (the first packet's sender)
    texts: list[str] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)  # flag -> the word that raised it
    priority: int | None = None
    packets: int = 0
    last_packet: float = 0.0
    audio_s: float = 0.0
    busy_s: float = 0.0  # recogniser time spent on this caller


class _Receiver(asyncio.DatagramProtocol):
    """One caller's RTP: payloads appended to the session; never any work beyond that."""

    def __init__(self, owner: SpeechService, session: Session) -> None:
        self.owner = owner
        self.session = session

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        s = self.session
        if s.source is None:
            s.source = addr
        elif addr != s.source:
            # only Asterisk knows the port, and it sends from one socket: another sender
            # (off loopback, anyone who can reach the address) must not put words in the
            # caller's mouth
            self.owner.counters["foreign_packets"] += 1
            return
        try:
            payload = parse_rtp(data).payload
        except NotRtp:
            self.owner.counters["bad_packets"] += 1
            return
        s.packets += 1
        s.last_packet = time.monotonic()
        s.pending += payload
        if len(s.pending) > BACKLOG_BYTES:
            # the workers fall behind (CPU starved): keep the newest audio, count the rest
            drop = len(s.pending) - BACKLOG_BYTES
            del s.pending[:drop]
            self.owner.dropped_audio_s += drop / BYTES_PER_S
        if len(s.pending) >= CHUNK_BYTES:
            s.wake.set()


class SpeechService:
    def __init__(self, service: CallService, *, model_path: Path | None, model_label: str = "",
                 keywords_path: Path | None = None, max_concurrent: int = 4, workers: int = 2,
                 max_s: float = 120.0, after_answer_s: float = 8.0, bind: str = "127.0.0.1") -> None:
        self.service = service
        self.model_path = model_path
        self.model_name = model_name(model_path, model_label) if model_path else ""
        self.keywords_path = keywords_path
        self.rules = KeywordRules()
        self.slots = Slots(max(0, max_concurrent))
        self.workers = max(1, workers)
        self.max_s = max_s
        self.after_answer_s = after_answer_s
        self.bind = listen_address("", bind)
        self.state = SpeechState.OFF if model_path is None else SpeechState.LOADING
        self.error = ""
        self.model: Any = None
        self.phrases: tuple[str, ...] | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.sessions: dict[str, Session] = {}
        self.tasks = TaskOwner("speech")
        self.counters: Counter[str] = Counter()  # transcribed, texts, bad_packets ...
        self.failures: Counter[str] = Counter()  # reason -> count
        self.flagged: Counter[tuple[str, str]] = Counter()  # (line, flag)
        self.dropped_audio_s = 0.0
        self.audio_s = 0.0  # caller audio recognised, seconds
        self.busy_s = 0.0  # recogniser time, seconds (CPU per caller = busy / callers)
        service.listeners.append(self.on_event)

    # ------------------------------------------------------------ start and stop
    def load_rules(self) -> None:
        """Read the keyword rules (at start). A bad file turns speech off, loudly; with no
        model configured it is only a warning (nothing would use the rules)."""
        if self.keywords_path is None:
            return
        try:
            self.rules = load_keywords(self.keywords_path)
        except ConfigFileError as exc:
            if self.state is SpeechState.OFF:
                log.warning("event=keywords_invalid path=%s (speech is off anyway)\n%s", self.keywords_path, exc)
                return
            self._broken("keywords", f"{self.keywords_path}: invalid keyword rules:\n{exc}")
            return
        log.info("event=keywords_loaded path=%s rules=%d models_with_phrases=%s", self.keywords_path,
                 len(self.rules.rules), ",".join(sorted(self.rules.phrases)) or "-")

    async def start(self) -> None:
        """Load the model beside the engine's start: calls are taken meanwhile (not
        transcribed until it is ready)."""
        self.load_rules()
        if self.model_path is None:
            log.info("event=speech_off reason=no_model: set speech_model to a vosk model directory to "
                     "transcribe waiting callers")
            return
        if self.state is SpeechState.BROKEN:
            return
        path = self.model_path
        try:
            check_model_dir(path)
        except ModelError as exc:
            self._broken("model", str(exc))
            return
        started = time.monotonic()
        # a damaged model can abort the process inside Kaldi instead of raising: try it in
        # a child process first, so that only the child dies
        try:
            proc = await asyncio.create_subprocess_exec(*probe_command(path), stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                self._broken("model", f"speech_model {path}: loading it took over {PROBE_TIMEOUT_S:.0f} s")
                return
        except OSError as exc:
            self._broken("model", f"speech_model {path}: could not start the model check ({exc})")
            return
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            self._broken("model", f"speech_model {path}: the model check failed (exit {proc.returncode}): "
                         + " | ".join(tail))
            return
        try:
            self.model = await asyncio.to_thread(load_model, path)
        except ModelError as exc:
            self._broken("model", str(exc))
            return
        self.phrases = self.rules.phrases_for(self.model_name)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="speech")
        self.state = SpeechState.READY
        log.info("event=speech_ready model=%s path=%s grammar=%s max_concurrent=%d workers=%d load_s=%.1f",
                 q(self.model_name), path, len(self.phrases) if self.phrases else "free-form", self.slots.limit,
                 self.workers, time.monotonic() - started)

    def refuse(self, reason: str, message: str) -> None:
        """Speech cannot work with this set-up (said at start): off, loudly; calls go on."""
        self._broken(reason, message)

    def _broken(self, reason: str, message: str) -> None:
        self.state, self.error = SpeechState.BROKEN, message
        self.failures[reason] += 1
        log.error("event=speech_broken reason=%s: transcription is OFF, calls are not affected: %s", reason, message)

    async def close(self, timeout: float = TEARDOWN_TIMEOUT_S) -> None:
        """Stop every transcription and remove what it made in Asterisk (callers stay)."""
        for session in list(self.sessions.values()):
            session.stopping = True
            session.wake.set()
        await self.tasks.shutdown(timeout=timeout)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ call events
    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        call_id = str(data.get("call_id", ""))
        if kind == "call_held":
            self._begin(call_id)
        elif kind == "call_connected":
            session = self.sessions.get(call_id)
            if session is not None:
                session.deadline = min(session.deadline, time.monotonic() + self.after_answer_s)
                session.wake.set()
        elif kind == "call_ended":
            session = self.sessions.get(call_id)
            if session is not None:
                session.stopping = True
                session.wake.set()

    def node_lost(self, node: str) -> int:
        """A cluster node died (before its calls are ended): its callers' transcriptions stop,
        and their snoops, media channels and bridges, gone with the node, are not asked
        for again (a dead machine would leave each request to its timeout). Returns how
        many stopped."""
        gone = [s for s in self.sessions.values() if self.service.node_of(s.call_id) == node]
        for s in gone:
            s.node_gone = s.stopping = True
            s.wake.set()
        if gone:
            self.failures["node_lost"] += len(gone)
            log.warning("event=speech_node_lost node=%s sessions=%d", node, len(gone))
        return len(gone)

    def _begin(self, call_id: str) -> None:
        call = self.service.calls.get(call_id)
        if call is None or call_id in self.sessions or self.state is not SpeechState.READY:
            return
        if not self.slots.take(call_id):
            log.info("event=speech_refused ticket=%s reason=limit active=%d limit=%d", call.ticket_id,
                     len(self.slots), self.slots.limit)
            return
        snoop_id, media_id, bridge_id = side_ids(call_id)
        session = Session(call_id=call_id, ticket_id=call.ticket_id, deadline=time.monotonic() + self.max_s,
                          snoop_id=snoop_id, media_id=media_id, bridge_id=bridge_id)
        self.sessions[call_id] = session
        self.tasks.spawn(self._run(session), name=f"speech:{call_id}")

    # ------------------------------------------------------------ one caller
    async def _run(self, s: Session) -> None:
        try:
            if await self._setup(s):
                await self._listen(s)
        except Exception as exc:  # a recogniser error: this caller goes untranscribed, nobody else
            self.failures["recognizer"] += 1
            log.exception("event=speech_failed ticket=%s error=%r", s.ticket_id, type(exc).__name__)
        finally:
            await self._teardown(s)
            self.slots.release(s.call_id)
            self.sessions.pop(s.call_id, None)
            self.audio_s += s.audio_s
            self.busy_s += s.busy_s

    async def _setup(self, s: Session) -> bool:
        ari = self.service.ari
        loop = asyncio.get_running_loop()
        step = "socket"
        try:
            s.transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self, s),
                                                                 local_addr=(self.bind, 0))
            port = int(s.transport.get_extra_info("sockname")[1])
            step = "snoop"
            self.service.side_channels.add(s.snoop_id)
            await ari.snoop(s.call_id, s.snoop_id, spy="in", app_args="speech")
            s.made.add("snoop")
            step = "media"
            self.service.side_channels.add(s.media_id)
            await ari.external_media(s.media_id, f"{self.bind}:{port}", AUDIO_FORMAT)
            s.made.add("media")
            step = "bridge"
            self.service.side_bridges.add(s.bridge_id)
            await ari.create_bridge(s.bridge_id, "mixing")
            s.made.add("bridge")
            await self._add_when_in_stasis(s)
        except (AriError, OSError) as exc:
            if s.node_gone:
                return False  # counted once, by node_lost
            gone = s.stopping or s.call_id not in self.service.calls or (
                isinstance(exc, AriError) and exc.status == 404 and step == "snoop")
            reason = "caller_gone" if gone else f"{step}_refused"
            self.failures[reason] += 1
            log.log(logging.INFO if gone else logging.WARNING, "event=speech_setup_failed ticket=%s step=%s "
                    "reason=%s error=%s", s.ticket_id, step, reason, q(exc))
            return False
        if s.stopping:
            if not s.node_gone:
                self.failures["caller_gone"] += 1
            return False
        self.counters["started"] += 1
        log.info("event=speech_started ticket=%s channel=%s port=%d", s.ticket_id, s.call_id, port)
        return True

    async def _add_when_in_stasis(self, s: Session) -> None:
        # Asterisk answers the snoop and external media requests before the new channels
        # have entered the application (seen: 422 "Channel not in Stasis application" on
        # addChannel right after): try again for a moment
        for attempt in range(ADD_ATTEMPTS):
            try:
                await self.service.ari.add_to_bridge(s.bridge_id, s.snoop_id, s.media_id)
                return
            except AriError as exc:
                if exc.status != 422 or attempt == ADD_ATTEMPTS - 1 or s.stopping:
                    raise
            await asyncio.sleep(0.05 * (attempt + 1))

    async def _in_pool(self, fn: Any, *args: Any) -> Any:
        """CPU-bound recogniser work, in the bounded pool (never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _listen(self, s: Session) -> None:
        recognizer: Recognizer = await self._in_pool(Recognizer, self.model, self.phrases)
        while not s.stopping:
            now = time.monotonic()
            if now >= s.deadline:
                break
            idle = s.pending and now - s.last_packet >= IDLE_FLUSH_S
            if len(s.pending) < CHUNK_BYTES and not idle:
                s.wake.clear()
                try:
                    await asyncio.wait_for(s.wake.wait(), timeout=min(IDLE_FLUSH_S, s.deadline - now))
                except TimeoutError:
                    pass
                continue
            await self._recognise(s, recognizer, bytes(s.pending))
        if s.pending:
            await self._recognise(s, recognizer, bytes(s.pending))
        started = time.monotonic()
        text = await self._in_pool(recognizer.finish)
        s.busy_s += time.monotonic() - started
        self._heard(s, text, final=True)
        self.counters["transcribed"] += 1
        log.info("event=speech_done ticket=%s audio_s=%.1f busy_s=%.2f texts=%d flags=%s", s.ticket_id, s.audio_s,
                 s.busy_s, len(s.texts), ",".join(s.flags) or "-")

    async def _recognise(self, s: Session, recognizer: Recognizer, chunk: bytes) -> None:
        del s.pending[:len(chunk)]
        started = time.monotonic()
        text = await self._in_pool(recognizer.accept_l16, chunk)
        s.busy_s += time.monotonic() - started
        s.audio_s += len(chunk) / BYTES_PER_S
        if text:
            self._heard(s, text, final=False)

    def _heard(self, s: Session, text: str | None, *, final: bool) -> None:
        """A recognised utterance (or the end): rules, queue, ticket, console."""
        if text:
            s.texts.append(text)
            self.counters["texts"] += 1
        if not s.texts and not final:
            return
        call = self.service.calls.get(s.call_id)
        line = call.line if call is not None else ""
        full = " ".join(s.texts)
        for hit in self.rules.match(line, full) if line else []:
            if hit.rule.flag in s.flags:
                continue
            s.flags[hit.rule.flag] = hit.word
            self.flagged[(line, hit.rule.flag)] += 1
            log.warning("event=speech_flag ticket=%s line=%s flag=%s keyword=%s rule=%s", s.ticket_id, line,
                        hit.rule.flag, q(hit.word), hit.rule.source)
            if hit.rule.priority is not None and call is not None and call.phase is not CallPhase.TALKING \
                    and (s.priority is None or hit.rule.priority < s.priority):
                s.priority = hit.rule.priority
                self.counters["priority_raised"] += 1
                self.service.feed(RaisePriority(call.acd_id, hit.rule.priority))
        if not text and not final:
            return
        at = datetime.now(UTC)
        flags, keywords = sorted(s.flags), sorted(set(s.flags.values()))
        record = {"model": self.model_name, "text": full, "flags": flags, "keywords": keywords,
                  "priority": s.priority, "final": final, "at": at.isoformat()}
        if s.texts:
            self.service.writer.submit(SetTranscript(id=s.ticket_id, model=self.model_name, text=full, at=at,
                                                     flags=tuple(flags), keywords=tuple(keywords),
                                                     priority=s.priority, final=final))
        if call is not None:
            call.transcript = record
            self.service.emit("call_transcript", call.summary())

    async def _teardown(self, s: Session) -> None:
        if s.transport is not None:
            s.transport.close()
        ari = self.service.ari

        async def remove() -> None:
            for kind in ("media", "snoop", "bridge"):
                if kind not in s.made or s.node_gone:
                    continue
                try:
                    if kind == "bridge":
                        await ari.destroy_bridge(s.bridge_id)
                    else:
                        await ari.hangup(s.media_id if kind == "media" else s.snoop_id)
                except AriError as exc:
                    if exc.status != 404:  # a snoop ends with its caller: gone already is fine
                        self.failures["teardown"] += 1
                        log.warning("event=speech_teardown_failed ticket=%s part=%s error=%s", s.ticket_id, kind,
                                    q(exc))
        try:
            await asyncio.wait_for(remove(), TEARDOWN_TIMEOUT_S * 2)
        except TimeoutError:
            self.failures["teardown"] += 1
            log.warning("event=speech_teardown_timeout ticket=%s: the next reconciliation removes the rest",
                        s.ticket_id)
        finally:
            self.service.side_channels.discard(s.snoop_id)
            self.service.side_channels.discard(s.media_id)
            self.service.side_bridges.discard(s.bridge_id)

    # ------------------------------------------------------------ reports
    def status(self) -> dict[str, Any]:
        """For /api/status and the wallboard."""
        return {"state": self.state.value, "model": self.model_name, "error": self.error,
                "active": len(self.slots), "limit": self.slots.limit, "refused_over_limit": self.slots.refused,
                "transcribed": self.counters["transcribed"], "failures": dict(self.failures),
                "flagged": sum(self.flagged.values())}

    def metrics_text(self) -> str:
        out = ["# HELP callrouter_speech_state Transcription state (1 for the current one).",
               "# TYPE callrouter_speech_state gauge"]
        out += [f'callrouter_speech_state{{state="{st.value}"}} {int(self.state is st)}' for st in SpeechState]
        out += ["# HELP callrouter_speech_active Callers being transcribed now.", "# TYPE callrouter_speech_active gauge",
                f"callrouter_speech_active {len(self.slots)}",
                "# HELP callrouter_speech_limit At most this many callers transcribed at once.",
                "# TYPE callrouter_speech_limit gauge", f"callrouter_speech_limit {self.slots.limit}",
                "# HELP callrouter_speech_refused_total Callers not transcribed because the limit was reached.",
                "# TYPE callrouter_speech_refused_total counter",
                f'callrouter_speech_refused_total{{reason="limit"}} {self.slots.refused}',
                "# HELP callrouter_speech_transcribed_total Callers transcribed to the end.",
                "# TYPE callrouter_speech_transcribed_total counter",
                f"callrouter_speech_transcribed_total {self.counters['transcribed']}",
                "# HELP callrouter_speech_failures_total Transcription failures by reason (the calls went on).",
                "# TYPE callrouter_speech_failures_total counter"]
        reasons = {"model", "keywords", "address", "caller_gone", "snoop_refused", "media_refused",
                   "bridge_refused", "socket_refused", "recognizer", "teardown", "node_lost"} | set(self.failures)
        out += [f'callrouter_speech_failures_total{{reason="{r}"}} {self.failures[r]}' for r in sorted(reasons)]
        out += ["# HELP callrouter_speech_flags_total Callers flagged by a keyword rule.",
                "# TYPE callrouter_speech_flags_total counter"]
        out += [f'callrouter_speech_flags_total{{line="{line}",flag="{flag}"}} {n}'
                for (line, flag), n in sorted(self.flagged.items())]
        out += ["# HELP callrouter_speech_priority_raised_total Callers raised in the queue by a keyword.",
                "# TYPE callrouter_speech_priority_raised_total counter",
                f"callrouter_speech_priority_raised_total {self.counters['priority_raised']}",
                "# HELP callrouter_speech_audio_seconds_total Caller audio recognised.",
                "# TYPE callrouter_speech_audio_seconds_total counter",
                f"callrouter_speech_audio_seconds_total {self.audio_s:.1f}",
                "# HELP callrouter_speech_recognizer_seconds_total Recogniser time (worker threads).",
                "# TYPE callrouter_speech_recognizer_seconds_total counter",
                f"callrouter_speech_recognizer_seconds_total {self.busy_s:.2f}",
                "# HELP callrouter_speech_audio_dropped_seconds_total Audio dropped because the workers fell behind.",
                "# TYPE callrouter_speech_audio_dropped_seconds_total counter",
                f"callrouter_speech_audio_dropped_seconds_total {self.dropped_audio_s:.1f}",
                "# HELP callrouter_speech_bad_packets_total Datagrams on a speech socket that were not RTP.",
                "# TYPE callrouter_speech_bad_packets_total counter",
                f"callrouter_speech_bad_packets_total {self.counters['bad_packets']}",
                "# HELP callrouter_speech_foreign_packets_total Datagrams on a speech socket not from its Asterisk.",
                "# TYPE callrouter_speech_foreign_packets_total counter",
                f"callrouter_speech_foreign_packets_total {self.counters['foreign_packets']}"]
        return "\n".join(out) + "\n"
