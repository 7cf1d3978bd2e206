"""Chinese text -> the pinyin script the Mandarin voice reads (callrouter.prompts.mandarin)."""

from __future__ import annotations

import pytest

from callrouter.prompts.mandarin import ScriptError, number_words, phone_digits, script, to_pinyin


@pytest.mark.parametrize(("n", "words", "pinyin"), [
    (0, "零", "ling2"),
    (1, "一", "yi1"),
    (2, "两", "liang3"),  # a measure word follows: 两位, 两分钟
    (3, "三", "san1"),
    (10, "十", "shi2"),
    (11, "十一", "shi2 yi1"),
    (12, "十二", "shi2 er4"),  # never 十两
    (20, "二十", "er4 shi2"),
    (22, "二十二", "er4 shi2 er4"),
    (23, "二十三", "er4 shi2 san1"),
    (99, "九十九", "jiu3 shi2 jiu3"),
])
def test_counts_are_read_the_chinese_way(n: int, words: str, pinyin: str) -> None:
    assert number_words(n) == words
    assert script(words) == pinyin


def test_counts_outside_0_to_99_are_refused() -> None:
    for n in (-1, 100):
        with pytest.raises(ValueError, match="outside 0..99"):
            number_words(n)


@pytest.mark.parametrize(("digits", "pinyin"), [
    ("110", "yao1 yao1 ling2"),  # 幺幺零: 1 is yao1 in a phone number
    ("96345", "jiu3 liu4 san1 si4 wu3"),
    ("12345", "yao1 er4 san1 si4 wu3"),
    ("0", "ling2"),
    ("78", "qi1 ba1"),
])
def test_phone_numbers_are_read_digit_by_digit(digits: str, pinyin: str) -> None:
    assert " ".join(phone_digits(digits)) == pinyin
    assert script(digits) == pinyin


def test_phone_digits_refuse_anything_but_ascii_digits() -> None:
    for bad in ("", "11a", "١١٠", "1 1"):
        with pytest.raises(ValueError):
            phone_digits(bad)


def test_digits_inside_a_sentence_are_a_phone_number() -> None:
    assert script("这里是96345公共服务热线") == "zhe4 li3 shi4 jiu3 liu4 san1 si4 wu3 gong1 gong4 fu2 wu4 re4 xian4"
    assert script("请拨打１１０。") == "qing3 bo1 da3 yao1 yao1 ling2."  # full-width digits too


def test_polyphonic_characters_are_read_in_context() -> None:
    # 还 hai2 (not huan2), 为 wei4 (not wei2), 约 yue1, 的 neutral, 不 bu2 before a 4th tone
    assert script("您前面还有") == "nin2 qian2 mian4 hai2 you3"
    assert script("马上为您服务") == "ma3 shang4 wei4 nin2 fu2 wu4"
    assert script("预计等待时间约") == "yu4 ji4 deng3 dai4 shi2 jian1 yue1"
    assert script("您的电话") == "nin2 de5 dian4 hua4"
    assert script("请不要挂机") == "qing3 bu2 yao4 gua4 ji1"
    assert script("还钱") == "huan2 qian2"


def test_neutral_tone_is_5_and_u_umlaut_is_v() -> None:
    # the voice reads de0 and bare de as other tones; 5 is its neutral tone. ü is v (lv4).
    assert script("我们的") == "wo3 men5 de5"
    assert script("绿色") == "lv4 se4"


def test_punctuation_becomes_pauses_and_runs_collapse() -> None:
    assert to_pinyin("您好，这里是。") == ["nin2", "hao3", ",", "zhe4", "li3", "shi4", "."]
    assert script("您好，。请稍候！") == "nin2 hao3. qing3 shao1 hou4."
    assert script("，您好") == "nin2 hao3"  # no pause before the first word


@pytest.mark.parametrize("text", ["hello", "您好ABC", "按#号键", "请拨打110 ext", "☎"])
def test_latin_letters_and_symbols_are_refused(text: str) -> None:
    # the voice would read them as English letter names: the very fault this replaces
    with pytest.raises(ScriptError, match="cannot be spoken as Mandarin"):
        script(text)


def test_nothing_to_speak_is_refused() -> None:
    for text in ("", "，。", "   "):
        with pytest.raises(ScriptError, match="nothing to speak"):
            script(text)
