"""The units that act on a ticket: ``queues/units.toml``, validated at load.

A unit (a county department, a town office, a partner business, a skilled-staff team)
handles some categories of the number plan in an area (county-wide or one town). For a
ticket's category and the caller's town, :meth:`Units.choose` gives the escalation chain:
the town's own units for the category first, then the county-wide ones, each in file
order. The dispatcher notifies the first and moves down the chain when a unit does not
acknowledge in time.

Like the number plan, the file is data checked at load: every problem is reported as
``file:line: problem`` (:class:`UnitsError`), and every category of the plan (and
``unlisted``, the category of a number not in the plan) must reach a unit in every town.
The module is pure apart from reading the file.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from callrouter.acd.errors import ConfigFileError
from callrouter.acd.tomlsource import Problems, TableReader, TomlSource
from callrouter.numberplan import UNLISTED, NumberPlan

KINDS: Final = ("department", "town_office", "partner", "skilled_team")
COUNTY: Final = "county"
SLUG: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
PHONE: Final = re.compile(r"[0-9+][0-9 -]{2,30}")
NAME_MAX: Final = 80
# minutes a unit may take to acknowledge: a week at most
ACK_MAX_MINUTES: Final = 7 * 24 * 60


class UnitsError(ConfigFileError):
    """The units file is invalid; ``problems`` are ``file:line: problem`` strings."""


@dataclass(frozen=True, slots=True)
class Town:
    id: str
    name: str
    example: bool = False


@dataclass(frozen=True, slots=True)
class Liaison:
    """The unit's 24-hour duty contact."""

    name: str
    phone: str
    example: bool = False


@dataclass(frozen=True, slots=True)
class Unit:
    id: str
    name: str
    kind: str
    categories: tuple[str, ...]
    area: str  # COUNTY or a town id
    liaison: Liaison
    ack_s: int  # time to acknowledge an order
    webhook: str | None = None  # None: the unit's page only
    line_no: int = 0

    def to_json(self, *, liaison: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind, "area": self.area,
                                "categories": list(self.categories), "ack_s": self.ack_s,
                                "webhook": self.webhook is not None}
        if liaison:
            data["liaison"] = {"name": self.liaison.name, "phone": self.liaison.phone,
                               "example": self.liaison.example}
        return data


class Units:
    """The validated file: ``towns`` and ``units`` in file order."""

    def __init__(self, towns: Iterable[Town], units: Iterable[Unit], source: str | os.PathLike[str]) -> None:
        self.towns: tuple[Town, ...] = tuple(towns)
        self.units: tuple[Unit, ...] = tuple(units)
        self.source = Path(source)
        self._towns = {t.id: t for t in self.towns}
        self._units = {u.id: u for u in self.units}

    def __repr__(self) -> str:
        return f"Units({str(self.source)!r}, {len(self.towns)} towns, {len(self.units)} units)"

    def town(self, town_id: str | None) -> Town | None:
        return None if town_id is None else self._towns.get(town_id)

    def unit(self, unit_id: str) -> Unit | None:
        return self._units.get(unit_id)

    def choose(self, category: str, town: str | None) -> list[Unit]:
        """The escalation chain for ``category`` in ``town`` (None or unknown: county-wide
        only): the town's own units first, then the county-wide ones, in file order."""
        own = [u for u in self.units if town is not None and u.area == town and category in u.categories]
        county = [u for u in self.units if u.area == COUNTY and category in u.categories]
        return own + county

    def __len__(self) -> int:
        return len(self.units)


def _webhook(reader: TableReader) -> str | None:
    notify = reader.table("notify")
    if notify is None:
        return None
    url = notify.string("webhook")
    notify.reject_unknown(("webhook",))
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        notify.problems.add(notify.path + ("webhook",),
                            f"notify.webhook {url!r} must be an http:// or https:// URL with a host")
        return None
    return url


def _ack_s(reader: TableReader, where: str) -> int | None:
    has_minutes, has_hours = reader.has("ack_minutes"), reader.has("ack_hours")
    if has_minutes and has_hours:
        reader.problems.add(reader.path + ("ack_hours",),
                            f"{where}: give ack_minutes or ack_hours, not both")
        return None
    if has_hours:
        hours = reader.number("ack_hours", above=0, maximum=ACK_MAX_MINUTES / 60, unit=" (hours)")
        return None if hours is None else round(hours * 3600)
    minutes = reader.number("ack_minutes", above=0, maximum=ACK_MAX_MINUTES, unit=" (minutes)")
    return None if minutes is None else round(minutes * 60)


def _liaison(reader: TableReader, where: str) -> Liaison | None:
    table = reader.table("liaison", required=True)
    if table is None:
        return None
    name = table.string("name")
    phone = table.string("phone", pattern=PHONE)
    example = table.raw("example")
    if example is not None and not isinstance(example, bool):
        table.problems.add(table.path + ("example",), f"{where}: liaison.example must be true or false")
    table.reject_unknown(("name", "phone", "example"))
    if name is None or phone is None:
        return None
    return Liaison(name=name[:NAME_MAX], phone=phone, example=bool(example))


def _parse(source: TomlSource, categories: Iterable[str]) -> Units:
    problems = Problems(source)
    try:
        doc = source.parse()
    except ConfigFileError as exc:
        raise UnitsError(exc.problems) from exc
    root = TableReader(doc, (), problems)
    towns: list[Town] = []
    seen_town: dict[str, int] = {}
    for reader in root.tables("town"):
        tid = reader.string("id", pattern=SLUG)
        name = reader.string("name")
        example = reader.raw("example")
        if example is not None and not isinstance(example, bool):
            problems.add(reader.path + ("example",), "town.example must be true or false")
        reader.reject_unknown(("id", "name", "example"))
        if tid is None or name is None:
            continue
        line = source.line_of(reader.path)
        if tid == COUNTY:
            problems.add(reader.path + ("id",), f'town id "{COUNTY}" is reserved for county-wide units')
            continue
        if tid in seen_town:
            problems.add(reader.path + ("id",), f"duplicate town {tid!r} (first at line {seen_town[tid]})")
            continue
        seen_town[tid] = line
        towns.append(Town(tid, name[:NAME_MAX], bool(example)))
    if not towns and not problems:
        problems.add((), 'no towns: add [[town]] tables (id = "...", name = "...")')

    wanted = set(categories) | {UNLISTED}
    units: list[Unit] = []
    seen_unit: dict[str, int] = {}
    for reader in root.tables("unit"):
        line = source.line_of(reader.path)
        uid = reader.string("id", pattern=SLUG)
        where = f"unit {uid or '?'}"
        name = reader.string("name")
        kind = reader.string("kind", choices=KINDS)
        cats = reader.strings("categories")
        area = reader.string("area")
        ack = _ack_s(reader, where)
        liaison = _liaison(reader, where)
        webhook = _webhook(reader)
        reader.reject_unknown(("id", "name", "kind", "categories", "area", "ack_minutes", "ack_hours",
                               "liaison", "notify"))
        if cats is not None:
            if not cats:
                problems.add(reader.path + ("categories",), f"{where}: categories is empty: list what it handles")
            for cat in cats:
                if cat not in wanted:
                    problems.add(reader.path + ("categories",),
                                 f"{where}: unknown category {cat!r}: use a category of the number plan",
                                 value=f'"{cat}"')
        if area is not None and area != COUNTY and area not in seen_town:
            problems.add(reader.path + ("area",),
                         f'{where}: unknown area {area!r}: "{COUNTY}" or the id of a [[town]] above')
            area = None
        if uid is not None and uid in seen_unit:
            problems.add(reader.path + ("id",), f"duplicate unit {uid!r} (first at line {seen_unit[uid]})")
            continue
        if (uid is None or name is None or kind is None or cats is None or area is None or ack is None
                or liaison is None):
            continue  # reported above
        seen_unit[uid] = line
        units.append(Unit(uid, name[:NAME_MAX], kind, tuple(cats), area, liaison, ack, webhook, line))
    root.reject_unknown(("town", "unit"))

    if not problems:
        result = Units(towns, units, source.name)
        for cat in sorted(wanted):
            if not result.choose(cat, None):
                gaps = [t.id for t in towns if not result.choose(cat, t.id)]
                if gaps:
                    shown = ", ".join(gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else "")
                    problems.add((), f"category {cat!r} has no unit in {shown}: add a county-wide unit "
                                     f'(area = "{COUNTY}") or one in each of those towns')
        if not problems:
            return result
    raise UnitsError(problems.messages())


def load_units(path: str | os.PathLike[str], plan: NumberPlan) -> Units:
    """Read and validate the units file against ``plan``; raise :class:`UnitsError` listing
    every problem."""
    try:
        source = TomlSource.read(Path(path))
    except ConfigFileError as exc:
        raise UnitsError(exc.problems) from exc
    return _parse(source, {entry.category for entry in plan.entries})


def check_units(path: str | os.PathLike[str], plan: NumberPlan) -> list[str]:
    """The problems of a units file; empty when it is valid."""
    try:
        load_units(path, plan)
    except UnitsError as error:
        return error.problems
    return []
