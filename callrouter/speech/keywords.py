"""Keyword rules and per-model phrase lists, from ``queues/keywords.toml``.

What a caller says while waiting is matched against rules, per line: a rule names the
words, the flag it raises on the wallboard and the agent console (``probable_emergency``
on 96345, ``probable_non_emergency`` on 110, ...) and, optionally, the priority the
caller is raised to in the queue (a seat decides what happens next: nothing transfers
by itself). Matching ignores whitespace and case, so a recogniser that writes 着 火 or
"수도수리" still matches 着火 and 수도 수리.

A small model recognises short phrases far better when it listens for those only (vosk
grammar mode); ``[model."<name>"] phrases`` lists them per model. A model with no entry
transcribes free-form. Errors name the file and line, every one of them at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from callrouter.acd.errors import ConfigFileError
from callrouter.acd.tomlsource import Problems, TableReader, TomlSource

LINES = ("110", "96345")
FLAG_RE = re.compile(r"[a-z][a-z0-9_]{1,39}")
MAX_WORD = 40
MAX_PHRASES = 500
MIN_PRIORITY, MAX_PRIORITY = 1, 9


def normalise(text: str) -> str:
    """What matching compares: lower case, no whitespace."""
    return "".join(text.lower().split())


@dataclass(frozen=True)
class Rule:
    line: str
    flag: str
    words: tuple[str, ...]
    priority: int | None = None  # raise the caller to this (1 most urgent); None: flag only
    source: str = ""  # file:line, for the log


@dataclass(frozen=True)
class Hit:
    rule: Rule
    word: str


@dataclass(frozen=True)
class KeywordRules:
    rules: tuple[Rule, ...] = ()
    phrases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model name -> grammar
    source: str = "(none)"

    def match(self, line: str, text: str) -> list[Hit]:
        """The rules of ``line`` whose words occur in ``text``, one hit per rule (its
        first word found), in file order."""
        said = normalise(text)
        hits = []
        for rule in self.rules:
            if rule.line != line:
                continue
            word = next((w for w in rule.words if normalise(w) in said), None)
            if word is not None:
                hits.append(Hit(rule, word))
        return hits

    def phrases_for(self, model: str) -> tuple[str, ...] | None:
        """The grammar for ``model`` (vosk grammar mode), or None: free-form."""
        return self.phrases.get(model)


def load_keywords(path: str | Path) -> KeywordRules:
    source = TomlSource.read(path)
    return parse_keywords(source)


def parse_keywords(source: TomlSource) -> KeywordRules:
    """Every problem at once, as ``file:line: problem`` (ConfigFileError)."""
    doc = source.parse()
    problems = Problems(source)
    root = TableReader(doc, (), problems)
    rules: list[Rule] = []
    for t in root.tables("rule"):
        line = t.string("line", choices=LINES)
        flag = t.string("flag", pattern=FLAG_RE)
        words = _words(t, "words")
        priority = t.integer("priority", minimum=MIN_PRIORITY, maximum=MAX_PRIORITY) if t.has("priority") else None
        t.reject_unknown(("line", "flag", "words", "priority"))
        if line is not None and flag is not None and words:
            rules.append(Rule(line, flag, tuple(words), priority,
                              f"{source.name}:{source.line_of(t.path)}"))
    phrases: dict[str, tuple[str, ...]] = {}
    models = root.table("model")
    if models is not None:
        for name in list(models.data):
            m = models.table(name)
            if m is None:
                continue
            listed = _words(m, "phrases")
            m.reject_unknown(("phrases",))
            if listed:
                phrases[name] = tuple(dict.fromkeys(listed))
    root.reject_unknown(("rule", "model"))
    problems.raise_if_any()
    return KeywordRules(tuple(rules), phrases, source.name)


def _words(t: TableReader, key: str) -> list[str]:
    words = t.strings(key) or []
    good: list[str] = []
    for word in words:
        if not normalise(word):
            t.problems.add(t.path + (key,), f"{key}: an empty word", value=f'"{word}"')
        elif len(word) > MAX_WORD or any(not c.isprintable() for c in word):
            t.problems.add(t.path + (key,), f"{key}: {word[:50]!r} is not up to {MAX_WORD} printable characters",
                           value=word[:20])
        else:
            good.append(word.strip())
    if len(good) > MAX_PHRASES:
        t.problems.add(t.path + (key,), f"{key}: {len(good)} entries; at most {MAX_PHRASES}")
        return []
    if words is not None and t.has(key) and not words:
        t.problems.add(t.path + (key,), f"{key}: an empty list; name at least one")
    return good


__all__ = ["ConfigFileError", "Hit", "KeywordRules", "Rule", "load_keywords", "normalise", "parse_keywords"]
