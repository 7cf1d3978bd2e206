"""Chinese prompt text -> the tone-numbered pinyin script espeak-ng's ``cmn-latn-pinyin``
voice speaks.

espeak-ng's ``cmn`` voice reads most hanzi as English letter names; its
``cmn-latn-pinyin`` voice speaks pinyin with tone numbers (``nin2 hao3``) correctly. So
the characters go through pypinyin first: whole words in context (polyphonic
characters: 还有 hai2 you3, 为您 wei4 nin2), tone sandhi applied (不要 bu2 yao4), the
neutral tone written ``5`` (``de5``: the voice reads ``de0`` as tone 1), ü as ``v``
(``lv4``: the voice reads ``u:`` badly).

Digits in a script are telephone numbers and read one by one the Chinese way, 1 as
幺 yao1: 110 is yao1 yao1 ling2, 96345 jiu3 liu4 san1 si4 wu3. Counts (positions,
minutes) are written in characters; :func:`number_words` makes them (23 -> 二十三,
2 -> 两, since a measure word follows: 两位, 两分钟).
"""

from __future__ import annotations

import re
import unicodedata

# a telephone number's digits as spoken: 1 is yao1, so 1 and 7 (qi1) never sound alike
PHONE_DIGITS = {"0": "ling2", "1": "yao1", "2": "er4", "3": "san1", "4": "si4", "5": "wu3",
                "6": "liu4", "7": "qi1", "8": "ba1", "9": "jiu3"}
HANZI_DIGITS = "零一二三四五六七八九"
# clause and sentence breaks: espeak pauses at ASCII punctuation followed by a space
COMMA = ","
STOP = "."
_PAUSES = {**dict.fromkeys("，,、；;：:", COMMA), **dict.fromkeys("。.！!？?…", STOP)}
_SYLLABLE = re.compile(r"[a-z]{1,6}[1-5]")
# a chunk pypinyin leaves alone: digits, one pause mark, or blanks (kept apart here)
_CHUNK = re.compile(r"(?P<digits>[0-9]+)|(?P<pause>[，,、；;：:。.！!？?…])|(?P<blank>\s+)|(?P<other>.)", re.DOTALL)


class ScriptError(ValueError):
    """Prompt text that cannot be spoken as Mandarin (Latin letters, symbols)."""


def number_words(n: int) -> str:
    """``n`` (0..99) as a count in characters, as said before a measure word: 0 零,
    2 两 (两位, 两分钟), 10 十, 11 十一, 20 二十, 23 二十三."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_words: {n} is outside 0..99")
    if n == 2:
        return "两"
    tens, ones = divmod(n, 10)
    if tens == 0:
        return HANZI_DIGITS[ones]
    return ("" if tens == 1 else HANZI_DIGITS[tens]) + "十" + (HANZI_DIGITS[ones] if ones else "")


def phone_digits(digits: str) -> list[str]:
    """A telephone number read digit by digit: ``"110"`` -> yao1 yao1 ling2."""
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"phone_digits: {digits!r} is not a string of digits")
    return [PHONE_DIGITS[d] for d in digits]


def to_pinyin(text: str) -> list[str]:
    """The syllables (``nin2``) and pauses (``,`` ``.``) of ``text``, in order.

    Raises ScriptError for anything that is neither Chinese, digits nor punctuation: the
    voice would read it as English.
    """
    # imported here: the engine process imports this package (through provision) and
    # never speaks; pypinyin's dictionaries cost a third of a second and ~50 MB
    from pypinyin import Style, lazy_pinyin

    tokens: list[str] = []
    # NFKC: full-width digits and punctuation (１１０，) become the ASCII ones
    for item in lazy_pinyin(unicodedata.normalize("NFKC", text), style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=True,
                            v_to_u=False):
        if _SYLLABLE.fullmatch(item):
            tokens.append(item)
            continue
        # what pypinyin left as it was: digits, punctuation, and whatever else
        for m in _CHUNK.finditer(item):
            if m.group("digits"):
                tokens += phone_digits(m.group("digits"))
            elif m.group("pause"):
                pause = _PAUSES[m.group("pause")]
                if tokens and tokens[-1] in (COMMA, STOP):
                    tokens[-1] = STOP if STOP in (pause, tokens[-1]) else COMMA
                elif tokens:
                    tokens.append(pause)
            elif m.group("other"):
                raise ScriptError(f"{m.group('other')!r} in {text!r} cannot be spoken as Mandarin: "
                                  "write it in Chinese characters (digits are read as a phone number)")
    if not any(t not in (COMMA, STOP) for t in tokens):
        raise ScriptError(f"{text!r} has nothing to speak")
    return tokens


def script(text: str) -> str:
    """The exact text espeak-ng's cmn-latn-pinyin voice is given for ``text``:
    ``"您好，这里是110"`` -> ``"nin2 hao3, zhe4 li3 shi4 yao1 yao1 ling2"``."""
    out = ""
    for token in to_pinyin(text):
        out += token if token in (COMMA, STOP) else (" " if out else "") + token
    return out
