"""Call recording on the engine's side: which calls, the detour that starts MixMonitor,
and keeping each file once its call has ended.

How a call comes to be recorded. ARI cannot start MixMonitor, and ARI's own channel
recording refuses a bridged channel; MixMonitor, an audiohook on the caller's channel,
follows it through every bridge (hold, seat, transfer, consult) until hang-up. So a caller
of a line that records (``[line.<id>.recording]`` in lines.toml) is answered over ARI as
any other (the answer never waits) and then sent, once, through the dialplan context
``[callrouter-record]``: ``MixMonitor`` then ``Stasis(callrouter,recording)``. The caller
is back in the application a millisecond or two later, before their phone sends its first
audio, and the call goes on as any other. (An ``Answer()`` in that context would wait up
to 500 ms for the caller's first audio.) Measured here against a snoop channel recorded
over ARI (the other way that follows a bridged channel): MixMonitor costs Asterisk about
half the CPU per recorded caller and no extra channel or events.

The detour runs in the call's lane, so every later request of that call (greeting, hold,
the seat's bridge) waits for the caller's return. Asterisk sends nothing about a channel
after it left the application, so a caller who hangs up during the detour is found by
asking for the channel. A StasisEnd of a detouring caller is the detour's, not an end.
If the engine is gone when the caller comes back, ``Stasis`` fails and the dialplan's
fallback hold takes the caller; the next engine sees ``CR_RECORDING`` on the channel and
does not start a second recording.

Nothing here may hold up or drop a call: a full, read-only or missing recording disk
(checked every few seconds) means new calls are not recorded (counted, logged, on the
wallboard) and are answered as usual; a detour that fails is a call answered unrecorded;
the file work (waiting for Asterisk to close the file, moving it, hashing it) runs on the
recorder's own thread after the call ended.

In a cluster (several Asterisk nodes) each node's MixMonitor writes into that node's own
recording directory: the recorder has one spool per node, finds a call's file in the spool
of the node its channel id names, sweeps every spool and checks every spool's disk (a
node's full spool leaves the other nodes' calls recorded). One Asterisk: one spool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from callrouter.acd.errors import UnknownLine
from callrouter.acd.lines import RecordingPolicy
from callrouter.ari import AriError, Channel
from callrouter.ari.nodes import node_of
from callrouter.calls.model import LiveCall
from callrouter.logs import q
from callrouter.recordings.files import (
    Disk,
    DiskState,
    KeepError,
    WavInfo,
    channel_of,
    check_disk,
    keep,
    read_header,
    repair_header,
    retain_until,
    spool_file,
    store_relpath,
)
from callrouter.tasks import TaskOwner
from callrouter.tickets import AttachRecording, RecordingFailed, TicketStore

if TYPE_CHECKING:
    from callrouter.calls.service import CallService

log = logging.getLogger("callrouter.recordings")
_T = TypeVar("_T")

DETOUR_CONTEXT: Final = "callrouter-record"
RECORDING_VAR: Final = "CR_RECORDING"  # set on the channel by the detour (ari.conf channelvars)
DETOUR_CHECK_S = 3.0  # no return after this long: is the caller still there?
FINISH_WAIT_S = 15.0  # Asterisk closes the file within milliseconds of the channel's end
NO_FILE_GRACE_S = 2.0
DISK_CHECK_S = 5.0
SWEEP_S = 60.0
SWEEP_AFTER_CONNECT_S = 3.0
ORPHAN_AGE_S = 60.0  # a spool file Asterisk never closed, untouched this long: Asterisk died
SINGLE: Final = ""  # the one spool's key on a single Asterisk (no node)
STORE: Final = "store"


def spools_of(spool_dir: Path | Mapping[str, Path]) -> dict[str, Path]:
    """The recorder's spools: one Asterisk's directory (key ``SINGLE``), or node name ->
    that node's directory in a cluster."""
    if isinstance(spool_dir, Path):
        return {SINGLE: spool_dir}
    if not spool_dir or SINGLE in spool_dir:
        raise ValueError(f"a cluster's spools need one named node each: {dict(spool_dir)!r}")
    return dict(spool_dir)


def spool_key(spools: Mapping[str, Path], channel_id: str) -> str | None:
    """Which spool a channel's recording is written to: the one spool of a single
    Asterisk; in a cluster the spool of the node its id names (None: no node's)."""
    if SINGLE in spools:
        return SINGLE
    return node_of(channel_id, spools.keys())


def disk_name(key: str) -> str:
    """The name a spool's disk goes by in the status and metrics: ``spool`` on one
    Asterisk (as before clusters), ``spool:<node>`` in a cluster."""
    return "spool" if key == SINGLE else f"spool:{key}"


@dataclass
class Recording:
    """A live call being recorded (or about to be)."""

    call_id: str
    ticket_id: str
    arrived_at: datetime
    line: str  # the line it began on
    started_at: datetime | None = None  # when MixMonitor started (None: a previous engine's)
    back: asyncio.Event | None = None  # while the detour is under way
    left: bool = False  # a StasisEnd came during the detour


def disk_trouble(where: Path, disk: Disk, min_free_bytes: int) -> tuple[str, str] | None:
    """Why recordings cannot go on ``where`` (reason, detail), or None."""
    if disk.state is DiskState.OK:
        return None
    reason = "read_only" if disk.state is DiskState.READ_ONLY else "disk_full"
    return reason, (f"{where}: {disk.state.value}, {disk.free_bytes // 2**20} MB free "
                    f"(needs {min_free_bytes // 2**20} MB)")


def trouble_for(troubles: Mapping[str, tuple[str, str, float]], spools: Mapping[str, Path],
                channel_id: str) -> tuple[str, str] | None:
    """Why a call on this channel cannot be recorded now (reason, detail): the store's
    disk, or the disk of the spool its node writes to; None: it can."""
    key = spool_key(spools, channel_id)
    if key is None:
        return "no_spool", f"no recording directory for the node of channel {channel_id}"
    for name in (STORE, disk_name(key)):
        if name in troubles:
            reason, detail, _ = troubles[name]
            return reason, detail
    return None


class CallRecorder:
    def __init__(self, service: CallService, store: TicketStore, spool_dir: Path | Mapping[str, Path],
                 store_dir: Path, *, min_free_mb: int = 256) -> None:
        self.service = service
        self.store = store
        # one Asterisk: its recording directory; a cluster: node name -> that node's
        self.spools = spools_of(spool_dir)
        self.store_dir = store_dir
        self.min_free_bytes = max(0, min_free_mb) * 1024 * 1024
        self.active: dict[str, Recording] = {}
        self.tasks = TaskOwner("recordings")
        # file work off the event loop, and off the default executor the ticket writer uses
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recordings")
        self.disks: dict[str, Disk] = {}
        # disk name -> (reason, detail, since) while the calls it takes go unrecorded: the
        # store's stops every call, a spool's the calls of its node
        self.troubles: dict[str, tuple[str, str, float]] = {}
        self.failures: Counter[str] = Counter()
        self.started = 0
        self.kept = 0
        self.last_failure: dict[str, Any] | None = None
        self._finalizing: set[str] = set()
        self._store_failed: set[str] = set()  # counted once; the sweep retries them
        self._unowned: set[str] = set()  # spool files no ticket of ours claims: logged once
        self.unclaimed = 0  # such files at the last sweep
        self._next_sweep: float | None = None  # none before the first reconciliation

    # ------------------------------------------------------------ policy
    def policy(self, line: str) -> RecordingPolicy:
        try:
            return self.service.acd.config.line(line).recording
        except UnknownLine:  # a line that is gone from a reloaded file
            return RecordingPolicy()

    def recording_lines(self) -> list[str]:
        return [ln.id for ln in self.service.acd.config.lines if ln.recording.enabled]

    def should_record(self, call: LiveCall, line: str | None = None) -> bool:
        """Whether to start recording ``call`` now (on ``line``, default its own): its line
        records, it is not recorded already, and the disks can take it (else the call is
        counted as unrecorded, with the reason on its ticket)."""
        if call.id in self.active or not self.policy(line or call.line).enabled:
            return False
        trouble = self.trouble_for(call.id)
        if trouble is not None:
            self._fail(call.ticket_id, *trouble)
            return False
        return True

    def trouble_for(self, channel_id: str) -> tuple[str, str] | None:
        return trouble_for(self.troubles, self.spools, channel_id)

    @property
    def trouble(self) -> tuple[str, str] | None:
        """The first disk trouble (spools before the store), for the status and the wallboard."""
        for name in sorted(self.troubles, key=lambda n: (n == STORE, n)):
            reason, detail, _ = self.troubles[name]
            return reason, detail
        return None

    def spool_file(self, channel_id: str) -> Path | None:
        key = spool_key(self.spools, channel_id)
        return None if key is None else spool_file(self.spools[key], channel_id)

    # ------------------------------------------------------------ the detour
    async def record(self, call: LiveCall) -> bool:
        """Send the (answered) caller through ``[callrouter-record]``; run in the call's lane.

        True once the caller is back in the application, recorded; False when the
        recording could not be started (the caller goes on unrecorded) or the caller hung
        up meanwhile (then their call is ended here)."""
        back = asyncio.Event()
        rec = Recording(call.id, call.ticket_id, call.arrived_at, call.line, back=back)
        self.active[call.id] = rec
        try:
            await self.service.ari.request("POST", f"/channels/{call.id}/continue",
                                           params={"context": DETOUR_CONTEXT, "extension": "s", "priority": "1"})
        except AriError as exc:
            rec.back = None
            if rec.left or exc.status == 404:
                self.active.pop(call.id, None)
                self._gone(call.id)
                return False
            self.active.pop(call.id, None)
            self._fail(call.ticket_id, "start_failed", str(exc))
            return False
        rec.started_at = self.service.clock()
        self.started += 1
        log.info("event=recording_started ticket=%s channel=%s line=%s", call.ticket_id, call.id, call.line)
        while not back.is_set():
            try:
                await asyncio.wait_for(back.wait(), DETOUR_CHECK_S)
            except TimeoutError:
                if not await self._still_there(call.id):
                    rec.back = None
                    self._gone(call.id)
                    return False
        rec.back = None
        return True

    async def _still_there(self, channel_id: str) -> bool:
        try:
            await self.service.ari.request("GET", f"/channels/{channel_id}")
        except AriError as exc:
            if exc.status == 404:
                return False
            log.warning("event=recording_detour_check_failed channel=%s error=%s", channel_id, q(exc))
        return True

    def _gone(self, channel_id: str) -> None:
        # the caller hung up while the recording started: an end Asterisk will not report
        if channel_id in self.service.calls:
            log.info("event=caller_gone_during_recording_start channel=%s", channel_id)
            self.service.caller_ended(channel_id, "hung up while the recording started")

    def back(self, channel: Channel) -> bool:
        """A StasisStart of a caller on the detour (``recording``, or the dialplan's
        fallback hold re-entering): the detour is over. False: not ours."""
        rec = self.active.get(channel.id)
        if rec is None or rec.back is None:
            return False
        rec.back.set()
        return True

    def left(self, channel_id: str) -> bool:
        """A StasisEnd of a caller on the detour is the detour's own: swallow it."""
        rec = self.active.get(channel_id)
        if rec is None or rec.back is None:
            return False
        rec.left = True
        return True

    def detouring(self, channel_id: str) -> bool:
        rec = self.active.get(channel_id)
        return rec is not None and rec.back is not None

    def track(self, call: LiveCall, channel: Channel) -> None:
        """A caller the engine adopts whose channel a previous engine sent through the
        detour: recorded already (one recording per call)."""
        if channel.channelvars.get(RECORDING_VAR) and call.id not in self.active:
            self.active[call.id] = Recording(call.id, call.ticket_id, call.arrived_at, call.line)
            log.info("event=recording_adopted ticket=%s channel=%s", call.ticket_id, call.id)

    # ------------------------------------------------------------ the call ends
    def call_ended(self, call: LiveCall) -> None:
        rec = self.active.pop(call.id, None)
        if rec is None:
            return
        ended = self.service.clock()
        self._finalizing.add(call.id)
        self.tasks.spawn(self._finalize(rec, ended, {rec.line, call.line}), name=f"recording:{call.id}")

    async def _finalize(self, rec: Recording, ended_at: datetime, lines: Iterable[str]) -> None:
        try:
            src = self.spool_file(rec.call_id)
            if src is None:  # cannot be: should_record refused it
                self._fail(rec.ticket_id, "no_file", f"no recording directory for channel {rec.call_id}")
                return
            info = await self._wait_finished(src)
            if info is None:
                self._fail(rec.ticket_id, "no_file", f"Asterisk left no recording at {src}")
                return
            await self._keep(rec.call_id, rec.ticket_id, rec.arrived_at, rec.started_at, ended_at, lines, src, *info)
        finally:
            self._finalizing.discard(rec.call_id)

    async def _wait_finished(self, src: Path) -> tuple[WavInfo, bool] | None:
        """The file's header once Asterisk closed it (and False); a header repaired from
        the file when Asterisk never closes it (it died; and True); None: no file."""
        started = time.monotonic()
        while True:
            try:
                info = await self._run(read_header, src)
            except FileNotFoundError:
                if time.monotonic() - started > NO_FILE_GRACE_S:
                    return None
                info = None
            except OSError as exc:
                log.warning("event=recording_unreadable file=%s error=%r", src, exc)
                return None
            else:
                if info is not None and info.finished:
                    return info, False
                if time.monotonic() - started > FINISH_WAIT_S:
                    log.warning("event=recording_not_closed file=%s: header repaired from the file", src)
                    try:
                        repaired = await self._run(repair_header, src)
                        return None if repaired is None else (repaired, True)
                    except OSError as exc:
                        log.warning("event=recording_repair_failed file=%s error=%r", src, exc)
                        return None
            await asyncio.sleep(0.2)

    async def _keep(self, call_id: str, ticket_id: str, arrived_at: datetime, started_at: datetime | None,
                    ended_at: datetime, lines: Iterable[str], src: Path, info: WavInfo, repaired: bool) -> None:
        relpath = store_relpath(ticket_id, arrived_at)
        try:
            kept = await self._run(keep, src, self.store_dir, relpath)
        except KeepError as exc:
            if call_id not in self._store_failed:
                self._store_failed.add(call_id)
                self._fail(ticket_id, "store_failed", f"{exc}; kept in Asterisk's spool, retried every minute")
            return
        self._store_failed.discard(call_id)
        duration = info.duration_s
        # Asterisk writes the header when the call's channel is gone: a file it never closed
        # (it died mid-call) may lack the end of the call. (The length alone says nothing:
        # MixMonitor writes audio frames, and a stretch where neither side sends any, as
        # with silence suppression, is not in the file.)
        complete = not repaired
        if not complete:
            self.failures["incomplete"] += 1
            log.warning("event=recording_incomplete ticket=%s duration_s=%.1f call_s=%.1f: Asterisk never closed "
                        "the file", ticket_id, duration, (ended_at - (started_at or arrived_at)).total_seconds())
        days = max(self.policy(line).retention_days for line in lines)
        self.service.writer.submit(AttachRecording(
            id=ticket_id, file=kept.relpath, sha256=kept.sha256, size=kept.size, duration_s=duration,
            started_at=started_at or arrived_at, retain_until=retain_until(ended_at, days),
            at=self.service.clock(), complete=complete))
        self.kept += 1
        log.info("event=recording_kept ticket=%s file=%s duration_s=%.1f bytes=%d sha256=%s complete=%s",
                 ticket_id, kept.relpath, duration, kept.size, kept.sha256, complete)

    def _fail(self, ticket_id: str, reason: str, detail: str) -> None:
        self.failures[reason] += 1
        self.last_failure = {"reason": reason, "detail": detail[:200], "ticket": ticket_id, "at": time.time()}
        log.info("event=recording_failed ticket=%s reason=%s detail=%s", ticket_id, reason, q(detail[:200]))
        self.service.writer.submit(RecordingFailed(id=ticket_id, reason=reason, detail=detail,
                                                   at=self.service.clock()))

    # ------------------------------------------------------------ housekeeping
    async def run(self) -> None:
        """Check the disks every few seconds; a few seconds after each (re)connect, and
        every minute, keep the files of calls that ended while no engine watched them."""
        while True:
            await self.check_disks()
            if self._next_sweep is not None and time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP_S
                try:
                    await self.sweep()
                except Exception:  # a sweep that fails is retried; it never stops the checks
                    log.exception("event=recording_sweep_failed")
            await asyncio.sleep(DISK_CHECK_S)

    def after_reconcile(self) -> None:
        # soon, not now: the tickets the reconciliation closed are written first
        self._next_sweep = time.monotonic() + SWEEP_AFTER_CONNECT_S

    async def check_disks(self) -> None:
        try:
            self.disks = await self._run(self._disks)
        except OSError as exc:
            self.disks = {}
            self._set_trouble(STORE, ("read_only", f"cannot check the recording disks: {exc}"))
            return
        for name, disk in self.disks.items():
            self._set_trouble(name, disk_trouble(self._dir_of(name), disk, self.min_free_bytes))

    def _dir_of(self, name: str) -> Path:
        if name == STORE:
            return self.store_dir
        return self.spools[SINGLE if name == "spool" else name.removeprefix("spool:")]

    def _disks(self) -> dict[str, Disk]:
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        disks = {disk_name(key): check_disk(path, self.min_free_bytes) for key, path in self.spools.items()}
        return {**disks, STORE: check_disk(self.store_dir, self.min_free_bytes)}

    def _set_trouble(self, name: str, trouble: tuple[str, str] | None) -> None:
        # one Asterisk: its spool and the store log as before (no disk named)
        where = "" if len(self.spools) == 1 else f" disk={name}"
        known = self.troubles.get(name)
        if trouble is None and known is not None:
            del self.troubles[name]
            log.warning("event=recording_resumed after_s=%.0f%s", time.monotonic() - known[2], where)
        elif trouble is not None and (known is None or known[0] != trouble[0]):
            log.warning("event=recording_suspended reason=%s detail=%s%s: new calls go on unrecorded", trouble[0],
                        q(trouble[1]), where)
            self.troubles[name] = (*trouble, time.monotonic())
        elif trouble is not None and known is not None:
            self.troubles[name] = (*trouble, known[2])  # same reason, fresher figures

    async def sweep(self) -> int:
        """Keep spool files whose call ended unwatched (the engine was away or killed, or
        the store refused the file earlier), matched to closed tickets of this engine's
        database by channel; how many it kept. Files no such ticket names stay (another
        database's, or a ticket not closed yet: tried again at the next sweep)."""
        kept = 0
        unclaimed: set[str] = set()
        for path, age in await self._run(self._spool_files):
            channel_id = channel_of(path)
            if (channel_id is None or channel_id in self.active or channel_id in self.service.calls
                    or channel_id in self._finalizing):
                continue
            try:
                info = await self._run(read_header, path)
            except OSError:
                continue  # gone meanwhile
            # Asterisk writes the header's sizes when it closes the file: a file still open
            # is a live recording, unless Asterisk died with it (then it is old and left)
            if (info is None or not info.finished) and age < ORPHAN_AGE_S:
                continue
            try:
                ticket = await asyncio.to_thread(self.store.by_channel, channel_id)
            except SQLAlchemyError as exc:  # the database is away: the next sweep tries again
                log.warning("event=recording_sweep_deferred error=%r", str(exc)[:200])
                return kept
            if ticket is None or not ticket.get("ended_at") or (ticket.get("recording") or {}).get("sha256"):
                unclaimed.add(channel_id)
                if channel_id not in self._unowned:
                    self._unowned.add(channel_id)
                    why = "has a recording already" if ticket and ticket.get("ended_at") else "is not closed"
                    log.warning("event=recording_unclaimed file=%s: %s; left in place", path,
                                f"ticket {ticket['id']} {why}" if ticket else
                                f"no ticket of this engine's database names channel {channel_id}")
                continue
            repaired = info is None or not info.finished
            if repaired:
                try:
                    info = await self._run(repair_header, path)
                except OSError as exc:
                    log.warning("event=recording_unreadable file=%s error=%r", path, exc)
                    continue
            if info is None:
                continue
            lines = {str(ticket["line"])} | {str(t.get("from_line")) for t in ticket.get("transfers") or []}
            arrived = datetime.fromisoformat(str(ticket["arrived_at"]))
            started = datetime.fromisoformat(str(ticket["answered_at"])) if ticket.get("answered_at") else None
            self._finalizing.add(channel_id)
            try:
                await self._keep(channel_id, str(ticket["id"]), arrived, started,
                                 datetime.fromisoformat(str(ticket["ended_at"])), lines, path, info, repaired)
            finally:
                self._finalizing.discard(channel_id)
            kept += 1
        self.unclaimed = len(unclaimed)
        self._unowned &= unclaimed
        return kept

    def _spool_files(self) -> list[tuple[Path, float]]:
        now = time.time()
        out: list[tuple[Path, float]] = []
        entries: list[Path] = []
        # every spool once (nodes may share one directory: their channel ids differ)
        for spool in dict.fromkeys(self.spools.values()):
            try:
                entries += spool.iterdir()
            except OSError:  # a node's spool that is not there (not mounted): the next sweep
                continue
        for path in entries:
            try:
                out.append((path, now - path.stat().st_mtime))
            except OSError:
                continue
        return out

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self, timeout: float = 1.0) -> None:
        """Stop: files of calls that ended and are not kept yet stay in the spool for the
        next engine's sweep."""
        await self.tasks.shutdown(timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ what it reports
    def status(self) -> dict[str, Any]:
        lines = self.recording_lines()
        state = "off" if not lines else (self.trouble[0] if self.trouble else "on")
        return {"state": state, "lines": lines, "detail": self.trouble[1] if self.trouble else "",
                "recording": len(self.active), "keeping": len(self._finalizing), "unclaimed": self.unclaimed,
                "started": self.started,
                "kept": self.kept,
                "failures": dict(self.failures), "last_failure": self.last_failure,
                "free_mb": {name: disk.free_bytes // 2**20 for name, disk in self.disks.items()},
                "min_free_mb": self.min_free_bytes // 2**20}

    def metrics_text(self) -> str:
        out = ["# HELP callrouter_recordings_active Calls being recorded now.",
               "# TYPE callrouter_recordings_active gauge", f"callrouter_recordings_active {len(self.active)}",
               "# HELP callrouter_recordings_started_total Recordings started (MixMonitor on the caller).",
               "# TYPE callrouter_recordings_started_total counter",
               f"callrouter_recordings_started_total {self.started}",
               "# HELP callrouter_recordings_kept_total Recordings kept with their ticket.",
               "# TYPE callrouter_recordings_kept_total counter", f"callrouter_recordings_kept_total {self.kept}",
               ("# HELP callrouter_recording_failures_total Calls of a recording line not recorded, or "
                "recordings not kept whole, by reason."),
               "# TYPE callrouter_recording_failures_total counter"]
        reasons = ("disk_full", "read_only", "start_failed", "no_file", "store_failed", "incomplete", "no_spool")
        out += [f'callrouter_recording_failures_total{{reason="{r}"}} {self.failures.get(r, 0)}' for r in reasons]
        out += [("# HELP callrouter_recordings_unclaimed Files in Asterisk's recording directory no closed ticket "
                "of this engine claims (another database's, or a ticket lost): left for an operator."),
                "# TYPE callrouter_recordings_unclaimed gauge", f"callrouter_recordings_unclaimed {self.unclaimed}",
                "# HELP callrouter_recording_suspended New calls go unrecorded (disk full or read-only): 1.",
                "# TYPE callrouter_recording_suspended gauge",
                f"callrouter_recording_suspended {int(self.trouble is not None)}",
                "# HELP callrouter_recording_free_bytes Free space where recordings are written and kept.",
                "# TYPE callrouter_recording_free_bytes gauge"]
        out += [f'callrouter_recording_free_bytes{{dir="{name}"}} {disk.free_bytes}'
                for name, disk in sorted(self.disks.items())]
        return "\n".join(out) + "\n"
