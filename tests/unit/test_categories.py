"""Unit tests of callrouter.categories: the shipped labels and every validation problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.categories import (
    CategoriesError,
    check_categories,
    load_categories,
    plan_categories,
)
from callrouter.config import Settings
from callrouter.numberplan import UNLISTED, NumberPlan, load_plan

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_PLAN = ROOT / "queues" / "numberplan.csv"
SHIPPED = ROOT / "queues" / "categories.toml"

SMALL_PLAN = (
    "number,line,category,department,priority,description,example\n"
    "110,110,police,县公安局指挥中心,1,报警求助,no\n"
    "119,110,fire,县消防救援大队,1,火警,no\n"
    "96345,96345,public_service,县96345社会公共服务中心,5,非紧急求助,no\n"
)

GOOD = (
    "[category.police]\n"
    'label = "报警求助"\n'
    "\n"
    "[category.fire]\n"
    'label = "火警"\n'
    "\n"
    "[category.public_service]\n"
    'label = "公共服务"\n'
    "\n"
    "[category.unlisted]\n"
    'label = "其他"\n'
)


@pytest.fixture()
def small_plan(tmp_path: Path) -> NumberPlan:
    path = tmp_path / "plan.csv"
    path.write_text(SMALL_PLAN, encoding="utf-8")
    return load_plan(path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "categories.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, plan: NumberPlan, text: str) -> list[str]:
    with pytest.raises(CategoriesError) as info:
        load_categories(write(tmp_path, text), plan)
    return info.value.problems


def test_shipped_file_labels_every_category_of_the_shipped_plan() -> None:
    plan = load_plan(SHIPPED_PLAN)
    labels = load_categories(SHIPPED, plan)
    assert set(labels) == {entry.category for entry in plan.entries} | {UNLISTED}
    assert labels["fire"] == "火警"
    assert labels["ambulance"] == "医疗急救"
    assert len(set(labels.values())) == len(labels)
    assert all(label != slug for slug, label in labels.items())


def test_settings_default_points_at_the_shipped_file() -> None:
    assert Settings(data_dir=ROOT).categories_path == SHIPPED
    assert Settings(categories=Path("/x.toml")).categories_path == Path("/x.toml")


def test_plan_categories_keeps_plan_order_and_lines(small_plan: NumberPlan) -> None:
    assert plan_categories(small_plan) == {
        "police": "110", "fire": "110", "public_service": "96345", UNLISTED: "96345",
    }


def test_good_file_loads_in_plan_order(tmp_path: Path, small_plan: NumberPlan) -> None:
    labels = load_categories(write(tmp_path, GOOD), small_plan)
    assert list(labels) == ["police", "fire", "public_service", UNLISTED]
    assert labels["fire"] == "火警"
    assert check_categories(write(tmp_path, GOOD), small_plan) == []


def test_missing_category_is_reported(tmp_path: Path, small_plan: NumberPlan) -> None:
    text = GOOD.replace('[category.fire]\nlabel = "火警"\n', "")
    problems = problems_of(tmp_path, small_plan, text)
    assert len(problems) == 1
    assert problems[0].endswith(
        'category "fire" (line 110) of the number plan has no label: '
        'add [category.fire] label = "..."'
    )
    assert problems[0].startswith(f"{tmp_path / 'categories.toml'}:1: ")


def test_unknown_category_is_reported_at_its_line(tmp_path: Path, small_plan: NumberPlan) -> None:
    text = GOOD + '\n[category.firee]\nlabel = "火灾"\n'
    problems = problems_of(tmp_path, small_plan, text)
    assert len(problems) == 1
    assert ":13: unknown category \"firee\"" in problems[0]


def test_bad_labels_are_each_reported(tmp_path: Path, small_plan: NumberPlan) -> None:
    text = (
        "[category.police]\nlabel = \"police\"\n"  # 2: not Chinese
        "[category.fire]\nlabel = \"\"\n"  # 4: empty
        "[category.public_service]\nlabel = 5\n"  # 6: not a string
        "[category.unlisted]\nlabel = \"火警火警火警火警火警火警火警火警火警火警火\"\n"  # 8: too long
    )
    problems = problems_of(tmp_path, small_plan, text)
    lines = [p.split(":")[1] for p in problems]
    assert lines == ["2", "4", "6", "8"]
    assert "must be Chinese" in problems[0]
    assert "must not be empty" in problems[1]
    assert "must be a string" in problems[2]
    assert "1 to 20 characters" in problems[3]


def test_duplicate_label_missing_label_and_unknown_keys(tmp_path: Path, small_plan: NumberPlan) -> None:
    text = (
        'title = "x"\n'  # 1
        "[category.police]\nlabel = \"火警\"\ncolour = \"red\"\n"  # 2-4
        "[category.fire]\nlabel = \"火警\"\n"  # 5-6: duplicate
        "[category.public_service]\n"  # 7: missing label
        "[category.unlisted]\nlabel = \"其他\"\n"
    )
    problems = problems_of(tmp_path, small_plan, text)
    assert any(':1: unknown key "title"' in p for p in problems)
    assert any(':4: category.police: unknown key "colour"' in p for p in problems)
    assert any(":6: category.fire.label \"火警\" is also the label of police" in p for p in problems)
    assert any(":7: category.public_service: missing label" in p for p in problems)
    assert len(problems) == 4


def test_toml_syntax_and_unreadable_file(tmp_path: Path, small_plan: NumberPlan) -> None:
    problems = problems_of(tmp_path, small_plan, GOOD + "[category.fire\n")
    assert len(problems) == 1 and "TOML syntax" in problems[0]
    with pytest.raises(CategoriesError) as info:
        load_categories(tmp_path / "absent.toml", small_plan)
    assert "cannot read" in info.value.problems[0]
