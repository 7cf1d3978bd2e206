"""Recording files: names, retention dates, the WAV header, keeping a file.

Asterisk (MixMonitor, ``[callrouter-record]``) writes a call's recording to its own spool,
``<spool>/callrouter-recording/<channel id>.wav``: 8 kHz, 16-bit mono PCM, both directions
mixed. It writes the WAV header's sizes only when it closes the file, after the channel
is gone, so a header whose sizes match the file says the recording is finished. The engine
then moves it under the recordings directory by the call's arrival date (UTC, as in the
ticket id): ``YYYY/MM/DD/<ticket id>.wav``, private to the engine's user.

The helpers that touch files block: the recorder runs them on its own worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

from callrouter.tickets.models import RECORDING_FILE
from callrouter.tickets.spool import fsync_dir

SUFFIX: Final = ".wav"
_CHANNEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
_TICKET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")
HEADER_BYTES: Final = 44  # the canonical RIFF/fmt/data header MixMonitor's wav format writes
_CHUNK = 1 << 20


def spool_file(spool_dir: Path, channel_id: str) -> Path:
    """Where MixMonitor writes the recording of channel ``channel_id`` (its UNIQUEID)."""
    if not _CHANNEL_ID.fullmatch(channel_id):
        raise ValueError(f"not an Asterisk channel id: {channel_id!r}")
    return spool_dir / f"{channel_id}{SUFFIX}"


def channel_of(spool_path: Path) -> str | None:
    """The channel id a spool file belongs to (None: not one of ours)."""
    if spool_path.suffix != SUFFIX or not _CHANNEL_ID.fullmatch(spool_path.stem):
        return None
    return spool_path.stem


def store_relpath(ticket_id: str, arrived_at: datetime) -> str:
    """``YYYY/MM/DD/<ticket id>.wav``: the call's UTC arrival date, as in its ticket id."""
    if arrived_at.tzinfo is None:
        raise ValueError("store_relpath needs a timezone-aware datetime")
    if not _TICKET_ID.fullmatch(ticket_id):
        raise ValueError(f"not a ticket id: {ticket_id!r}")
    rel = f"{arrived_at.astimezone(UTC):%Y/%m/%d}/{ticket_id}{SUFFIX}"
    if not RECORDING_FILE.fullmatch(rel):  # the rule the ticket op checks again
        raise ValueError(f"not a recording file name: {rel!r}")
    return rel


def retain_until(ended_at: datetime, retention_days: int) -> datetime:
    """The recording may be purged from this moment: ``retention_days`` after the call ended."""
    if ended_at.tzinfo is None:
        raise ValueError("retain_until needs a timezone-aware datetime")
    if isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 1:
        raise ValueError(f"retention_days must be a whole number >= 1, got {retention_days!r}")
    return ended_at.astimezone(UTC) + timedelta(days=retention_days)


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    bits: int
    riff_size: int  # as the header says (0 while MixMonitor still writes)
    data_size: int  # as the header says
    file_size: int

    @property
    def finished(self) -> bool:
        """The header was written at close: its sizes match the file (plus the pad byte
        Asterisk adds after an odd number of data bytes)."""
        return (self.file_size - (self.riff_size + 8) in (0, 1)
                and self.file_size - (self.data_size + HEADER_BYTES) in (0, 1))

    @property
    def audio_bytes(self) -> int:
        """Audio in the file (what the header says when finished, else what is there)."""
        return self.data_size if self.finished else max(0, self.file_size - HEADER_BYTES)

    @property
    def duration_s(self) -> float:
        per_second = self.rate * self.channels * self.bits // 8
        return self.audio_bytes / per_second if per_second else 0.0


def parse_header(head: bytes, file_size: int) -> WavInfo | None:
    """The canonical 44-byte PCM header; None when ``head`` is not one."""
    if len(head) < HEADER_BYTES or head[0:4] != b"RIFF" or head[8:12] != b"WAVE" or head[12:16] != b"fmt " \
            or head[36:40] != b"data":
        return None
    riff_size = struct.unpack_from("<I", head, 4)[0]
    fmt_size, fmt_tag, channels, rate = struct.unpack_from("<IHHI", head, 16)
    bits = struct.unpack_from("<H", head, 34)[0]
    data_size = struct.unpack_from("<I", head, 40)[0]
    if fmt_size != 16 or fmt_tag != 1 or channels < 1 or rate < 1 or bits not in (8, 16, 24, 32):
        return None
    return WavInfo(rate, channels, bits, riff_size, data_size, file_size)


def read_header(path: Path) -> WavInfo | None:
    """The header of ``path``; None if it has none (yet); FileNotFoundError if it is not there."""
    with path.open("rb") as f:
        head = f.read(HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
    return parse_header(head, size)


def repair_header(path: Path) -> WavInfo | None:
    """Write the sizes of a recording Asterisk never closed (it died, or the disk filled
    up before the close) into its header, so every player reads all of its audio."""
    with path.open("r+b") as f:
        head = f.read(HEADER_BYTES)
        size = os.fstat(f.fileno()).st_size
        info = parse_header(head, size)
        if info is None or info.finished:
            return info
        data = size - HEADER_BYTES
        f.seek(4)
        f.write(struct.pack("<I", size - 8))
        f.seek(40)
        f.write(struct.pack("<I", data))
        f.flush()
        os.fsync(f.fileno())
    return parse_header(head[:4] + struct.pack("<I", size - 8) + head[8:40] + struct.pack("<I", data), size)


class KeepError(OSError):
    """The store would not take the file (full, read-only, gone): it stays in the spool."""


@dataclass(frozen=True)
class Kept:
    relpath: str
    sha256: str
    size: int


def keep(src: Path, store_dir: Path, relpath: str) -> Kept:
    """Move the finished recording ``src`` to ``store_dir/relpath`` (0600, directories
    0700), durably; its SHA-256 and size. A rename on one filesystem; a copy, fsync and
    unlink across two. Raises KeepError when the store cannot take it (``src`` is left)."""
    dest = store_dir / relpath
    try:
        store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for parent in reversed([*Path(relpath).parents][:-1]):  # YYYY, YYYY/MM, YYYY/MM/DD
            (store_dir / parent).mkdir(mode=0o700, exist_ok=True)
        # as root, the file becomes ours by a rename and a chown; any other user copies it
        # (a file still owned by Asterisk's user would stay readable by Asterisk)
        moved = False
        if os.geteuid() == 0:
            try:
                os.rename(src, dest)
                os.chown(dest, 0, 0)
                moved = True
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        if not moved:
            tmp = dest.with_name(f".{dest.name}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout, _CHUNK)
                    fout.flush()
                    os.fsync(fout.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(dest)
            src.unlink()
        dest.chmod(0o600)
        fsync_dir(dest.parent)
        digest, size = sha256_of(dest)
    except OSError as exc:
        raise KeepError(exc.errno, f"{dest}: {exc.strerror or exc}") from exc
    return Kept(relpath, digest, size)


def sha256_of(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class DiskState(StrEnum):
    OK = "ok"
    FULL = "disk_full"
    READ_ONLY = "read_only"


@dataclass(frozen=True)
class Disk:
    state: DiskState
    free_bytes: int


def check_disk(path: Path, min_free_bytes: int) -> Disk:
    """Whether recordings may be written under ``path`` (or, while it does not exist, its
    nearest existing parent, where it will be made): writable, with enough free space."""
    while not path.exists() and path.parent != path:
        path = path.parent
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if st.f_flag & os.ST_RDONLY:
        return Disk(DiskState.READ_ONLY, free)
    return Disk(DiskState.FULL if free < min_free_bytes else DiskState.OK, free)

