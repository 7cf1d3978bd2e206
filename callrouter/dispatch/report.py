"""The monthly accountability report (``callrouter dispatch report --month YYYY-MM``) as
CSV and as a plain table; the figures come from :meth:`DispatchStore.monthly_report`."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any, Final

COLUMNS: Final = ("month", "unit", "name", "orders", "acknowledged_in_time", "overdue", "median_ack_s",
                  "median_solve_s", "follow_ups_done")


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in COLUMNS])
    return out.getvalue()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def to_text(rows: Sequence[dict[str, Any]]) -> str:
    header = (f"{'unit':<28} {'orders':>6} {'in time':>7} {'overdue':>7} {'ack (median)':>12} "
              f"{'solved (median)':>15} {'follow-ups':>10}  name")
    lines = [header]
    for r in rows:
        lines.append(f"{r['unit']:<28} {r['orders']:>6} {r['acknowledged_in_time']:>7} {r['overdue']:>7} "
                     f"{_duration(r['median_ack_s']):>12} {_duration(r['median_solve_s']):>15} "
                     f"{r['follow_ups_done']:>10}  {r['name']}")
    return "\n".join(lines) + "\n"
