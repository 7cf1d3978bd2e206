"""One structured line per event: ``ts level logger key=value ...`` (logfmt-like).

Messages are written as ``event=name key=value`` by the callers, so a line can be
grepped by ticket id or channel and parsed by a log shipper without a JSON decoder.
"""

from __future__ import annotations

import logging
import sys
import time


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line = f"ts={ts} level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and asyncio's debug chatter are not events of ours
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def q(value: object) -> str:
    """Quote a value for a logfmt line when it holds spaces or quotes."""
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\r\t'):
        escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                   .replace("\r", "\\r").replace("\t", "\\t"))
        return '"' + escaped + '"'
    return text
