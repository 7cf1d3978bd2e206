"""Files holding callers' data are readable by their owner only (0600), from the first
byte and after an older version left them open to others."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from callrouter.api.tokens import TokenStore
from callrouter.calls.snapshot import StateStore
from callrouter.tickets import CloseTicket
from callrouter.tickets.spool import Spool

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_spool_is_private_when_made_and_when_found_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool" / "tickets-spool.jsonl")
    spool.append([CloseTicket("T1", datetime.now(UTC), "abandoned")])
    assert mode(spool.path) == 0o600
    spool.path.chmod(0o644)
    spool.append([CloseTicket("T2", datetime.now(UTC), "abandoned")])
    assert mode(spool.path) == 0o600
    assert len(spool.load()) == 2


def test_the_state_file_is_private(tmp_path: Path) -> None:
    # nothing listens on this port: the file is written, Redis is logged as away
    state = StateStore("redis://127.0.0.1:1/0", tmp_path / "state.json", "crtest-private")

    async def save() -> None:
        try:
            await state.save({"saved_at": 1.0, "acd": {"calls": [{"caller": "13911112222"}]}})
        finally:
            await state.close()
    asyncio.run(save())
    assert mode(tmp_path / "state.json") == 0o600


def test_tokens_are_private(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json", "admin-token-for-the-test")
    tokens.create("agent", seat="s110-01")
    assert mode(tmp_path / "tokens.json") == 0o600
