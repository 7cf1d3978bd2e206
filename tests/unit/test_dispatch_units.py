"""queues/units.toml: the shipped file, the escalation chain, and every error with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.dispatch.units import COUNTY, KINDS, UnitsError, check_units, load_units
from callrouter.numberplan import NumberPlan, load_plan

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "queues" / "units.toml"


@pytest.fixture(scope="module")
def plan() -> NumberPlan:
    return load_plan(ROOT / "queues" / "numberplan.csv")


def test_shipped_units_cover_every_category_in_every_town(plan: NumberPlan) -> None:
    units = load_units(SHIPPED, plan)
    assert len(units.towns) == 19
    assert len(units.units) >= 100
    assert {u.kind for u in units.units} == set(KINDS)
    categories = {e.category for e in plan.entries} | {"unlisted"}
    for town in [None, *(t.id for t in units.towns)]:
        for category in categories:
            chain = units.choose(category, town)
            assert chain, (category, town)
            assert len({u.id for u in chain}) == len(chain)
    # every liaison in the shipped file is made up and says so
    assert all(u.liaison.example for u in units.units)
    # 110 units acknowledge in minutes, 96345 units in hours
    assert units.unit("county_fire_brigade") is not None
    assert units.unit("county_fire_brigade").ack_s <= 600  # type: ignore[union-attr]
    assert units.unit("county_96345_supervision").ack_s >= 3600  # type: ignore[union-attr]


def test_chain_is_town_first_then_county_in_file_order(plan: NumberPlan) -> None:
    units = load_units(SHIPPED, plan)
    chain = [u.id for u in units.choose("fire", "zhukou")]
    assert chain[0] == "fire_zhukou"
    assert chain[1:] == [u.id for u in units.units if u.area == COUNTY and "fire" in u.categories]
    # unknown or no town: county-wide only
    assert [u.id for u in units.choose("fire", None)] == chain[1:]
    assert [u.id for u in units.choose("fire", "nowhere")] == chain[1:]
    assert units.choose("no_such_category", "zhukou") == []


GOOD = """\
[[town]]
id = "north"
name = "北镇"
example = true

[[town]]
id = "south"
name = "南镇"
example = true

[[unit]]
id = "all"
name = "县中心"
kind = "department"
categories = [{cats}]
area = "county"
ack_minutes = 5
liaison = {{ name = "甲（示例）", phone = "05786990001", example = true }}

[[unit]]
id = "north_fire"
name = "北镇消防站"
kind = "department"
categories = ["fire"]
area = "north"
ack_hours = 0.5
liaison = {{ name = "乙（示例）", phone = "05786990002", example = true }}
notify = {{ webhook = "http://127.0.0.1:9000/hook" }}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "units.toml"
    path.write_text(text, encoding="utf-8")
    return path


def all_categories(plan: NumberPlan) -> str:
    return ", ".join(f'"{c}"' for c in sorted({e.category for e in plan.entries} | {"unlisted"}))


def test_a_small_valid_file(tmp_path: Path, plan: NumberPlan) -> None:
    units = load_units(write(tmp_path, GOOD.format(cats=all_categories(plan))), plan)
    north = units.unit("north_fire")
    assert north is not None and north.ack_s == 1800 and north.webhook == "http://127.0.0.1:9000/hook"
    assert units.unit("all").webhook is None  # type: ignore[union-attr]
    assert [u.id for u in units.choose("fire", "north")] == ["north_fire", "all"]
    assert [u.id for u in units.choose("fire", "south")] == ["all"]
    assert units.town("south").name == "南镇"  # type: ignore[union-attr]


def line_no(text: str, needle: str) -> int:
    """The line where ``needle`` (one or more lines) starts."""
    return text[:text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(("old", "new", "needle", "message"), [
    ('kind = "department"\ncategories = ["fire"]', 'kind = "army"\ncategories = ["fire"]', 'kind = "army"',
     "is not one of department"),
    ('categories = ["fire"]', 'categories = ["fire", "fyre"]', '"fyre"', "unknown category 'fyre'"),
    ('area = "north"', 'area = "west"', 'area = "west"', "unknown area 'west'"),
    ('ack_hours = 0.5', 'ack_hours = 0', 'ack_hours = 0', "must be > 0"),
    ('ack_hours = 0.5', 'ack_hours = 0.5\nack_minutes = 3', 'ack_hours = 0.5', "not both"),
    ('id = "north_fire"', 'id = "all"', 'id = "all"\nname = "北镇', "duplicate unit 'all'"),
    ('id = "north_fire"', 'id = "North Fire"', 'id = "North Fire"', "must match"),
    ('"http://127.0.0.1:9000/hook"', '"ftp://x/hook"', "ftp://", "must be an http:// or https:// URL"),
    ('phone = "05786990002"', 'phone = "call me"', 'phone = "call me"', "must match"),
    ('ack_hours = 0.5', 'ack_hours = 0.5\ncolour = "red"', 'colour = "red"', "unknown key"),
    ('id = "south"', 'id = "north"', 'id = "north"\nname = "南镇"', "duplicate town 'north'"),
])
def test_errors_name_the_file_and_line(tmp_path: Path, plan: NumberPlan, old: str, new: str, needle: str,
                                       message: str) -> None:
    good = GOOD.format(cats=all_categories(plan))
    assert old in good
    text = good.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(UnitsError) as caught:
        load_units(path, plan)
    expected = f"{path}:{line_no(text, needle)}: "
    assert any(p.startswith(expected) and message in p for p in caught.value.problems), caught.value.problems


def test_a_category_without_a_unit_in_some_town(tmp_path: Path, plan: NumberPlan) -> None:
    cats = all_categories(plan).replace('"fire", ', "")
    path = write(tmp_path, GOOD.format(cats=cats))
    problems = check_units(path, plan)
    assert problems == [(f"{path}:1: category 'fire' has no unit in south: add a county-wide unit "
                         '(area = "county") or one in each of those towns')]


def test_toml_syntax_and_unreadable_file(tmp_path: Path, plan: NumberPlan) -> None:
    path = write(tmp_path, '[[town]]\nid = "x\n')
    problems = check_units(path, plan)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: TOML syntax")
    missing = tmp_path / "none.toml"
    assert check_units(missing, plan)[0].startswith(f"{missing}:1: cannot read")
