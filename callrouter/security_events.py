"""Abuse signals: Asterisk's security events, counted for /metrics.

Asterisk's ``res_security_log`` writes every security event (a request from an unknown
source, an unknown account, a failed digest challenge, a successful authentication ...)
to the ``security`` logger channel, which ``asterisk-conf/logger.conf`` sends to
``security.log`` in Asterisk's log directory. ARI offers no subscription to these events
(they are AMI/logger only), so the engine follows the file: a task reads what was
appended every ``interval_s`` (from the end of the file at start: counters count since
the engine started, as Prometheus counters do) and counts events by type. A rotated or
truncated file is read again from its start.

A line looks like::

    [2026-12-01 00:35:27.123] SECURITY[123] res_security_log.c: SecurityEvent="InvalidAccountID",
    EventTV="...",Severity="Error",Service="PJSIP",...,RemoteAddress="IPV4/UDP/127.0.44.4/5060"

Only the event type (Asterisk's own fixed vocabulary, checked to be a plain word) becomes a
label: account ids and addresses come from the attacker and would make the label set
unbounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import Counter
from pathlib import Path

log = logging.getLogger("callrouter.security")

_EVENT = re.compile(r'SecurityEvent="([A-Za-z]{1,40})"')
_SERVICE = re.compile(r'Service="([A-Za-z]{1,20})"')
_READ_MAX = 4 << 20  # per poll: a flood is counted over several polls, memory stays bounded


def parse_event(line: str) -> tuple[str, str] | None:
    """(event type, service) of one security log line; None if it is not an event."""
    event = _EVENT.search(line)
    if event is None:
        return None
    service = _SERVICE.search(line)
    return event.group(1), service.group(1) if service else ""


class SecurityEvents:
    """Counts security events appended to Asterisk's security log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""
        self.readable = False  # the file was found and read at the last poll

    def start_at_end(self) -> None:
        """Skip what the file holds now (events before the engine started)."""
        try:
            st = self.path.stat()
        except OSError:
            return
        self._inode, self._offset = st.st_ino, st.st_size

    def poll(self) -> int:
        """Read what was appended since the last poll; returns how many events were counted.

        Blocking (small) file I/O: call it through ``asyncio.to_thread``.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            self.readable = False
            return 0
        try:
            st = os.fstat(fd)
            if st.st_ino != self._inode or st.st_size < self._offset:
                # a new file (rotated) or truncated: read it from the start
                self._inode, self._offset, self._partial = st.st_ino, 0, b""
            os.lseek(fd, self._offset, os.SEEK_SET)
            data = os.read(fd, _READ_MAX)
        finally:
            os.close(fd)
        self.readable = True
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-_READ_MAX:]  # an unfinished last line waits for its end
        counted = 0
        for raw in lines:
            found = parse_event(raw.decode("utf-8", errors="replace"))
            if found is not None:
                self.counts[found[0]] += 1
                counted += 1
        return counted

    async def run(self, interval_s: float = 1.0) -> None:
        """Poll until cancelled (a task the engine owns)."""
        await asyncio.to_thread(self.start_at_end)
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except OSError as exc:
                log.warning("event=security_log_unreadable path=%s error=%r", self.path, exc)
            await asyncio.sleep(interval_s)

    def metrics_text(self) -> str:
        out = [("# HELP callrouter_sip_security_events_total Asterisk security events (failed or "
               "challenged authentications, unknown sources), by type, since the engine started."),
               "# TYPE callrouter_sip_security_events_total counter"]
        out += [f'callrouter_sip_security_events_total{{event="{event}"}} {n}'
                for event, n in sorted(self.counts.items())]
        out += [("# HELP callrouter_sip_security_log_readable Whether the engine can read Asterisk's "
                "security log (1) or not (0)."), "# TYPE callrouter_sip_security_log_readable gauge",
                f"callrouter_sip_security_log_readable {int(self.readable)}"]
        return "\n".join(out) + "\n"
