"""The writer's durable spool: ticket ops kept on local disk while the database is away.

An append-only JSON-lines file, one op a line (``{"op": "CloseTicket", "id": ..., "at":
"2026-11-29T05:33:01.250000+00:00", ...}``), flushed and fsync'd once per append, so ops
survive the engine dying during a database outage. The writer replays the file in order
when the database is back and then empties it. Replaying twice is harmless: every op is
idempotent in :meth:`TicketStore.apply`.

Blocking file I/O: the writer calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from .models import TICKET_OPS, TicketOp

log = logging.getLogger("callrouter.tickets")

_OPS: Final = {cls.__name__: cls for cls in TICKET_OPS}
_TIME_FIELDS: Final = frozenset(("at", "arrived_at", "ended_at", "answered_at", "started_at", "retain_until"))


def op_to_json(op: TicketOp) -> dict[str, Any]:
    """``op`` as a JSON-ready dict: its type under ``op``, times as ISO-8601 with offset."""
    data: dict[str, Any] = {"op": type(op).__name__}
    for field in dataclasses.fields(op):
        value = getattr(op, field.name)
        data[field.name] = value.isoformat() if isinstance(value, datetime) else value
    return data


def op_from_json(data: dict[str, Any]) -> TicketOp:
    """The op :func:`op_to_json` made; ValueError/TypeError if it is not one."""
    values = dict(data)
    cls = _OPS.get(str(values.pop("op", "")))
    if cls is None:
        raise ValueError(f"not a ticket op: {data!r}")
    for name in _TIME_FIELDS & values.keys():
        if values[name] is not None:
            values[name] = datetime.fromisoformat(values[name])
    op: TicketOp = cls(**values)  # the op's __post_init__ validates the rest
    return op


class Spool:
    """An append-only file of ticket ops at ``path`` (its directory is created)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> list[TicketOp]:
        """Every op in the file, in order. A torn last line (a crash mid-append, before
        its fsync returned) is dropped; other unreadable lines are logged and skipped."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        ops: list[TicketOp] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                ops.append(op_from_json(json.loads(line)))
            except (ValueError, TypeError) as exc:
                if number == len(lines) and not raw.endswith(b"\n"):
                    log.warning("ticket spool %s: torn last line dropped (%s)", self.path, exc)
                else:
                    log.error("ticket spool %s:%d: unreadable op skipped: %s", self.path,
                              number, exc)
        return ops

    def append(self, ops: Sequence[TicketOp]) -> None:
        """Append ``ops`` and fsync before returning."""
        if not ops:
            return
        data = "".join(json.dumps(op_to_json(op), ensure_ascii=False) + "\n" for op in ops)
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # caller numbers inside: the engine's user only, from the first byte
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if not created:
            os.fchmod(fd, 0o600)  # a spool made by an older version
        with os.fdopen(fd, "ab") as f:
            f.write(data.encode())
            f.flush()
            os.fsync(f.fileno())
        if created:
            fsync_dir(self.path.parent)  # the new file's directory entry must survive too

    def clear(self) -> None:
        """Empty the file: everything in it is written to the database."""
        try:
            with open(self.path, "r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            pass


def fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
