"""The intake role: a channel system's token reaches POST /api/intake (and /api/me) only."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.api.tokens import Principal, TokenError, TokenStore


def test_an_intake_token_reaches_only_intake() -> None:
    intake = Principal("intake", name="web-form")
    assert intake.may_reach("/api/intake") and intake.may_reach("/api/me") and intake.may_reach("/api/openapi.json")
    for path in ("/api/tickets", "/api/events", "/api/orders", "/api/status", "/api/intakes", "/api/follow-ups",
                 "/api/categories", "/api/tickets/T1/dispatch", "/metrics"):
        assert not intake.may_reach(path), path
    assert not intake.at_least("agent")


def test_an_intake_token_names_its_channel_system(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json", "bootstrap-admin-token-0123456789")
    token = store.create("intake", name="wechat-account")
    assert store.lookup(token) == Principal("intake", None, "wechat-account", None)
    with pytest.raises(TokenError, match="--name"):
        store.create("intake")
    with pytest.raises(TokenError, match="--name"):
        store.create("intake", name="   ")
    with pytest.raises(TokenError, match="--unit is for"):
        store.create("intake", name="forum", unit="fire_chengguan")
