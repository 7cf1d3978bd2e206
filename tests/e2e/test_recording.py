"""Call recording end to end: a real Asterisk records 110 callers (MixMonitor, started by
the engine's detour through [callrouter-record]) from the answer through the wait, the
seats, a transfer, until hang-up; the file is kept by ticket with its checksum; a disk
that cannot take recordings never costs a call; a file whose call ended while the engine
was dead is kept by the next engine.

The callers play a steady 440 Hz tone the whole call (SIPp, G.722): the recording must
hold it from end to end, which shows it covers every moment of the call, not only the
ones where Asterisk played something."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from callrouter.config import Settings
from callrouter.provision.asterisk import recording_dir_on_host
from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.speech import G722_FRAME, RATE, g722_encode, speak_scenario, write_pcap
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls
from tests.conftest import wait_for
from tests.e2e import test_pages
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_pages import _text
from tests.e2e.test_roles_feed import _token

browser = test_pages.browser  # the page tests' headless Chromium, as a fixture here too
TONE_HZ = 440.0
TONE_AMPLITUDE = 6000
TONE_S = 90.0


@pytest.fixture(scope="session")
def tone(asterisk: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scenario whose caller plays a 440 Hz tone for 90 s once answered (G.722, as a
    wideband carrier's caller)."""
    folder = tmp_path_factory.mktemp("tone")
    pcm = b"".join(struct.pack("<h", int(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * i / RATE)))
                   for i in range(int(TONE_S * RATE)))
    g722 = g722_encode(asterisk, pcm)
    pcap = folder / "tone.pcap"
    write_pcap(pcap, [g722[i:i + G722_FRAME] for i in range(0, len(g722) - G722_FRAME + 1, G722_FRAME)])
    return speak_scenario(asterisk, pcap, folder)


@pytest.fixture
def seats() -> Iterator[list[SeatSims]]:
    started: list[SeatSims] = []
    yield started
    for group in started:
        group.stop()


def calling(engines: EngineFactory, scenario: Path, specs: list[CallSpec]) -> tuple[threading.Thread, list[TrunkReport]]:
    out: list[TrunkReport] = []
    thread = threading.Thread(target=lambda: out.append(run_calls(engines.settings, specs, rate=5,
                                                                  scenario=str(scenario))), daemon=True)
    thread.start()
    return thread, out


def keep_in(engines: EngineFactory, tmp_path: Path) -> Path:
    """This test's recordings directory (never the shared home's)."""
    engines.env["CALLROUTER_RECORDINGS_DIR"] = str(tmp_path / "recordings")
    return tmp_path / "recordings"


def recorded(engines: EngineFactory) -> list[dict[str, Any]]:
    """Every ticket, once all are closed and each has its recording (or why not)."""
    rows = engines.closed_tickets(1)
    return rows if rows and all(r["recording"] for r in rows) else []


def tone_levels(path: Path, window_s: float = 0.5) -> list[float]:
    """The 440 Hz amplitude (Goertzel) of each window of a recording."""
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        samples = struct.unpack(f"<{w.getnframes()}h", w.readframes(w.getnframes()))
    n = int(8000 * window_s)
    coeff = 2 * math.cos(2 * math.pi * TONE_HZ / 8000)
    levels = []
    for start in range(0, len(samples) - n + 1, n):
        s1 = s2 = 0.0
        for x in samples[start:start + n]:
            s1, s2 = x + coeff * s1 - s2, s1
        levels.append(2 * math.sqrt(max(0.0, s1 * s1 + s2 * s2 - coeff * s1 * s2)) / n)
    return levels


def metric(engines: EngineFactory, name: str) -> float:
    import urllib.request

    req = urllib.request.Request(f"{engines.settings.api_url}/metrics",
                                 headers={"Authorization": f"Bearer {engines.settings.secret('api_token')}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {name} in /metrics")


def test_a_110_call_with_a_transfer_is_one_recording_of_the_whole_call(engines: EngineFactory, seats: list[SeatSims],
                                                                       tone: Path, tmp_path: Path) -> None:
    store_dir = keep_in(engines, tmp_path)
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [
        SeatSpec("s110-01", answer_delay_s=0.5, talk_s=0),  # talks until the caller is handed on
        SeatSpec("s96345-01", answer_delay_s=0.5, talk_s=4.0, talk_dist="fixed")]))
    thread, out = calling(engines, tone, [CallSpec("119", "13970000001", -1)])  # until a seat hangs up
    wait_for(lambda: engines.status()["lines"]["110"]["waiting"] == 1, 15, "the caller waiting on 110")
    time.sleep(3.0)  # a wait worth recording: the recording must cover it too
    engines.login("s110-01")
    wait_for(lambda: "event=call_connected" in engine.log(), 15, "the 110 seat to answer")
    time.sleep(2.0)
    status, calls = engines.api("GET", "/api/calls")
    assert status == 200 and isinstance(calls, list) and len(calls) == 1
    status, body = engines.api("POST", f"/api/calls/{calls[0]['call_id']}/transfer", {"to": "96345", "reason": "噪音投诉"})
    assert status == 200, body
    engines.login("s96345-01")
    thread.join(timeout=60)
    assert out and out[0].calls[0].outcome == "completed_by_far_end", "the caller stayed on until the seat hung up"

    [ticket] = wait_for(lambda: recorded(engines), 30, "the ticket with its recording")
    assert ticket["line"] == "96345" and ticket["seat"] == "s96345-01" and len(ticket["transfers"]) == 1
    rec = ticket["recording"]
    assert rec.get("sha256"), rec
    files = sorted(p for p in store_dir.rglob("*") if p.is_file())
    assert files == [store_dir / rec["file"]], "one recording for the call, through the transfer"
    path = files[0]
    content = path.read_bytes()
    assert hashlib.sha256(content).hexdigest() == rec["sha256"] and len(content) == rec["size"]
    assert rec["file"] == f"{ticket['arrived_at'][:10].replace('-', '/')}/{ticket['id']}.wav"
    assert path.stat().st_mode & 0o777 == 0o600
    call_s = (datetime.fromisoformat(ticket["ended_at"]) - datetime.fromisoformat(ticket["answered_at"])).total_seconds()
    assert call_s > 10 and abs(rec["duration_s"] - call_s) < 1.0, (rec["duration_s"], call_s)
    assert rec["complete"] is True
    retain = datetime.fromisoformat(rec["retain_until"]) - datetime.fromisoformat(ticket["ended_at"])
    assert abs(retain.total_seconds() - 180 * 86400) < 5, "110's retention, counted from the end of the call"
    levels = tone_levels(path)
    quiet = [i * 0.5 for i, level in enumerate(levels) if level < TONE_AMPLITUDE / 4]
    assert not quiet, f"the caller's tone is missing at {quiet} s of {len(levels) * 0.5} s (levels {levels})"
    # nothing left in Asterisk's spool, and the ticket says it was recorded
    assert not (recording_dir_on_host(engines.settings) / f"{ticket['channel_id']}.wav").exists()
    store = engines.store()
    try:
        kinds = [e["kind"] for e in store.events(ticket["id"])]
    finally:
        store.close()
    assert kinds.count("recorded") == 1 and "recording_failed" not in kinds
    assert "event=recording_started" in engine.log() and "event=recording_kept" in engine.log()


def test_a_three_way_consult_is_in_the_callers_one_recording(engines: EngineFactory, seats: list[SeatSims],
                                                             tone: Path, tmp_path: Path) -> None:
    store_dir = keep_in(engines, tmp_path)
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [
        SeatSpec("s110-01", answer_delay_s=0.3, talk_s=4.0, talk_dist="fixed"),  # leaves after 4 s
        SeatSpec("s96345-01", answer_delay_s=0.3, talk_s=0)]))  # keeps the caller until they hang up
    engines.login("s110-01", "s96345-01")
    thread, out = calling(engines, tone, [CallSpec("110", "13970000007", 9.0)])
    wait_for(lambda: "event=call_connected" in engine.log(), 15, "the 110 seat to answer")
    status, calls = engines.api("GET", "/api/calls")
    assert status == 200 and isinstance(calls, list) and len(calls) == 1
    status, body = engines.api("POST", f"/api/calls/{calls[0]['call_id']}/consult", {"line": "96345"})
    assert status == 200, body
    wait_for(lambda: "event=consult_joined" in engine.log(), 10, "three in one bridge")
    wait_for(lambda: "event=consult_handover" in engine.log(), 10, "the first seat to leave")
    thread.join(timeout=30)
    assert out and out[0].calls[0].outcome == "completed"
    [ticket] = wait_for(lambda: recorded(engines), 30, "the ticket with its recording")
    rec = ticket["recording"]
    assert ticket["seat"] == "s96345-01" and [t["reason"] for t in ticket["transfers"]] == ["three-way consult"]
    assert sorted(p for p in store_dir.rglob("*.wav")) == [store_dir / rec["file"]]
    call_s = (datetime.fromisoformat(ticket["ended_at"]) - datetime.fromisoformat(ticket["answered_at"])).total_seconds()
    assert abs(rec["duration_s"] - call_s) < 1.0 and rec["retain_until"], (rec, call_s)
    levels = tone_levels(store_dir / rec["file"])
    assert all(level >= TONE_AMPLITUDE / 4 for level in levels), levels


def test_a_96345_call_escalated_to_110_is_recorded_from_the_transfer(engines: EngineFactory, seats: list[SeatSims],
                                                                      tone: Path, tmp_path: Path) -> None:
    store_dir = keep_in(engines, tmp_path)
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    seats.append(start_seats(engines.settings, [
        SeatSpec("s96345-01", answer_delay_s=0.3, talk_s=0),
        SeatSpec("s110-01", answer_delay_s=0.3, talk_s=3.0, talk_dist="fixed")]))
    engines.login("s96345-01")
    thread, out = calling(engines, tone, [CallSpec("12345", "13970000008", -1)])
    wait_for(lambda: "event=call_connected" in engine.log(), 15, "the 96345 seat to answer")
    assert "event=recording_started" not in engine.log(), "96345 does not record"
    time.sleep(2.0)
    status, calls = engines.api("GET", "/api/calls")
    assert status == 200 and isinstance(calls, list) and len(calls) == 1
    status, body = engines.api("POST", f"/api/calls/{calls[0]['call_id']}/transfer",
                               {"to": "110", "reason": "燃气泄漏", "priority": 1})
    assert status == 200, body
    wait_for(lambda: "event=recording_started" in engine.log(), 10, "the recording to start at the escalation")
    engines.login("s110-01")
    thread.join(timeout=60)
    assert out and out[0].calls[0].outcome == "completed_by_far_end", "the escalated caller stayed on"
    [ticket] = wait_for(lambda: recorded(engines), 30, "the ticket with its recording")
    rec = ticket["recording"]
    assert ticket["line"] == "110" and ticket["seat"] == "s110-01" and rec.get("sha256"), ticket
    escalated = datetime.fromisoformat(ticket["transfers"][0]["at"])
    since_s = (datetime.fromisoformat(ticket["ended_at"]) - escalated).total_seconds()
    assert abs(rec["duration_s"] - since_s) < 1.0, (rec, since_s)
    assert all(level >= TONE_AMPLITUDE / 4 for level in tone_levels(store_dir / rec["file"]))
    assert engine.log().count("event=recording_started") == 1


class Mounted:
    """A filesystem mounted over Asterisk's recording directory for one test (root)."""

    def __init__(self, settings: Settings) -> None:
        self.path = recording_dir_on_host(settings)
        st = self.path.stat()
        self.owner = (st.st_uid, st.st_gid, st.st_mode & 0o7777)

    def tmpfs(self, size: str) -> None:
        uid, gid, mode = self.owner
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},uid={uid},gid={gid},mode={mode:o}",
                        "callrouter-test", str(self.path)], check=True, capture_output=True, timeout=10)

    def umount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True, timeout=10)


@pytest.fixture
def spool(asterisk: Settings) -> Iterator[Mounted]:
    mounted = Mounted(asterisk)
    try:
        yield mounted
    finally:
        mounted.umount()
        uid, gid, mode = mounted.owner
        os.chown(mounted.path, uid, gid)
        mounted.path.chmod(mode)


def test_a_full_disk_costs_no_call_and_the_wallboard_says_so(engines: EngineFactory, spool: Mounted, tone: Path,
                                                             browser: Any, tmp_path: Path) -> None:
    keep_in(engines, tmp_path)
    spool.tmpfs("1m")  # far below recording_min_free_mb (256 MB)
    engine = engines.start()
    token = _token(engines, "--role", "supervisor")
    browser.get(f"{engines.settings.api_url}/wallboard?token={token}")
    wait_for(lambda: engines.status().get("recording", {}).get("state") == "disk_full", 10,
             "the engine to notice the full disk")
    report = run_calls(engines.settings, [CallSpec("110", "13970000002", 3.0)], rate=1, scenario=str(tone))
    assert report.calls[0].outcome == "completed", report.to_json()
    [ticket] = wait_for(lambda: recorded(engines), 20, "the ticket")
    assert ticket["answered_at"] and ticket["outcome"] == "abandoned"  # nobody logged in: answered, held, gone
    assert ticket["recording"]["failed"] == "disk_full" and "MB free" in ticket["recording"]["detail"]
    assert metric(engines, 'callrouter_recording_failures_total{reason="disk_full"}') == 1
    assert metric(engines, "callrouter_recording_suspended") == 1
    assert "event=recording_suspended reason=disk_full" in engine.log()
    wait_for(lambda: "磁盘空间不足" in _text(browser, "#recording"), 10, "the wallboard to say recording stopped")
    assert "磁盘满 1" in _text(browser, "#recording")
    # room again: the next caller is recorded
    spool.umount()
    wait_for(lambda: engines.status()["recording"]["state"] == "on", 10, "recording to resume")
    report = run_calls(engines.settings, [CallSpec("110", "13970000003", 2.0)], rate=1, scenario=str(tone))
    assert report.calls[0].ok
    rows = wait_for(lambda: [r for r in engines.closed_tickets(2) if r["recording"]][1:] and engines.closed_tickets(2),
                    20, "the second ticket with its recording")
    second = next(t for t in rows if t["caller"] == "13970000003")
    assert second["recording"].get("sha256") and second["recording"]["duration_s"] > 1.0


def test_a_recording_asterisk_cannot_write_costs_no_call(engines: EngineFactory, spool: Mounted, tone: Path,
                                                        tmp_path: Path) -> None:
    keep_in(engines, tmp_path)
    # the engine (root) sees room; Asterisk's own user cannot create the file
    spool.path.chmod(0o700)
    os.chown(spool.path, 0, 0)
    engine = engines.start()
    report = run_calls(engines.settings, [CallSpec("110", "13970000004", 2.0)], rate=1, scenario=str(tone))
    assert report.calls[0].outcome == "completed", report.to_json()
    [ticket] = wait_for(lambda: recorded(engines), 20, "the ticket")
    assert ticket["answered_at"] and ticket["recording"]["failed"] == "no_file"
    assert metric(engines, 'callrouter_recording_failures_total{reason="no_file"}') == 1
    assert "event=recording_failed" in engine.log() and "reason=no_file" in engine.log()


def test_recordings_outlive_a_killed_engine(engines: EngineFactory, tone: Path, tmp_path: Path) -> None:
    """kill -9 with two recorded callers waiting: one hangs up while no engine runs (the next
    engine keeps its file), the other is still there (adopted: recorded once, whole)."""
    store_dir = keep_in(engines, tmp_path)
    first = engines.start()
    short, long = CallSpec("110", "13970000005", 6.0), CallSpec("110", "13970000006", 14.0)
    thread, out = calling(engines, tone, [short, long])
    wait_for(lambda: first.log().count("event=recording_started") == 2, 10, "both recordings to start")
    time.sleep(1.0)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    time.sleep(6.0)  # the first caller hangs up while no engine runs
    second = engines.start()
    thread.join(timeout=30)
    assert out and [c.outcome for c in out[0].calls] == ["completed", "completed"], out[0].to_json()
    rows = wait_for(lambda: (r := recorded(engines)) and len(r) == 2 and r, 30, "both recordings kept")
    by_caller = {r["caller"]: r for r in rows}
    for spec in (short, long):
        rec = by_caller[spec.caller]["recording"]
        assert rec.get("sha256") and abs(rec["duration_s"] - spec.hold_s) < 1.0, (spec, rec)
        assert hashlib.sha256((store_dir / rec["file"]).read_bytes()).hexdigest() == rec["sha256"]
    log = second.log()
    assert f"event=recording_adopted ticket={by_caller[long.caller]['id']}" in log
    assert "event=recording_started" not in log, "the adopted caller was not recorded a second time"
    assert log.count("event=recording_kept") == 2
