"""`callrouter recordings purge`: delete recordings past their retention, never one on
legal hold, and write what was deleted to each ticket's events.

Run it from cron or a timer, as the engine's user (it needs the ticket database and the
recordings directory, not the engine). Each ticket is looked at again right before its
file goes, so a legal hold placed meanwhile keeps it; the file goes first and the ticket
records it after (``recording_purged``): if the database write fails, the next run finds
the ticket still due, the file gone, and records that (``deleted: false``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callrouter.tickets import PurgeRecording, TicketStore
from callrouter.tickets.models import RECORDING_FILE

log = logging.getLogger("callrouter.recordings")


@dataclass
class PurgeReport:
    now: datetime
    dry_run: bool = False
    deleted: list[dict[str, Any]] = field(default_factory=list)  # files deleted (or, dry: to delete)
    missing: list[str] = field(default_factory=list)  # tickets whose file was already gone
    failed: list[dict[str, str]] = field(default_factory=list)
    held: int = 0  # past retention, kept by a legal hold

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "dry_run": self.dry_run, "deleted": len(self.deleted),
                "bytes": sum(int(d.get("size") or 0) for d in self.deleted), "missing": len(self.missing),
                "failed": self.failed, "kept_on_legal_hold": self.held, "files": self.deleted}


def _due(row: dict[str, Any] | None, now: datetime) -> bool:
    if row is None or row.get("legal_hold"):
        return False
    recording = row.get("recording") or {}
    until = recording.get("retain_until")
    return bool(until) and not recording.get("purged_at") and datetime.fromisoformat(str(until)) <= now


def purge_recordings(store: TicketStore, store_dir: Path, now: datetime | None = None, *,
                     dry_run: bool = False, batch: int = 200) -> PurgeReport:
    """Delete every recording whose ``retain_until`` is at or before ``now`` (default: the
    present) and whose ticket is not on legal hold."""
    now = now or datetime.now(UTC)
    report = PurgeReport(now=now, dry_run=dry_run)
    seen: set[str] = set()
    while True:
        rows = [r for r in store.recordings_due(now, batch if not dry_run else 1_000_000) if r["id"] not in seen]
        if not rows:
            break
        for row in rows:
            seen.add(row["id"])
            _purge_one(store, store_dir, row, now, report)
        if dry_run:
            break
    report.held = store.recordings_held_past_retention(now)
    return report


def _purge_one(store: TicketStore, store_dir: Path, row: dict[str, Any], now: datetime, report: PurgeReport) -> None:
    ticket_id = str(row["id"])
    recording = row.get("recording") or {}
    rel = str(recording.get("file") or "")
    if not RECORDING_FILE.fullmatch(rel):
        report.failed.append({"ticket": ticket_id, "error": f"not a recording file name: {rel[:100]!r}"})
        return
    entry = {"ticket": ticket_id, "file": rel, "sha256": recording.get("sha256"), "size": recording.get("size"),
             "retain_until": recording.get("retain_until")}
    if report.dry_run:
        report.deleted.append(entry)
        return
    if not _due(store.get(ticket_id), now):
        return  # put on legal hold (or purged by another run) since it was listed
    path = store_dir / rel
    try:
        path.unlink()
        deleted = True
    except FileNotFoundError:
        deleted = False
    except OSError as exc:
        report.failed.append({"ticket": ticket_id, "error": f"{path}: {exc.strerror or exc}"})
        log.error("event=recording_purge_failed ticket=%s file=%s error=%r", ticket_id, path, exc)
        return
    store.apply([PurgeRecording(id=ticket_id, at=datetime.now(UTC), deleted=deleted)])
    if deleted:
        report.deleted.append(entry)
    else:
        report.missing.append(ticket_id)
    log.info("event=recording_purged ticket=%s file=%s deleted=%s", ticket_id, rel, deleted)
    for parent in (path.parent, path.parent.parent, path.parent.parent.parent):  # empty day, month, year
        try:
            parent.rmdir()
        except OSError:
            break
