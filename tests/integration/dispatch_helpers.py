"""Shared by the dispatch tests: a small units file over the real number plan, and calls."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from callrouter.dispatch.units import Units, load_units
from callrouter.numberplan import NumberPlan, load_plan
from callrouter.tickets import AnswerTicket, CloseTicket, OpenTicket, SetSeat, SetTown, TicketOp

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "queues" / "numberplan.csv"


def plan() -> NumberPlan:
    return load_plan(PLAN)


def units_file(path: Path, *, webhook: str | None = None, county_webhook: str | None = None,
               ack_minutes: float = 5) -> Path:
    """Towns north and south. fire: north_fire (north only) -> county_fire -> county_duty;
    every other category (and unlisted): county_all (110 and 96345 alike, 24 h)."""
    categories = sorted(({e.category for e in plan().entries} | {"unlisted"}) - {"fire"})
    cats = ", ".join(f'"{c}"' for c in categories)
    hook = f'notify = {{ webhook = "{webhook}" }}\n' if webhook else ""
    county_hook = f'notify = {{ webhook = "{county_webhook}" }}\n' if county_webhook else ""
    liaison = 'liaison = { name = "值班员（示例）", phone = "05786990001", example = true }\n'
    text = f"""\
[[town]]
id = "north"
name = "北镇"
example = true

[[town]]
id = "south"
name = "南镇"
example = true

[[unit]]
id = "north_fire"
name = "北镇消防站"
kind = "department"
categories = ["fire"]
area = "north"
ack_minutes = {ack_minutes}
{liaison}{hook}
[[unit]]
id = "county_fire"
name = "县消防救援大队"
kind = "department"
categories = ["fire"]
area = "county"
ack_minutes = {ack_minutes}
{liaison}{county_hook}
[[unit]]
id = "county_duty"
name = "县应急指挥中心值班室"
kind = "department"
categories = ["fire"]
area = "county"
ack_minutes = {ack_minutes}
{liaison}
[[unit]]
id = "county_all"
name = "县96345社会公共服务中心"
kind = "department"
categories = [{cats}]
area = "county"
ack_hours = 24
{liaison}"""
    path.write_text(text, encoding="utf-8")
    return path


def load_test_units(path: Path, **kwargs: object) -> Units:
    return load_units(units_file(path, **kwargs), plan())  # type: ignore[arg-type]


def a_call(ticket_id: str, at: datetime, *, line: str = "110", category: str = "fire",
           town: str | None = "north", outcome: str = "completed", seated: bool = True) -> list[TicketOp]:
    """A call's ops: opened, answered by a seat (unless not ``seated``), town set, closed."""
    ops: list[TicketOp] = [
        OpenTicket(id=ticket_id, dialled="119" if line == "110" else "96345", number="119" if line == "110" else "96345",
                   caller="13800138000", caller_name="", line=line, category=category, department="县消防救援大队",
                   priority=1, listed=True, channel_id=f"chan-{ticket_id}", arrived_at=at),
        AnswerTicket(ticket_id, at + timedelta(milliseconds=20))]
    if seated:
        ops.append(SetSeat(ticket_id, "s110-01", at + timedelta(seconds=3)))
    if town is not None:
        ops.append(SetTown(ticket_id, town, "seat:s110-01", at + timedelta(seconds=10)))
    ops.append(CloseTicket(ticket_id, at + timedelta(seconds=60), outcome))
    return ops
