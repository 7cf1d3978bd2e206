"""Roles on and off the agent<supervisor<admin ladder: what each token may reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.api.tokens import Principal, TokenError, TokenStore


def test_a_unit_token_reaches_only_its_own_endpoints() -> None:
    unit = Principal("unit", unit="fire_chengguan")
    for path in ("/api/orders", "/api/orders/O1-1", "/api/orders/O1-1/ack", "/api/events", "/api/me",
                 "/api/openapi.json"):
        assert unit.may_reach(path), path
    for path in ("/api/status", "/api/tickets", "/api/ordersX", "/api/calls", "/metrics", "/api/seats/s1/login",
                 "/api/plan/reload"):
        assert not unit.may_reach(path), path
    assert not unit.at_least("agent") and not unit.at_least("supervisor")


def test_the_ladder_is_unchanged() -> None:
    assert Principal("agent", "s110-01").may_reach("/api/status")
    assert Principal("admin").at_least("supervisor") and not Principal("agent").at_least("supervisor")


def test_a_unit_token_is_bound_to_one_unit(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json", "bootstrap-admin-token-0123456789")
    token = store.create("unit", unit="fire_chengguan", name="城关消防救援站")
    assert store.lookup(token) == Principal("unit", None, "城关消防救援站", "fire_chengguan")
    with pytest.raises(TokenError, match="--unit"):
        store.create("unit")
    with pytest.raises(TokenError, match="--unit"):
        store.create("unit", unit="Fire Station <1>")
    with pytest.raises(TokenError, match="--unit is for"):
        store.create("supervisor", unit="fire_chengguan")
    with pytest.raises(TokenError, match="use one of"):
        store.create("root")
