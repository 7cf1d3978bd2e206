"""The shell's id rules, pure: mixing bridge ids, which endpoint is which seat."""

from __future__ import annotations

from pathlib import Path

from callrouter.acd.lines import load_lines
from callrouter.calls.bridges import MIXING_PREFIX, MixingSweep, is_mixing_bridge_of, mixing_bridge_id
from callrouter.calls.seats import endpoint_of_channel, endpoint_seats

ROOT = Path(__file__).resolve().parents[2]


def test_mixing_bridge_ids_name_their_caller() -> None:
    bridge = mixing_bridge_id("1764576000.42", 2)
    assert bridge == "callrouter-call-1764576000.42-2" and bridge.startswith(MIXING_PREFIX)
    assert is_mixing_bridge_of(bridge, "1764576000.42")
    assert not is_mixing_bridge_of(bridge, "1764576000.4")  # a prefix of another caller's id
    assert not is_mixing_bridge_of("callrouter-110-hold-0", "1764576000.42")


def test_a_sweep_is_due_once_per_period() -> None:
    sweep = MixingSweep(ari=None, bridge_of_call=lambda _: None, every_s=0.0)  # type: ignore[arg-type]
    assert sweep.due()
    assert not sweep.due()  # one under way
    sweep.sweeping = False
    assert sweep.due()
    assert not MixingSweep(ari=None, bridge_of_call=lambda _: None).due()  # type: ignore[arg-type]


def test_every_seat_and_pool_seat_has_its_endpoint() -> None:
    lines = load_lines(ROOT / "queues" / "lines.toml")
    seats = endpoint_seats(lines)
    expected = {s.id for line in lines.lines for s in line.seats} | {p.id for p in lines.pool}
    assert set(seats.values()) == expected
    assert "trunk" not in seats


def test_a_channel_name_gives_its_endpoint() -> None:
    assert endpoint_of_channel("PJSIP/s110-01-0000002a") == "s110-01"
    assert endpoint_of_channel("PJSIP/desk.7-00000001") == "desk.7"
