"""Shared test helpers.

A real part (Asterisk, SIPp, PostgreSQL, Redis, a browser) that is missing makes a test
FAIL under CI (CI=true) and skip, loudly, elsewhere: never a silent skip.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_part(what: str) -> None:
    """Fail under CI, skip loudly elsewhere."""
    if in_ci():
        pytest.fail(f"required part missing under CI: {what}", pytrace=False)
    pytest.skip(f"SKIPPED, real part missing (would FAIL under CI): {what}")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = condition()
    return last
