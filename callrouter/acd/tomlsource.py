"""TOML files with ``file:line`` problems.

tomllib returns plain dicts without positions, so :class:`TomlSource` scans the text
once for table headers and ``key =`` lines and maps each key path to its line. That is
good enough to point an operator at the right line; values inside inline tables or
multi-line arrays are reported at their key's line (or, for a list element, at the
first line from the key on that mentions it).

:class:`TableReader` reads typed values out of a parsed table, collecting every problem
instead of stopping at the first, and reports keys it does not know (typos).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from callrouter.acd.errors import ConfigFileError

# A key path: table and key names; an int is the index of an array-of-tables element.
KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_LINE = re.compile(r"at line (\d+)")


def _split_key(text: str) -> tuple[list[str], str] | None:
    """Parse a dotted TOML key at the start of ``text``: (names, rest) or None."""
    names: list[str] = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return None
        ch = text[i]
        if ch in "\"'":
            end = text.find(ch, i + 1)
            if end < 0:
                return None
            names.append(text[i + 1 : end])
            i = end + 1
        else:
            m = _BARE.match(text, i)
            if m is None:
                return None
            names.append(m.group(0))
            i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == ".":
            i += 1
            continue
        return names, text[i:]


class TomlSource:
    """The text of one TOML file, with the line of every table header and key."""

    def __init__(self, text: str, name: str) -> None:
        self.name = name
        self.text = text
        self._lines = text.splitlines()
        self._where: dict[KeyPath, int] = {}
        self._scan()

    @classmethod
    def read(cls, path: str | Path) -> TomlSource:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigFileError([f"{p}:1: cannot read: {exc}"]) from exc
        return cls(text, str(p))

    def parse(self) -> dict[str, object]:
        """The parsed document; a syntax error becomes a ConfigFileError with its line."""
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            m = _TOML_LINE.search(str(exc))
            line = int(m.group(1)) if m else 1
            raise ConfigFileError([f"{self.name}:{line}: TOML syntax: {exc}"]) from exc

    def _scan(self) -> None:
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> last index
        table: KeyPath = ()
        in_multiline: str | None = None
        for number, raw in enumerate(self._lines, start=1):
            line = raw.strip()
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                is_array = line.startswith("[[")
                parsed = _split_key(line[2:] if is_array else line[1:])
                if parsed is None:
                    continue
                names = parsed[0]
                if is_array:
                    key = tuple(names)
                    arrays[key] = arrays.get(key, -1) + 1
                table = self._resolve(names, arrays)
                self._where.setdefault(table, number)
                continue
            parsed = _split_key(line)
            if parsed is None or not parsed[1].startswith("="):
                continue
            names, rest = parsed
            self._where.setdefault(table + tuple(names), number)
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote

    @staticmethod
    def _resolve(names: Sequence[str], arrays: Mapping[tuple[str, ...], int]) -> KeyPath:
        out: list[str | int] = []
        for i, name in enumerate(names):
            out.append(name)
            index = arrays.get(tuple(names[: i + 1]))
            if index is not None:
                out.append(index)
        return tuple(out)

    def line_of(self, path: KeyPath) -> int:
        """Line of ``path``, else of its nearest known parent, else 1."""
        for end in range(len(path), 0, -1):
            line = self._where.get(path[:end])
            if line is not None:
                return line
        return 1

    def line_of_value(self, path: KeyPath, needle: str) -> int:
        """First line from ``path``'s line on that contains ``needle`` (a list element)."""
        start = self.line_of(path)
        for number in range(start, min(start + 200, len(self._lines)) + 1):
            if needle in self._lines[number - 1]:
                return number
        return start


class Problems:
    """Collects ``file:line: problem`` messages for one file."""

    def __init__(self, source: TomlSource) -> None:
        self.source = source
        self._items: list[tuple[int, int, str]] = []

    def add(self, path: KeyPath, message: str, *, value: str | None = None) -> None:
        line = (
            self.source.line_of_value(path, value)
            if value is not None
            else self.source.line_of(path)
        )
        self._items.append((line, len(self._items), message))

    def __len__(self) -> int:
        return len(self._items)

    def messages(self) -> list[str]:
        return [f"{self.source.name}:{line}: {msg}" for line, _, msg in sorted(self._items)]

    def raise_if_any(self) -> None:
        if self._items:
            raise ConfigFileError(self.messages())


def dotted(path: KeyPath) -> str:
    """A key path as an operator writes it: ``line.110.ring_timeout_s``, ``seat[2].id``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += ("." if out else "") + part
    return out


class TableReader:
    """Typed access to one table; wrong types and unknown keys become problems."""

    def __init__(
        self, data: Mapping[str, object], path: KeyPath, problems: Problems
    ) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self._used: set[str] = set()

    def _problem(self, key: str, message: str) -> None:
        self.problems.add(self.path + (key,), f"{dotted(self.path + (key,))}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object:
        self._used.add(key)
        return self.data.get(key)

    def number(
        self,
        key: str,
        *,
        default: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        unit: str = "",
    ) -> float | None:
        """A number (int or float), checked against bounds; ``default`` when absent."""
        self._used.add(key)
        if key not in self.data:
            if default is None:
                self._problem(key, f"missing; add `{key} = <number{unit}>`")
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._problem(key, f"must be a number{unit}, got {value!r}")
            return default
        v = float(value)
        bad = (
            not math.isfinite(v)
            or (minimum is not None and v < minimum)
            or (maximum is not None and v > maximum)
            or (above is not None and v <= above)
        )
        if bad:
            bounds = []
            if above is not None:
                bounds.append(f"> {above:g}")
            if minimum is not None:
                bounds.append(f">= {minimum:g}")
            if maximum is not None:
                bounds.append(f"<= {maximum:g}")
            self._problem(key, f"must be {' and '.join(bounds)}{unit}, got {value!r}")
            return default
        return v

    def integer(
        self,
        key: str,
        *,
        default: int | None = None,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        self._used.add(key)
        if key not in self.data:
            if default is None:
                self._problem(key, f"missing; add `{key} = <whole number>`")
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self._problem(key, f"must be a whole number, got {value!r}")
            return default
        if (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            lo = "" if minimum is None else f"from {minimum} "
            hi = "" if maximum is None else f"to {maximum}"
            self._problem(key, f"must be a whole number {lo}{hi}, got {value}".rstrip())
            return default
        return value

    def string(
        self,
        key: str,
        *,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        choices: Sequence[str] | None = None,
    ) -> str | None:
        self._used.add(key)
        if key not in self.data:
            if default is None:
                self._problem(key, f'missing; add `{key} = "..."`')
            return default
        value = self.data[key]
        if not isinstance(value, str):
            self._problem(key, f"must be a string, got {value!r}")
            return default
        if choices is not None and value not in choices:
            self._problem(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self._problem(key, f"{value!r} must match {pattern.pattern}")
            return default
        return value

    def strings(self, key: str, *, required: bool = True) -> list[str] | None:
        """A list of strings; None (with a problem if required) when absent or wrong."""
        self._used.add(key)
        if key not in self.data:
            if required:
                self._problem(key, f'missing; add `{key} = ["...", ...]`')
            return None
        value = self.data[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._problem(key, f"must be a list of strings, got {value!r}")
            return None
        return [str(v) for v in value]

    def table(self, key: str, *, required: bool = False) -> TableReader | None:
        self._used.add(key)
        if key not in self.data:
            if required:
                self._problem(key, f"missing table [{dotted(self.path + (key,))}]")
            return None
        value = self.data[key]
        if not isinstance(value, dict):
            self._problem(key, f"must be a table, got {value!r}")
            return None
        return TableReader(value, self.path + (key,), self.problems)

    def tables(self, key: str) -> list[TableReader]:
        """An array of tables (``[[key]]``); [] when absent."""
        self._used.add(key)
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self._problem(key, f"must be an array of tables [[{dotted(self.path + (key,))}]]")
            return []
        return [TableReader(v, self.path + (key, i), self.problems) for i, v in enumerate(value)]

    def reject_unknown(self, allowed: Sequence[str] | None = None) -> None:
        """Report keys never read (or not in ``allowed``) as probable typos."""
        known = set(allowed) if allowed is not None else self._used
        for key in self.data:
            if key not in known:
                self._problem(key, f"unknown key; expected one of {', '.join(sorted(known))}")
