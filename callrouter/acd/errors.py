"""Errors raised by the ACD core and its loaders."""

from __future__ import annotations

from collections.abc import Sequence


class AcdError(ValueError):
    """An input the core cannot act on (unknown seat or line, bad reconfiguration).

    Raised before any state changes, so the caller may log it and carry on.
    """


class UnknownSeat(AcdError):
    def __init__(self, seat: str) -> None:
        super().__init__(f"unknown seat {seat!r}: add it to queues/lines.toml or AddSeat it")
        self.seat = seat


class UnknownLine(AcdError):
    def __init__(self, line: str) -> None:
        super().__init__(f"unknown line {line!r}: lines are defined in queues/lines.toml")
        self.line = line


class SnapshotError(AcdError):
    """A snapshot cannot be restored (wrong version, malformed field)."""


class ConfigFileError(ValueError):
    """A data file (lines, scenario) is invalid.

    ``problems`` holds one ``file:line: problem`` string per problem; the message is
    all of them, one per line, so an operator sees every mistake in one go.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)
