"""The number plan: which of the two lines a dialled legacy number reaches.

More than 100 legacy public-service numbers are folded into two lines, **110**
(emergencies) and **96345** (non-emergency public service). ``queues/numberplan.csv``
lists every folded number with its line, category, responsible department and
priority; this module reads and validates that file and answers one question::

    plan = load_plan("queues/numberplan.csv")
    plan.route("sip:+865786119119@trunk;user=phone")   # -> Route(line="110", ...)

The module is pure: the only I/O is reading the file in :func:`load_plan`.

Number normalisation (:func:`normalise`)
----------------------------------------
Numbers are compared in *national form*: the digits a caller inside China would dial,
with the trunk prefix ``0`` and area code for fixed lines. Qingyuan County's area code
is ``0578`` and its local numbers have 7 digits, so a county number is stored as
``0578`` + 7 digits, e.g. ``05786123456``. The rules, in order:

1. SIP/tel URI parts are removed: a display name and ``<...>``, the scheme (``sip:``,
   ``sips:``, ``tel:``), everything from ``@`` (host), ``;`` (parameters) or ``?``
   (headers); percent-escapes are decoded and full-width characters folded (NFKC).
2. Every character except digits is dropped (spaces, ``-``, ``(``, ``)``, ``.``, ``*``,
   ``#``, letters); a ``+`` before the first digit marks an international number.
3. International forms become national: ``+86…``, ``0086…`` and a bare ``86…`` of 12
   or more digits (no national number is that long and starts with ``86``) lose the
   country code. What follows keeps its leading ``0`` if it has one; short codes
   (``1…`` up to 6 digits), mobiles (11 digits, ``13``-``19``), ``9xxxx`` service
   numbers (up to 6 digits) and ``400``/``800`` numbers are kept as they are; anything
   else is a fixed-line number written without the trunk prefix and gets ``0``
   (``+86 578 6123456`` -> ``05786123456``, ``+86 10 12345678`` -> ``01012345678``).
   Other countries keep the international form ``00`` + digits.
4. A *local* number, exactly 7 digits starting with 2-8, gets the area code ``0578``
   (``6123456`` -> ``05786123456``). Local numbers in the 0578 area are 7 digits and
   never start with ``0`` (trunk prefix), ``1`` (short codes, mobiles) or ``9``
   (service numbers such as 95598, 96345), so short codes like 110, 119, 12345,
   95598 and 96345 are never prefixed, and nor is any number of another length.
5. An area code before a short code is dropped: mobile callers dial ``0578110`` or
   ``0578-12345``, and ``+86 578 119`` is the same call. Chinese area codes are
   prefix-free (``10`` and ``2x`` have two digits, ``3xx``-``9xx`` three), and an
   area code followed by ``1`` + 2-5 digits or ``9`` + 4-5 digits (6 to 10 digits in
   all) is never a fixed-line number (those have 7 or 8 digits after the area code and
   never start with ``1`` or ``9``), so the rule cannot swallow a real number. It
   applies to any area code, not only 0578: a ``110`` the carrier delivers here with
   another city's code is still an emergency and must never land on 96345.

Input with no digits normalises to ``""``.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LINES: tuple[str, str] = ("110", "96345")
"""The two lines every number folds into: emergencies and public service."""

UNLISTED = "unlisted"
"""Category of a number that is not in the plan (reserved; not allowed in the file)."""

AREA_CODE = "0578"
"""Lishui's area code (with trunk prefix); Qingyuan County numbers are 0578 6xxxxxx."""

LOCAL_NUMBER_LENGTH = 7

HEADER: tuple[str, ...] = (
    "number",
    "line",
    "category",
    "department",
    "priority",
    "description",
    "example",
)
HEADER_LINE = ",".join(HEADER)

MIN_DIGITS = 3
MAX_DIGITS = 12
MIN_PRIORITY = 1
MAX_PRIORITY = 9

UNLISTED_LINE = "96345"
UNLISTED_DEPARTMENT = "县96345社会公共服务中心"
UNLISTED_PRIORITY = 5
UNLISTED_DESCRIPTION = "未列入号码表的号码（转96345人工服务）"

_SLUG = re.compile(r"[a-z][a-z0-9_]*\Z")
_SCHEME = re.compile(r"(?i)\A(?:sips?|tel):")


# --------------------------------------------------------------------------- numbers


def _from_country(national: str) -> str:
    """Digits after the country code 86 -> national form."""
    if national[0] == "0":
        return national  # written with the trunk prefix already
    if national[0] == "1" and (
        len(national) <= 6 or (len(national) == 11 and national[1] in "3456789")
    ):
        return national  # short code (110, 12345) or mobile (13x … 19x)
    if national[0] == "9" and len(national) <= 6:
        return national  # 95598, 96345, 96110 ...
    if national.startswith(("400", "800")) and len(national) == 10:
        return national  # non-geographic numbers are dialled without 0
    return "0" + national  # fixed line written without the trunk prefix


def _from_international(digits: str) -> str:
    """Digits after ``+`` or ``00`` -> national form for China, ``00…`` otherwise."""
    if digits.startswith("86") and len(digits) > 2:
        return _from_country(digits[2:])
    return "00" + digits


_AREA_BEFORE_SHORT_CODE = re.compile(r"0(?:10|2[0-9]|[3-9][0-9]{2})(?P<short>1[0-9]{2,5}|9[0-9]{4,5})")


def _drop_area_before_short_code(national: str) -> str:
    match = _AREA_BEFORE_SHORT_CODE.fullmatch(national)
    return match.group("short") if match else national


def normalise(raw: str) -> str:
    """The national form of a dialled number (see the module docstring for the rules).

    >>> normalise("+86 578 6123456"), normalise("6123456"), normalise("sip:119@pbx"), normalise("0578-110")
    ('05786123456', '05786123456', '119', '110')
    """
    text = unicodedata.normalize("NFKC", raw).strip()
    if "<" in text:  # '"Name" <sip:110@host>'
        text = text.split("<", 1)[1].split(">", 1)[0]
    text = urllib.parse.unquote(text.strip())
    text = _SCHEME.sub("", text)
    for stop in "@;?":
        text = text.split(stop, 1)[0]
    plus = False
    for char in text:
        if char == "+":
            plus = True
            break
        if char.isdecimal():
            break
    digits = "".join(char for char in text if char in "0123456789")
    if not digits:
        return ""
    if plus:
        national = _from_international(digits)
    elif digits.startswith("00"):
        national = _from_international(digits[2:]) if len(digits) > 2 else digits
    elif digits.startswith("86") and len(digits) >= 12:
        national = _from_country(digits[2:])
    elif len(digits) == LOCAL_NUMBER_LENGTH and digits[0] in "2345678":
        national = AREA_CODE + digits
    else:
        national = digits
    return _drop_area_before_short_code(national)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PlanEntry:
    """One row of the number plan; ``number`` is in normal form."""

    number: str
    line: str
    category: str
    department: str
    priority: int
    description: str
    example: bool
    line_no: int


@dataclass(frozen=True)
class Route:
    """Where a dialled number goes. ``listed`` is False for numbers not in the plan."""

    dialled: str
    number: str
    line: str
    category: str
    department: str
    priority: int
    description: str
    listed: bool


class PlanError(Exception):
    """The number plan is invalid; ``problems`` are ``"{file}:{line}: {problem}"``."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


class NumberPlan:
    """The validated plan: routes any dialled number to a line."""

    def __init__(
        self, entries: Iterable[PlanEntry], source: str | os.PathLike[str]
    ) -> None:
        self.entries: tuple[PlanEntry, ...] = tuple(entries)
        self.source: Path = Path(source)
        index: dict[str, PlanEntry] = {}
        for entry in self.entries:
            if entry.number in index:
                raise ValueError(f"duplicate number {entry.number} in the plan")
            index[entry.number] = entry
        self._index = index

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"NumberPlan({str(self.source)!r}, {len(self.entries)} entries)"

    def lookup(self, dialled: str) -> PlanEntry | None:
        """The plan entry for ``dialled`` (any form :func:`normalise` accepts), or None."""
        return self._index.get(normalise(dialled))

    def route(self, dialled: str) -> Route:
        """Where ``dialled`` goes. An unknown or empty number goes to 96345 as
        ``unlisted``: every call reaches a person."""
        number = normalise(dialled)
        entry = self._index.get(number)
        if entry is None:
            return Route(
                dialled=dialled,
                number=number,
                line=UNLISTED_LINE,
                category=UNLISTED,
                department=UNLISTED_DEPARTMENT,
                priority=UNLISTED_PRIORITY,
                description=UNLISTED_DESCRIPTION,
                listed=False,
            )
        return Route(
            dialled=dialled,
            number=entry.number,
            line=entry.line,
            category=entry.category,
            department=entry.department,
            priority=entry.priority,
            description=entry.description,
            listed=True,
        )

    def to_json_list(self) -> list[dict[str, Any]]:
        """The entries as JSON-ready dicts, in file order."""
        return [
            {
                "number": entry.number,
                "line": entry.line,
                "category": entry.category,
                "department": entry.department,
                "priority": entry.priority,
                "description": entry.description,
                "example": entry.example,
            }
            for entry in self.entries
        ]


# --------------------------------------------------------------------------- loading


def _check_number(raw: str) -> tuple[str | None, str | None]:
    """(normal form or None, problem or None) for the number column."""
    number = normalise(raw)
    if not number:
        return (
            None,
            f'number "{raw}" has no digits: write the number as digits, e.g. 12345',
        )
    if not MIN_DIGITS <= len(number) <= MAX_DIGITS:
        return None, (
            f'number "{raw}" has {len(number)} digits after normalising ({number}): '
            f"a number must have {MIN_DIGITS} to {MAX_DIGITS} digits"
        )
    if number != raw:
        return number, f'number "{raw}" is not in normal form: write it as {number}'
    return number, None


def _parse_row(
    cells: list[str], where: str, line_no: int, problems: list[str]
) -> PlanEntry | None:
    """Validate one data row, appending problems; the entry if the row is valid."""
    before = len(problems)
    if len(cells) != len(HEADER):
        problems.append(
            f"{where}: expected {len(HEADER)} columns ({HEADER_LINE}), found {len(cells)}: "
            "quote a field that contains a comma"
        )
        return None
    values = dict(zip(HEADER, cells, strict=True))
    for column in HEADER:
        if not values[column]:
            problems.append(f"{where}: missing {column}: fill in the {column} column")

    number: str | None = None
    if values["number"]:
        number, problem = _check_number(values["number"])
        if problem is not None:
            problems.append(f"{where}: {problem}")

    line = values["line"]
    if line and line not in LINES:
        problems.append(
            f'{where}: unknown line "{line}": the line must be 110 or 96345'
        )

    category = values["category"]
    if category == UNLISTED:
        problems.append(
            f'{where}: category "{UNLISTED}" is reserved for numbers not in the plan: '
            "choose another category"
        )
    elif category and not _SLUG.match(category):
        problems.append(
            f'{where}: category "{category}" must be a lowercase slug such as '
            "traffic_accident (a-z, 0-9 and _, starting with a letter)"
        )

    priority = 0
    raw_priority = values["priority"]
    if raw_priority:
        if re.fullmatch(r"[1-9]", raw_priority):
            priority = int(raw_priority)
        else:
            problems.append(
                f'{where}: priority "{raw_priority}" must be a whole number from '
                f"{MIN_PRIORITY} (most urgent) to {MAX_PRIORITY}"
            )

    example = values["example"]
    if example and example not in ("yes", "no"):
        problems.append(
            f'{where}: example "{example}" must be yes (a made-up number) '
            "or no (a real number)"
        )

    if len(problems) > before or number is None:
        return None
    return PlanEntry(
        number=number,
        line=line,
        category=category,
        department=values["department"],
        priority=priority,
        description=values["description"],
        example=example == "yes",
        line_no=line_no,
    )


def _parse(text: str, name: str) -> tuple[list[PlanEntry], list[str]]:
    entries: list[PlanEntry] = []
    problems: list[str] = []
    first_at: dict[str, int] = {}
    header_seen = False
    header_ok = True
    for line_no, physical in enumerate(text.split("\n"), start=1):
        stripped = physical.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{name}:{line_no}"
        try:
            rows = list(
                csv.reader([physical.rstrip("\r")], skipinitialspace=True, strict=True)
            )
        except csv.Error as exc:
            problems.append(f"{where}: cannot parse as CSV ({exc}): check the quotes")
            continue
        cells = [cell.strip() for cell in rows[0]] if rows else []
        if not header_seen:
            header_seen = True
            if tuple(cells) == HEADER:
                continue
            if cells and any(char.isdigit() for char in cells[0]):
                problems.append(
                    f'{where}: missing header: the first line must be "{HEADER_LINE}"'
                )
            else:
                problems.append(
                    f'{where}: wrong header "{",".join(cells)}": it must be "{HEADER_LINE}" '
                    "(rows are checked once the header is right)"
                )
                header_ok = False
                break
        entry = _parse_row(cells, where, line_no, problems)
        if entry is None:
            # Still catch a duplicate of a row whose other fields are wrong.
            number = normalise(cells[0]) if cells else ""
            if number and number in first_at and len(cells) == len(HEADER):
                problems.append(
                    f"{where}: duplicate number {number} (first at line {first_at[number]}): "
                    "keep one row per number"
                )
            elif number and len(cells) == len(HEADER):
                first_at.setdefault(number, line_no)
            continue
        if entry.number in first_at:
            problems.append(
                f"{where}: duplicate number {entry.number} "
                f"(first at line {first_at[entry.number]}): keep one row per number"
            )
            continue
        first_at[entry.number] = line_no
        entries.append(entry)

    if not header_seen:
        problems.append(
            f'{name}:1: missing header: the first line must be "{HEADER_LINE}"'
        )
    if header_ok:
        by_number = {entry.number: entry for entry in entries}
        for line in LINES:
            entry = by_number.get(line)
            if entry is None:
                if line not in first_at:  # a broken row for it is reported already
                    problems.append(
                        f"{name}:1: line number {line} is missing from the plan: "
                        f"add a row for {line} on line {line}"
                    )
            elif entry.line != line:
                problems.append(
                    f"{name}:{entry.line_no}: line number {line} must be on line {line}, "
                    f"not {entry.line}"
                )
    return entries, problems


def load_plan(path: str | os.PathLike[str]) -> NumberPlan:
    """Read and validate a number plan; raise :class:`PlanError` listing every problem."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([f"{name}: cannot read: {exc}"]) from exc
    entries, problems = _parse(text, name)
    if problems:
        raise PlanError(problems)
    return NumberPlan(entries, path)


def check_plan(path: str | os.PathLike[str]) -> list[str]:
    """The problems of a number plan file; empty when it is valid."""
    try:
        load_plan(path)
    except PlanError as error:
        return error.problems
    return []
