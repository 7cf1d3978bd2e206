"""queues/lines.toml: the shipped file, and every validation error with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.acd import ConfigFileError, load_lines

SHIPPED = Path(__file__).resolve().parents[2] / "queues" / "lines.toml"


def test_shipped_lines_file_is_valid_and_complete() -> None:
    cfg = load_lines(SHIPPED)
    assert cfg.line_ids == ("110", "96345")
    l110, l96345 = cfg.lines
    assert [s.id for s in l110.seats] == [f"s110-{i:02d}" for i in range(1, 11)]
    assert [s.id for s in l96345.seats] == [f"s96345-{i:02d}" for i in range(1, 11)]
    assert all(s.endpoint == s.id for s in l110.seats + l96345.seats)
    assert (l110.target_s, l110.target_service_level) == (15, 0.90)
    assert (l96345.target_s, l96345.target_service_level) == (15, 0.95)
    assert l110.announce_interval_s is None
    assert l96345.announce_interval_s is not None
    assert [p.id for p in cfg.pool] == [f"ovf-{i:02d}" for i in range(1, 7)]
    assert all("96345" in p.lines for p in cfg.pool)


def line_of(text: str, needle: str, start: str | None = None) -> int:
    lines = text.splitlines()
    first = 0
    if start is not None:
        first = next(i for i, ln in enumerate(lines) if start in ln)
    return next(i for i, ln in enumerate(lines) if i >= first and needle in ln) + 1


def broken(tmp_path: Path, old: str, new: str, count: int = 1) -> tuple[Path, str]:
    text = SHIPPED.read_text()
    assert old in text, old
    text = text.replace(old, new, count)
    path = tmp_path / "lines.toml"
    path.write_text(text)
    return path, text


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        load_lines(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "wrap_up_s = 20 ", "wrap_up_s = = 20 ")
    [msg] = problems(path)
    assert msg.startswith(f"{path}:{line_of(text, 'wrap_up_s = = 20')}: TOML syntax")


def test_missing_key_points_at_the_table(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "ring_timeout_s = 10 ", "# ring timeout removed ")
    assert problems(path) == [
        (f"{path}:{line_of(text, '[line.110]')}: line.110.ring_timeout_s: missing; "
        "add `ring_timeout_s = <number seconds>`")
    ]


def test_wrong_type_and_out_of_range_point_at_the_key(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "ring_timeout_s = 10 ", 'ring_timeout_s = "ten" ')
    at = line_of(text, 'ring_timeout_s = "ten"')
    assert problems(path) == [
        (f"{path}:{at}: line.110.ring_timeout_s: "
        "must be a number seconds, got 'ten'")
    ]
    path, text = broken(tmp_path, "target_service_level = 0.95", "target_service_level = 95")
    assert problems(path) == [
        (f"{path}:{line_of(text, 'target_service_level = 95')}: "
        "line.96345.target_service_level: must be > 0 and <= 0.999, got 95")
    ]
    path, text = broken(tmp_path, "max_missed_offers = 2 ", "max_missed_offers = 0 ")
    assert problems(path) == [
        (f"{path}:{line_of(text, 'max_missed_offers = 0')}: line.110.max_missed_offers: "
        "must be a whole number from 1 to 100, got 0")
    ]


def test_unknown_key_is_reported_as_a_typo(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "wrap_up_s = 30", "wrapup_s = 30")
    msgs = problems(path)
    at_table = line_of(text, "[line.96345]")
    at_key = line_of(text, "wrapup_s = 30")
    assert msgs[0] == f"{path}:{at_table}: line.96345.wrap_up_s: missing; " \
        "add `wrap_up_s = <number seconds>`"
    assert msgs[1].startswith(f"{path}:{at_key}: line.96345.wrapup_s: unknown key; expected")


def test_seat_defined_twice_points_at_the_second_mention(tmp_path: Path) -> None:
    path, text = broken(tmp_path, '"s96345-03"', '"s110-03"')
    assert problems(path) == [
        (f"{path}:{line_of(text, 's110-03', start='[line.96345]')}: line.96345.seats: "
        "seat 's110-03' is already defined in line.110; a seat belongs to one line or "
        "to the pool")
    ]


def test_bad_seat_id_and_endpoint_for_a_foreign_seat(tmp_path: Path) -> None:
    path, text = broken(
        tmp_path, '# "s110-01" = "desk-110-01"', '"s96345-01" = "desk-1"\n"s110-02" = "a b"'
    )
    msgs = problems(path)
    assert msgs == [
        (f"{path}:{line_of(text, 'desk-1')}: line.110.endpoints: 's96345-01' is not one of "
        "this line's seats"),
        (f"{path}:{line_of(text, 'a b')}: line.110.endpoints.s110-02: 'a b' must match "
        "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
    ]


def test_pool_seat_problems_point_into_the_array_of_tables(tmp_path: Path) -> None:
    path, text = broken(tmp_path, 'id = "ovf-05"\nlines = ["96345"]',
                        'id = "ovf-05"\nlines = ["12345"]')
    assert problems(path) == [
        (f"{path}:{line_of(text, '12345')}: overflow.seat[5].lines: unknown line '12345'; "
        "known: 110, 96345")
    ]
    path, text = broken(tmp_path, 'id = "ovf-06"', 'id = "s110-01"')
    at = line_of(text, 'id = "s110-01"')
    assert problems(path) == [
        (f"{path}:{at}: overflow.seat[6].id: seat 's110-01' is "
        "already defined in line.110; a seat belongs to one line or to the pool")
    ]


def test_policy_rank_and_line_id(tmp_path: Path) -> None:
    path, text = broken(tmp_path, 'policy = "predictive"  ', 'policy = "panic"  ')
    assert problems(path) == [
        (f"{path}:{line_of(text, 'panic')}: line.110.overflow.policy: 'panic' is not one of "
        "wait_threshold, predictive")
    ]
    path, text = broken(tmp_path, "rank = 2", "rank = 1")
    assert problems(path) == [
        (f"{path}:{line_of(text, 'rank = 1', start='[line.96345]')}: line.96345.rank: 1 is "
        "also line 110's rank; give each line its own rank")
    ]
    path, text = broken(tmp_path, "[line.96345]\n", "[line.service]\n")
    [msg] = [m for m in problems(path) if "line id" in m]
    assert msg == f"{path}:{line_of(text, '[line.service]')}: line id 'service' must be " \
        "the line's digits"


def test_all_problems_are_reported_at_once_in_file_order(tmp_path: Path) -> None:
    path, text = broken(tmp_path, "ring_timeout_s = 15", "ring_timeout_s = -1")
    text = text.replace("wrap_up_s = 20 ", "wrap_up_s = -5 ").replace(
        "calm_s = 300", "calm_s = true", 1
    )
    path.write_text(text)
    msgs = problems(path)
    assert [int(m.split(":")[1]) for m in msgs] == sorted(
        [
            line_of(text, "wrap_up_s = -5"),
            line_of(text, "calm_s = true"),
            line_of(text, "ring_timeout_s = -1"),
        ]
    )


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"nope.toml:1: cannot read"):
        load_lines(tmp_path / "nope.toml")


def test_an_endpoint_that_is_not_a_seat_is_refused(tmp_path: Path) -> None:
    # the carrier trunk's PJSIP endpoint: offering a caller to it would dial out
    path, text = broken(tmp_path, '# "s110-01" = "desk-110-01"', '"s110-02" = "trunk"')
    at = line_of(text, '"s110-02" = "trunk"')
    assert problems(path) == [
        (f"{path}:{at}: line.110.endpoints: endpoint 'trunk' is reserved: "
         "it names a PJSIP endpoint that is not a seat")
    ]


def test_callback_rule_from_the_file_and_a_file_from_before_the_key_calls_back(tmp_path: Path) -> None:
    l110, l96345 = load_lines(SHIPPED).lines
    assert (l110.callback_abandoned, l96345.callback_abandoned) == (True, False)
    assert (l110.intake_priority, l96345.intake_priority) == (2, 5)
    # an older lines.toml has neither key: every line calls back (no 110 callback is lost)
    text = "\n".join(ln for ln in SHIPPED.read_text().splitlines()
                     if not ln.startswith(("callback_abandoned", "intake_priority")))
    path = tmp_path / "lines.toml"
    path.write_text(text)
    old = load_lines(path).lines
    assert [ln.callback_abandoned for ln in old] == [True, True]
    assert [ln.intake_priority for ln in old] == [5, 5]
    assert problems(broken(tmp_path, "callback_abandoned = true ", "callback_abandoned = 1 ")[0]) == [
        f"{tmp_path / 'lines.toml'}:27: line.110.callback_abandoned: must be true or false, got 1"]
