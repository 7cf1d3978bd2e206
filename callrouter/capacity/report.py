"""A staffing plan or what-if as a table (text, CSV, JSON) and as an SVG chart.

The chart is written by hand (no plotting library): one panel per line, hours along the
bottom; bars are the offered load in erlangs (seat-hours of work per hour), the solid
step the seats planned, the dashed step seats plus the shared overflow pool, both on
the left scale; the green line is the predicted service level (or connected share, the
line's own target measure) on the right scale, with the target as a red dashed line.
Text is escaped; the document has no script and no external reference, so the
wallboard can show it as an image.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from callrouter.capacity.staffing import Figures, Goal, PeriodRow, StaffingReport


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _clock(seconds: float) -> str:
    s = round(seconds)
    day, s = divmod(s, 86400)
    hhmm = f"{s // 3600:02d}:{s % 3600 // 60:02d}"
    if s % 60:
        hhmm += f":{s % 60:02d}"
    return f"d{day + 1} {hhmm}" if day else hhmm


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _horizons(report: StaffingReport, n: int) -> str:
    """``n`` simulated runs of the report's horizon, named by its length."""
    span = report.periods * report.period_s
    what = "day" if span == 86400 else "week" if span == 7 * 86400 else "run"
    return f"{n} simulated {what}{'s' if n != 1 else ''}"


def headline(report: StaffingReport) -> list[str]:
    what = "staffing plan" if report.kind == "plan" else "what-if"
    out = [(f"{what}: {report.scenario}, {report.periods} periods of {_span(report.period_s)}, "
           f"seeds {', '.join(map(str, report.seeds))} (figures summed over {_horizons(report, len(report.seeds))} "
           "per candidate)")]
    if report.description:
        out.append(f"  {report.description}")
    return out


def format_text(report: StaffingReport) -> str:
    out = headline(report)
    plan = report.kind == "plan"
    for lid, rows in report.rows.items():
        goal = report.goals[lid]
        out += ["", f"line {lid}: target {goal.label} (lines.toml: {report.configured.get(lid, 0)} seats)"]
        head = f"  {'from':>8} {'calls':>7} {'load':>6}"
        head += f" {'erlang':>6}" if plan else ""
        head += f" {'seats':>5} {'pool':>4} {'SL':>8} {'connected':>9} {'abandons':>8} {'longest':>8}"
        if plan and report.check_seeds:
            head += f" {'new callers':>11}"
        if plan and report.surge:
            head += f"   {f'+{100 * report.surge:g} % with pool':>18}"
        out.append(head)
        for r in rows:
            f = r.predicted
            line = f"  {_clock(r.start_s):>8} {r.calls:>7.1f} {r.load_erl:>6.2f}"
            line += f" {r.erlang_seats if r.erlang_seats is not None else '-':>6}" if plan else ""
            line += (f" {r.seats:>5} {r.pool:>4} {_pct(f.service_level):>8} {_pct(f.connected):>9} "
                     f"{f.per_run(f.abandoned):>8.1f} {f.longest_wait_s:>7.0f}s")
            if plan and r.check is not None:
                line += f" {_pct(goal.value(r.check)):>11}"
            if plan and r.surge is not None:
                line += f"   {_pct(goal.value(r.surge)):>18}"
            if not goal.met(f):
                line += "  misses target"
            out.append(line)
        total = sum((r.predicted for r in rows), Figures())
        out.append(f"  {'day':>8} {sum(r.calls for r in rows):>7.0f} {'':>6}" + (f" {'':>6}" if plan else "")
                   + f" {sum(r.seats for r in rows) * report.period_s / 3600:>5.0f} {'':>4} "
                   f"{_pct(total.service_level):>8} {_pct(total.connected):>9} {total.per_run(total.abandoned):>8.1f} "
                   f"{total.longest_wait_s:>7.0f}s   (seats: seat-hours)")
    if any(report.pool):
        serves = ", ".join(f"{i + 1}: {'+'.join(lines)}" for i, lines in enumerate(report.pool_lines))
        out += ["", (f"overflow pool (shared): {sum(report.pool) * report.period_s / 3600:.0f} seat-hours; "
                f"pool seats serve {serves}")]
    if plan and report.check_seeds:
        out.append(f"new callers: the own seats on {_horizons(report, len(report.check_seeds))} the search never saw "
                   "(the search stops where its own days just meet the target; these are the forecast)")
    if plan and report.surge:
        out.append(f"the pool keeps the targets with {100 * report.surge:g} % more callers than forecast "
                   "(own seats as planned, the lines' overflow policy calling the pool in)")
    for note in report.notes:
        out.append(f"note: {note}")
    out += ["", (f"{_horizons(report, report.simulations)}, {report.events} events through the ACD core, "
            f"{report.wall_s:.1f} s")]
    return "\n".join(out) + "\n"


CSV_FIELDS = ("line", "start", "start_s", "calls", "load_erl", "erlang_seats", "seats", "pool", "offered",
              "service_level", "connected", "abandoned", "longest_wait_s", "meets_target", "check_service_level",
              "check_connected", "surge_service_level", "surge_connected", "surge_meets_target")


def format_csv(report: StaffingReport) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for lid, rows in report.rows.items():
        goal = report.goals[lid]
        for r in rows:
            f = r.predicted
            writer.writerow({
                "line": lid, "start": _clock(r.start_s), "start_s": r.start_s, "calls": round(r.calls, 2),
                "load_erl": round(r.load_erl, 3), "erlang_seats": "" if r.erlang_seats is None else r.erlang_seats,
                "seats": r.seats, "pool": r.pool, "offered": round(f.per_run(f.offered), 2),
                "service_level": _share(f.service_level), "connected": _share(f.connected),
                "abandoned": round(f.per_run(f.abandoned), 2), "longest_wait_s": round(f.longest_wait_s, 1),
                "meets_target": int(goal.met(f)),
                "check_service_level": "" if r.check is None else _share(r.check.service_level),
                "check_connected": "" if r.check is None else _share(r.check.connected),
                "surge_service_level": "" if r.surge is None else _share(r.surge.service_level),
                "surge_connected": "" if r.surge is None else _share(r.surge.connected),
                "surge_meets_target": "" if r.surge is None else int(goal.met(r.surge))})
    return buf.getvalue()


def _share(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def format_json(report: StaffingReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)


# --- the chart ------------------------------------------------------------------------------
WIDTH = 960
PANEL_H = 250
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 44, 58
LINE_ZH = {"110": "110 应急", "96345": "96345 公共服务"}


def _nice(top: float) -> tuple[float, float]:
    """An axis maximum at or above ``top`` and a tick step (1, 2 or 5 times a power of ten)."""
    top = max(top, 1.0)
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return math.ceil(top / step) * step, step


def _steps(xs: Sequence[float], ys: Sequence[float], x_end: float) -> str:
    """An SVG path of a step curve: ys[i] from xs[i] to the next x."""
    parts = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        nxt = xs[i + 1] if i + 1 < len(xs) else x_end
        parts.append(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f} L{nxt:.1f},{y:.1f}")
    return " ".join(parts)


def _text_width(text: str, size: float = 11) -> float:
    """About how wide ``text`` is drawn: a CJK character is a full em, others about half."""
    return sum(size if ord(c) > 0x2E7F else size * 0.56 for c in text)


def _label_every(periods: int) -> int:
    for every in (1, 2, 3, 4, 6, 12, 24, 48):
        if periods / every <= 12:
            return every
    return max(1, periods // 12)


def _panel(report: StaffingReport, lid: str, rows: Sequence[PeriodRow], y0: float) -> list[str]:
    goal: Goal = report.goals[lid]
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = PANEL_H - TOP - BOTTOM
    n = len(rows)
    bw = plot_w / max(n, 1)
    top, step = _nice(max([r.load_erl for r in rows] + [r.seats + r.pool for r in rows] + [1.0]) * 1.1)

    def y_left(v: float) -> float:
        return y0 + TOP + plot_h * (1 - v / top)

    def y_right(share: float) -> float:
        return y0 + TOP + plot_h * (1 - share)

    measure = f"服务水平 SL ≤{goal.target_s:g}s" if goal.measure == "within_target" else "接通率 connected"
    title = f"{LINE_ZH.get(lid, lid)} · 目标 target {goal.label}"
    out = [f'<g class="line" data-line={quoteattr(lid)}>',
           f'<text x="{LEFT}" y="{y0 + 22:.0f}" class="title" {LOOK["title"]}>{escape(title)}</text>']
    # grid and left axis (seats, erlangs)
    v = 0.0
    while v <= top + 1e-9:
        y = y_left(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" class="grid" {LOOK["grid"]}/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="axis" {LOOK["axis"]} text-anchor="end">{v:g}</text>')
        v += step
    for share in (0.0, 0.5, 1.0):
        out.append(f'<text x="{LEFT + plot_w + 6}" y="{y_right(share) + 4:.1f}" class="axis" {LOOK["axis"]}>{100 * share:.0f}%</text>')
    out.append(f'<text x="14" y="{y0 + TOP + plot_h / 2:.0f}" class="axis" {LOOK["axis"]} '
               f'transform="rotate(-90 14 {y0 + TOP + plot_h / 2:.0f})" text-anchor="middle">坐席 seats / erl</text>')
    # bars: offered load
    for i, r in enumerate(rows):
        h = plot_h * min(r.load_erl, top) / top
        out.append(f'<rect x="{LEFT + i * bw + 1:.1f}" y="{y0 + TOP + plot_h - h:.1f}" width="{max(bw - 2, 0.5):.1f}" '
                   f'height="{h:.1f}" class="load" {LOOK["load"]}><title>{escape(_clock(r.start_s))} {r.calls:.1f} calls, '
                   f'{r.load_erl:.2f} erl</title></rect>')
    xs = [LEFT + i * bw for i in range(n)]
    x_end = LEFT + plot_w
    if any(r.pool for r in rows):
        out.append(f'<path d="{_steps(xs, [y_left(r.seats + r.pool) for r in rows], x_end)}" class="pool" {LOOK["pool"]}/>')
    out.append(f'<path d="{_steps(xs, [y_left(r.seats) for r in rows], x_end)}" class="seats" {LOOK["seats"]}/>')
    # target and predicted share
    out.append(f'<line x1="{LEFT}" y1="{y_right(goal.level):.1f}" x2="{x_end}" y2="{y_right(goal.level):.1f}" '
               f'class="target" {LOOK["target"]}/>')
    # the forecast: new callers where the plan was checked on them, else the run itself
    shown = [r.check if r.check is not None else r.predicted for r in rows]
    series: list[tuple[str, list[float | None]]] = [("sl", [goal.value(f) for f in shown])]
    if any(r.surge is not None for r in rows):
        series.append(("surge", [None if r.surge is None else goal.value(r.surge) for r in rows]))
    for cls, values in series:
        path: list[str] = []
        pen_up = True
        for i, value in enumerate(values):
            if value is None:
                pen_up = True
                continue
            x, y = LEFT + (i + 0.5) * bw, y_right(max(0.0, min(1.0, value)))
            path.append(f"{'M' if pen_up else 'L'}{x:.1f},{y:.1f}")
            pen_up = False
            if cls == "sl":
                miss = "" if goal.met(shown[i]) else " miss"
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" class="sl{miss}" {LOOK["sl" + miss]}><title>'
                           f'{escape(_clock(rows[i].start_s))} {escape(measure)} {100 * value:.1f}%</title></circle>')
        if path:
            out.append(f'<path d="{" ".join(path)}" class="{cls}-line" {LOOK[cls + "-line"]}/>')
    # hours along the bottom
    every = _label_every(n)
    for i in range(0, n, every):
        x = LEFT + i * bw
        out.append(f'<text x="{x:.1f}" y="{y0 + TOP + plot_h + 16:.1f}" class="axis" {LOOK["axis"]} text-anchor="middle">'
                   f'{escape(_clock(rows[i].start_s))}</text>')
    # legend
    ly = y0 + PANEL_H - 16
    items = [("load", "来电负荷 offered load (erl)"), ("seats", "计划坐席 seats planned")]
    if any(r.pool for r in rows):
        items.append(("pool", "含溢出坐席 + overflow pool"))
    items.append(("sl-line", f"预计{measure}"))
    if len(series) > 1:
        items.append(("surge-line", f"+{100 * report.surge:g}% 来电时 (with pool)"))
    items.append(("target", "目标 target"))
    x = LEFT
    for cls, text in items:
        if cls == "load":
            out.append(f'<rect x="{x}" y="{ly - 9}" width="14" height="10" class="load" {LOOK["load"]}/>')
        else:
            out.append(f'<line x1="{x}" y1="{ly - 4}" x2="{x + 14}" y2="{ly - 4}" class="{cls}" {LOOK[cls]}/>')
        out.append(f'<text x="{x + 18}" y="{ly}" class="legend" {LOOK["legend"]}>{escape(text)}</text>')
        x += 28 + _text_width(text)
    out.append("</g>")
    return out


# presentation attributes, not a <style> element: the engine serves the chart under a
# Content-Security-Policy without inline styles
LOOK = {
    "title": 'font-size="15" font-weight="600" fill="#1d2733"',
    "axis": 'font-size="11" fill="#4a5866"',
    "legend": 'font-size="11" fill="#4a5866"',
    "grid": 'stroke="#e3e8ee" stroke-width="1"',
    "load": 'fill="#c9dcf2"',
    "seats": 'fill="none" stroke="#1f5fa8" stroke-width="2.2"',
    "pool": 'fill="none" stroke="#d9822b" stroke-width="1.8" stroke-dasharray="6 3"',
    "sl-line": 'fill="none" stroke="#2e8b57" stroke-width="2"',
    "surge-line": 'fill="none" stroke="#7a7a7a" stroke-width="1.5" stroke-dasharray="2 3"',
    "sl": 'fill="#2e8b57"',
    "sl miss": 'fill="#c62828"',
    "target": 'fill="none" stroke="#c62828" stroke-width="1.2" stroke-dasharray="5 4"',
}


def render_svg(report: StaffingReport) -> str:
    """The chart: one panel per line, as an SVG document."""
    panels: list[str] = []
    y = 40.0
    for lid, rows in report.rows.items():
        panels += _panel(report, lid, rows, y)
        y += PANEL_H
    kind = "坐席计划 staffing plan" if report.kind == "plan" else "推演 what-if"
    head = (f"{kind}: {report.scenario} · {report.periods} × {_span(report.period_s)} · "
            f"{len(report.seeds)} seed{'s' if len(report.seeds) != 1 else ''}")
    height = int(y + 10)
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label={quoteattr(head)} '
        'font-family="Noto Sans CJK SC, Microsoft YaHei, sans-serif">'),
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="26" class="title" {LOOK["title"]}>{escape(head)}</text>',
        *panels,
        "</svg>",
        "",
    ])
