"""Recording files: names, retention dates, the WAV header Asterisk writes at close, keeping
a file (on temporary files), the lines.toml recording table and the recording ops."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from callrouter.acd import ConfigFileError, load_lines, parse_lines
from callrouter.recordings.files import (
    HEADER_BYTES,
    DiskState,
    KeepError,
    channel_of,
    check_disk,
    keep,
    parse_header,
    read_header,
    repair_header,
    retain_until,
    spool_file,
    store_relpath,
)
from callrouter.tickets.models import AttachRecording, RecordingAccessed, RecordingFailed, SetLegalHold
from callrouter.tickets.spool import op_from_json, op_to_json

SHIPPED = Path(__file__).resolve().parents[2] / "queues" / "lines.toml"
CST = timezone(timedelta(hours=8))


def wav(data: bytes, *, closed: bool, rate: int = 8000) -> bytes:
    """A header as Asterisk's wav format writes it: sizes 0 while recording, real at close."""
    riff, size = (36 + len(data), len(data)) if closed else (0, 0)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate,
            rate * 2, 2, 16) + b"data" + struct.pack("<I", size) + data)


# ------------------------------------------------------------------ names and dates
def test_a_recording_is_filed_by_the_calls_utc_arrival_date_and_ticket() -> None:
    # 07:30 in China on 1 December is still 30 November in UTC, as in the ticket id
    arrived = datetime(2026, 12, 1, 7, 30, tzinfo=CST)
    assert store_relpath("T20261130-233000-1796.5", arrived) == "2026/11/30/T20261130-233000-1796.5.wav"
    assert store_relpath("T20261201-000000-1.2", datetime(2026, 12, 1, tzinfo=UTC)) == "2026/12/01/T20261201-000000-1.2.wav"


@pytest.mark.parametrize("ticket", ["", "../etc/passwd", "a/b", "T1 2", ".hidden", "x" * 90, "T\n1"])
def test_a_name_that_is_not_a_ticket_id_never_becomes_a_path(ticket: str) -> None:
    with pytest.raises(ValueError):
        store_relpath(ticket, datetime(2026, 12, 1, tzinfo=UTC))


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        store_relpath("T1", datetime(2026, 12, 1))
    with pytest.raises(ValueError):
        retain_until(datetime(2026, 12, 1), 30)


def test_spool_files_are_named_by_the_channel_and_nothing_else(tmp_path: Path) -> None:
    path = spool_file(tmp_path, "1796098965.827")
    assert path == tmp_path / "1796098965.827.wav" and channel_of(path) == "1796098965.827"
    assert channel_of(tmp_path / "notes.txt") is None and channel_of(tmp_path / "..wav") is None
    for bad in ("../x", "a/b", "", "1 2"):
        with pytest.raises(ValueError):
            spool_file(tmp_path, bad)


def test_retention_counts_days_from_the_end_of_the_call() -> None:
    ended = datetime(2026, 12, 1, 23, 59, 30, tzinfo=CST)
    assert retain_until(ended, 180) == datetime(2027, 5, 30, 15, 59, 30, tzinfo=UTC)
    assert retain_until(ended, 1) - ended == timedelta(days=1)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            retain_until(ended, bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the header
def test_a_header_says_finished_only_once_asterisk_closed_the_file() -> None:
    audio = b"\x01\x00" * 8000  # one second
    open_info = parse_header(wav(audio, closed=False)[:HEADER_BYTES], HEADER_BYTES + len(audio))
    assert open_info is not None and not open_info.finished
    assert open_info.duration_s == pytest.approx(1.0)  # what is there so far
    done = parse_header(wav(audio, closed=True)[:HEADER_BYTES], HEADER_BYTES + len(audio))
    assert done is not None and done.finished and done.duration_s == pytest.approx(1.0)
    empty = parse_header(wav(b"", closed=True), HEADER_BYTES)
    assert empty is not None and empty.finished and empty.duration_s == 0.0
    # the pad byte after an odd number of data bytes
    odd = parse_header(wav(b"\x01\x02\x03", closed=True)[:HEADER_BYTES], HEADER_BYTES + 4)
    assert odd is not None and odd.finished
    assert parse_header(b"RIFF" + b"\0" * 40, 44) is None
    assert parse_header(b"not a wav file at all, no", 25) is None


def test_a_file_asterisk_never_closed_is_repaired_from_its_length(tmp_path: Path) -> None:
    path = tmp_path / "1.1.wav"
    audio = b"\x10\x00" * 12000  # 1.5 s
    path.write_bytes(wav(audio, closed=False))
    before = read_header(path)
    assert before is not None and not before.finished
    info = repair_header(path)
    assert info is not None and info.finished and info.duration_s == pytest.approx(1.5)
    again = read_header(path)
    assert again is not None and again.finished and again.data_size == len(audio)
    assert path.read_bytes()[HEADER_BYTES:] == audio, "the audio is untouched"


# ------------------------------------------------------------------ keeping a file
def test_keep_moves_the_file_privately_and_returns_its_checksum(tmp_path: Path) -> None:
    spool, store = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    src = spool / "1.1.wav"
    content = wav(b"\x01\x00" * 800, closed=True)
    src.write_bytes(content)
    rel = "2026/12/01/T1.wav"
    kept = keep(src, store, rel)
    dest = store / rel
    assert not src.exists() and dest.read_bytes() == content
    assert kept.sha256 == hashlib.sha256(content).hexdigest() and kept.size == len(content)
    assert dest.stat().st_mode & 0o777 == 0o600
    for d in (store, store / "2026", store / "2026/12", store / "2026/12/01"):
        assert d.stat().st_mode & 0o777 == 0o700, d


def test_a_store_that_cannot_take_the_file_leaves_it_in_the_spool(tmp_path: Path) -> None:
    src = tmp_path / "1.1.wav"
    src.write_bytes(wav(b"\0\0", closed=True))
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store directory should be")
    with pytest.raises(KeepError):
        keep(src, blocked, "2026/12/01/T1.wav")
    assert src.exists()


def test_disk_check_reads_the_nearest_existing_directory(tmp_path: Path) -> None:
    assert check_disk(tmp_path / "not" / "yet", 0).state is DiskState.OK
    full = check_disk(tmp_path, 1 << 62)
    assert full.state is DiskState.FULL and full.free_bytes > 0


# ------------------------------------------------------------------ lines.toml
def test_shipped_lines_record_110_and_not_96345() -> None:
    l110, l96345 = load_lines(SHIPPED).lines
    assert (l110.recording.enabled, l110.recording.retention_days) == (True, 180)
    assert (l96345.recording.enabled, l96345.recording.retention_days) == (False, 90)


def _lines(recording: str) -> str:
    text = SHIPPED.read_text()
    start = text.index("[line.110.recording]")
    end = text.index("[line.110.endpoints]")
    return text[:start] + recording + "\n" + text[end:]


@pytest.mark.parametrize(("table", "at", "message"), [
    ('[line.110.recording]\nenabled = "yes"\nretention_days = 30\n', "enabled =",
     "line.110.recording.enabled: must be true or false"),
    ("[line.110.recording]\nenabled = true\nretention_days = 0\n", "retention_days =",
     "line.110.recording.retention_days: must be"),
    ("[line.110.recording]\nenabled = true\n", "[line.110.recording]", "line.110.recording.retention_days: missing"),
    ("[line.110.recording]\nretention_days = 30\n", "[line.110.recording]", "line.110.recording.enabled: missing"),
    ("[line.110.recording]\nenabled = true\nretention_days = 30\nretension = 1\n", "retension =",
     "retension: unknown key"),
])
def test_a_bad_recording_table_names_its_file_and_line(table: str, at: str, message: str) -> None:
    text = _lines(table)
    with pytest.raises(ConfigFileError) as info:
        parse_lines(text, "lines.toml")
    [problem] = info.value.problems
    lines = text.splitlines()
    start = lines.index("[line.110.recording]")
    line = next(i for i, ln in enumerate(lines[start:], start + 1) if ln.startswith(at))
    assert problem.startswith(f"lines.toml:{line}:") and message in problem, problem


def test_a_line_without_a_recording_table_is_not_recorded() -> None:
    text = _lines("")
    l110 = parse_lines(text, "lines.toml").lines[0]
    assert not l110.recording.enabled


# ------------------------------------------------------------------ ticket ops
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _attach(**changes: object) -> AttachRecording:
    values: dict[str, object] = {"id": "T1", "file": "2026/12/01/T1.wav", "sha256": "a" * 64, "size": 100,
                                 "duration_s": 1.5, "started_at": NOW, "retain_until": NOW + timedelta(days=1),
                                 "at": NOW}
    values.update(changes)
    return AttachRecording(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("changes", [
    {"file": "../../etc/passwd"}, {"file": "/abs/2026/12/01/T1.wav"}, {"file": "2026/12/01/T1.mp3"},
    {"sha256": "A" * 64}, {"sha256": "a" * 63}, {"size": -1}, {"size": 1.5}, {"duration_s": float("nan")},
    {"retain_until": datetime(2026, 12, 1)}, {"complete": "yes"},
])
def test_a_recording_op_the_database_would_take_wrongly_is_refused_when_built(changes: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        _attach(**changes)


def test_recording_ops_survive_the_spool() -> None:
    ops = [_attach(), RecordingFailed("T1", "disk_full", NOW, "free 1 MB"),
           SetLegalHold("T1", True, "supervisor", "案件 2026-17", NOW),
           RecordingAccessed("T1", NOW, "agent:s110-01", True, "复核", "bytes=0-99")]
    for op in ops:
        assert op_from_json(op_to_json(op)) == op
    with pytest.raises(ValueError):
        RecordingFailed("T1", "cosmic_rays", NOW)
    assert RecordingAccessed("T1", NOW, "x", False, "a\u202eb\n" + "r" * 300).reason == "ab" + "r" * 198
