"""Where the engine receives the callers' audio, and whether the cluster's nodes reach it."""

from __future__ import annotations

import pytest

from callrouter.speech.address import listen_address, unreachable_from


@pytest.mark.parametrize(("rtp_bind", "http_bind", "expected"), [
    ("", "127.0.1.180", "127.0.1.180"),  # beside the one Asterisk: its HTTP address
    ("10.0.0.5", "127.0.0.1", "10.0.0.5"),  # set: used as given
    (" 10.0.0.5 ", "127.0.0.1", "10.0.0.5"),
    ("", "0.0.0.0", "127.0.0.1"),  # Asterisk cannot be told to send to 0.0.0.0
    ("::", "127.0.0.1", "127.0.0.1"),
    ("", "", "127.0.0.1"),
])
def test_listen_address(rtp_bind: str, http_bind: str, expected: str) -> None:
    assert listen_address(rtp_bind, http_bind) == expected


def test_nodes_on_this_machine_reach_any_loopback_address() -> None:
    assert unreachable_from("127.0.1.180", ["127.0.1.221", "127.0.1.222"]) is None
    assert unreachable_from("localhost", ["127.0.0.2"]) is None
    assert unreachable_from("::1", ["127.0.0.2"]) is None


def test_nodes_on_other_machines_need_a_routable_address() -> None:
    problem = unreachable_from("127.0.0.1", ["127.0.0.2", "10.0.0.12", "ast3.example"])
    assert problem is not None
    assert "10.0.0.12, ast3.example" in problem and "127.0.0.2" not in problem.split("but")[1]
    assert "speech_rtp_bind" in problem
    assert unreachable_from("10.0.0.5", ["10.0.0.12", "10.0.0.13"]) is None
