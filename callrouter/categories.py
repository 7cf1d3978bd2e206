"""Category labels: the Chinese name a person sees for each category slug.

The number plan files every number under a category slug (``fire``, ``power_repair``);
slugs stay in data and in API fields named ``category``, but people see the label
(``火警``, ``供电报修``) everywhere: the agent console, the wallboard, the unit page and
the reports. ``queues/categories.toml`` holds one table per category::

    [category.fire]
    label = "火警"

:func:`load_categories` reads it against the plan: every category of the plan (and the
reserved ``unlisted``, for numbers the plan does not list) must have a label, no table
may name a category the plan does not have, and labels are short, Chinese and distinct.
Every problem is reported at once as ``file:line: problem``.

The module is pure apart from reading the file.
"""

from __future__ import annotations

import os
import re

from callrouter.acd.errors import ConfigFileError
from callrouter.acd.tomlsource import Problems, TomlSource
from callrouter.numberplan import UNLISTED, UNLISTED_LINE, NumberPlan

MAX_LABEL = 20
"""Longest label, in characters: it must fit a wallboard cell and a list entry."""

_CJK = re.compile(r"[\u3400-\u9fff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CategoriesError(ConfigFileError):
    """The categories file is invalid; ``problems`` are ``file:line: problem``."""


def plan_categories(plan: NumberPlan) -> dict[str, str]:
    """Every category a ticket may carry -> its line, in plan order; ``unlisted`` last."""
    out: dict[str, str] = {}
    for entry in plan.entries:
        out.setdefault(entry.category, entry.line)
    out[UNLISTED] = UNLISTED_LINE
    return out


def load_categories(path: str | os.PathLike[str], plan: NumberPlan) -> dict[str, str]:
    """Read and validate the labels: slug -> label, in plan order.

    Raises :class:`CategoriesError` listing every problem.
    """
    try:
        source = TomlSource.read(os.fspath(path))
        data = source.parse()
    except ConfigFileError as exc:
        raise CategoriesError(exc.problems) from exc
    problems = Problems(source)
    known = plan_categories(plan)
    labels: dict[str, str] = {}
    for key in data:
        if key != "category":
            problems.add(
                (key,), f'unknown key "{key}": the file has only [category.<slug>] tables'
            )
    tables = data.get("category", {})
    if not isinstance(tables, dict):
        problems.add(("category",), "category must be tables [category.<slug>], not a value")
        tables = {}
    first_label: dict[str, str] = {}
    for slug, table in tables.items():
        where = ("category", slug)
        if slug not in known:
            problems.add(
                where,
                f'unknown category "{slug}": it is not in the number plan '
                f"({plan.source}); remove the table or fix the slug",
            )
            continue
        if not isinstance(table, dict):
            problems.add(where, f'category.{slug} must be a table with label = "..."')
            continue
        for key in table:
            if key != "label":
                problems.add(
                    where + (key,), f'category.{slug}: unknown key "{key}"; expected label'
                )
        label = table.get("label")
        if label is None:
            problems.add(where, f'category.{slug}: missing label; add label = "..."')
            continue
        if not isinstance(label, str):
            problems.add(where + ("label",), f"category.{slug}.label must be a string, got {label!r}")
            continue
        text = label.strip()
        if text != label or not text:
            problems.add(
                where + ("label",),
                f"category.{slug}.label {label!r} must not be empty or start or end with spaces",
            )
            continue
        if len(text) > MAX_LABEL or _CONTROL.search(text):
            problems.add(
                where + ("label",),
                f"category.{slug}.label {label!r} must be 1 to {MAX_LABEL} characters "
                "without control characters",
            )
            continue
        if not _CJK.search(text):
            problems.add(
                where + ("label",),
                f"category.{slug}.label {label!r} must be Chinese (people see it, not the slug)",
            )
            continue
        if text in first_label:
            problems.add(
                where + ("label",),
                f'category.{slug}.label "{text}" is also the label of {first_label[text]}: '
                "labels must tell categories apart",
            )
            continue
        first_label[text] = slug
        labels[slug] = text
    for slug, line in known.items():
        if slug not in tables:
            problems.add(
                (),
                f'category "{slug}" (line {line}) of the number plan has no label: '
                f'add [category.{slug}] label = "..."',
            )
    if len(problems):
        raise CategoriesError(problems.messages())
    return {slug: labels[slug] for slug in known}


def check_categories(path: str | os.PathLike[str], plan: NumberPlan) -> list[str]:
    """The problems of a categories file; empty when it is valid."""
    try:
        load_categories(path, plan)
    except CategoriesError as error:
        return error.problems
    return []
