"""Every prompt through the real pipeline (pypinyin, espeak-ng's cmn-latn-pinyin voice,
pydub), checked the way Asterisk and a Mandarin-speaking caller would: the file format
Asterisk plays without transcoding, a duration its text implies, and speech that is
Mandarin syllable by syllable, with the tone each syllable is written with.

The audio is read back with the standard library's ``wave``, not with pydub, so the
checks do not share the pipeline's reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import struct
import subprocess
import wave
from array import array
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from callrouter.prompts import (
    FRAGMENT_LEAD_IN_MS,
    LEAD_IN_MS,
    PromptError,
    build_sounds,
    continues_sentence,
    load_scripts,
    phonemes,
)
from callrouter.prompts.mandarin import COMMA, STOP, script, to_pinyin
from tests.conftest import missing_part

SRC = Path(__file__).resolve().parents[2] / "ivr_prompts"
# the tone contours espeak-ng's Mandarin phonemes write for each tone (Chao numbers);
# a third tone before another third is said as a second (35)
TONE_CONTOURS = {"1": {"55"}, "2": {"35"}, "3": {"21", "214", "35"}, "4": {"51"}}
# seconds of speech per syllable, at the pipeline's speed, and per pause
SYLLABLE_S = (0.20, 0.55)
PAUSE_S = 0.5
ENDS_S = 0.3  # the tail and the voice's onset


def _require_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        missing_part("espeak-ng (Debian package espeak-ng), to speak the prompts")


def _pinyin_syllables() -> set[str]:
    """Every syllable some character is read as (pypinyin's per-character dictionary,
    not its converter): what a pinyin syllable may be."""
    from pypinyin.contrib.tone_convert import to_normal
    from pypinyin.pinyin_dict import pinyin_dict

    return {to_normal(reading, v_to_u=False) for readings in pinyin_dict.values() for reading in readings.split(",")}


SYLLABLES = _pinyin_syllables()


def mandarin_problems(pinyin: str, spoken: str) -> list[str]:
    """What in a pinyin script, or in espeak-ng's phonemes for it, is not Mandarin."""
    syllables = [t for t in pinyin.replace(COMMA, " ").replace(STOP, " ").split()]
    problems = [f"{s!r} is not a pinyin syllable with a tone" for s in syllables
                if not re.fullmatch(r"[a-z]+[1-5]", s) or s[:-1] not in SYLLABLES]
    if switch := re.findall(r"\([a-z-]+\)", spoken):
        problems.append(f"the voice switched language: {switch}")
    words = spoken.split()
    if len(words) != len(syllables):
        problems.append(f"{len(syllables)} syllables but {len(words)} phoneme words: {spoken!r}")
        return problems
    for syllable, word in zip(syllables, words, strict=True):
        contours = re.findall(r"[1-5]{2,3}", word)
        tone = syllable[-1]
        if tone not in "12345":
            continue  # reported above
        if len(contours) != 1:
            problems.append(f"{syllable}: {word!r} is not one syllable with one tone")
        elif tone == "5":
            # neutral: unstressed and level
            if "'" in word or contours[0][0] != contours[0][1]:
                problems.append(f"{syllable}: {word!r} is not a neutral tone")
        elif contours[0] not in TONE_CONTOURS[tone]:
            problems.append(f"{syllable}: {word!r} is not tone {tone}")
    return problems


@dataclass
class Wav:
    rate: int
    channels: int
    width: int
    format_tag: int
    samples: array[int]

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate / self.channels


def read_wav(path: Path) -> Wav:
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", f"{path}: not a RIFF WAVE file"
    fmt = data.index(b"fmt ")
    tag = struct.unpack_from("<H", data, fmt + 8)[0]
    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
        samples = array("h", frames if w.getsampwidth() == 2 else b"")
        return Wav(w.getframerate(), w.getnchannels(), w.getsampwidth(), tag, samples)


def speech_bounds(text: str) -> tuple[float, float]:
    tokens = to_pinyin(text)
    n = sum(t not in (COMMA, STOP) for t in tokens)
    pauses = len(tokens) - n
    return SYLLABLE_S[0] * n, SYLLABLE_S[1] * n + PAUSE_S * pauses + ENDS_S


@dataclass
class Built:
    scripts: dict[str, str]
    sounds: Path
    moh: Path
    written: list[Path]


def build(src: Path, out: Path) -> Built:
    sounds, moh = out / "sounds", out / "moh"
    written = build_sounds(src, sounds, moh)
    return Built(load_scripts(src), sounds, moh, written)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    _require_espeak()
    return build(SRC, tmp_path_factory.mktemp("prompts"))


def test_every_prompt_is_rendered_as_8khz_mono_16bit_pcm(built: Built) -> None:
    assert len(built.scripts) >= 109  # the manifest's prompts and num-0 ... num-99
    assert {f"num-{n}" for n in range(100)} <= built.scripts.keys()
    for name in built.scripts:
        wav = read_wav(built.sounds / f"{name}.wav")
        assert (wav.rate, wav.channels, wav.width, wav.format_tag) == (8000, 1, 2, 1), name
    assert sorted(p.name for p in built.written) == sorted(
        [f"{n}.wav" for n in built.scripts] + ["beep.wav", "beeperr.wav", "callrouter-hold.wav"])


def test_every_prompt_lasts_what_its_syllables_imply(built: Built) -> None:
    for name, text in built.scripts.items():
        wav = read_wav(built.sounds / f"{name}.wav")
        lead_in = (FRAGMENT_LEAD_IN_MS if continues_sentence(name) else LEAD_IN_MS) / 1000
        low, high = speech_bounds(text)
        speech = wav.seconds - lead_in
        assert low <= speech <= high, f"{name} ({text}): {speech:.2f} s of speech, expected {low:.2f}..{high:.2f}"
        peak = max(abs(s) for s in wav.samples)
        assert peak > 3000, f"{name}: peak {peak}: too quiet to be speech"
        loud = next(i for i, s in enumerate(wav.samples) if abs(s) > peak / 20) / wav.rate
        if continues_sentence(name):
            # said inside a sentence (还有|两|位): no gap before it
            assert loud < 0.1, f"{name}: speech starts after {loud:.2f} s"
        else:
            assert lead_in - 0.01 <= loud < lead_in + 0.15, f"{name}: speech starts at {loud:.2f} s"


def test_every_prompt_is_spoken_as_mandarin(built: Built) -> None:
    """The exact script the pipeline gave the voice, read back as phonemes: pinyin
    syllables only, no language switch, one syllable per word with its written tone."""
    for name, text in built.scripts.items():
        pinyin = script(text)
        problems = mandarin_problems(pinyin, phonemes(pinyin))
        assert not problems, f"{name} ({text} -> {pinyin}): {problems}"


def test_the_announcement_pieces_say_what_the_engine_means(built: Built) -> None:
    # calls/service.py plays position-prefix, num-(position-1), position-suffix,
    # wait-prefix, num-minutes, wait-suffix
    said = " ".join(script(built.scripts[n]) for n in (
        "position-prefix", "num-2", "position-suffix", "wait-prefix", "num-23", "wait-suffix"))
    assert said == ("nin2 qian2 mian4 hai2 you3 liang3 wei4 lai2 dian4 zai4 deng3 hou4. "
                    "yu4 ji4 deng3 dai4 shi2 jian1 yue1 er4 shi2 san1 fen1 zhong1.")
    assert "jiu3 liu4 san1 si4 wu3" in script(built.scripts["greeting-96345"])
    assert "yao1 yao1 ling2" in script(built.scripts["greeting-110"])


def test_the_check_catches_english(built: Built) -> None:
    """The criterion above can fail: English words, toneless syllables, and the voice
    the pipeline used before (`-v cmn` on characters) are all caught."""
    assert mandarin_problems("hello3", phonemes("hello3"))
    assert mandarin_problems("nin2 hao", phonemes("nin2 hao"))
    assert mandarin_problems("nin2 hao3 B", phonemes("nin2 hao3 B"))
    old = subprocess.run(["espeak-ng", "-v", "cmn", "-q", "-x", built.scripts["greeting-96345"]],
                         capture_output=True, text=True, check=True).stdout
    assert "(en)" in old, old


# ------------------------------------------------------------------ recordings
def write_wav(path: Path, *, rate: int, channels: int, width: int, freq: float, seconds: float,
              dbfs: float = -6.0) -> None:
    """A sine recording in any PCM layout (8-bit unsigned, 16, 24 or 32-bit signed)."""
    full = 2 ** (8 * width - 1) - 1
    amp = full * 10 ** (dbfs / 20)
    frames = bytearray()
    for i in range(round(rate * seconds)):
        v = round(amp * math.sin(2 * math.pi * freq * i / rate))
        one = bytes([v + 128]) if width == 1 else v.to_bytes(width, "little", signed=True)
        frames += one * channels
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


def tone_of(wav: Wav) -> tuple[float, float]:
    """(frequency by zero crossings, peak dBFS) of the sound after the lead-in."""
    first = next(i for i, s in enumerate(wav.samples) if s != 0)
    body = wav.samples[first:]
    crossings = sum(1 for a, b in pairwise(body) if (a < 0) != (b < 0))
    return crossings / 2 / (len(body) / wav.rate), 20 * math.log10(max(abs(s) for s in body) / 32767)


def make_src(tmp: Path) -> Path:
    src = tmp / "ivr_prompts"
    src.mkdir()
    shutil.copy(SRC / "prompts.toml", src / "prompts.toml")
    return src


RECORDINGS = {
    # prompt: (rate, channels, bytes per sample, Hz, seconds)
    "greeting-110": (44100, 2, 2, 440.0, 1.5),
    "num-5": (48000, 1, 3, 300.0, 0.6),
    "wait-suffix": (11025, 1, 1, 500.0, 0.8),
    "hold-notice": (16000, 2, 4, 700.0, 1.0),
}


def test_a_recording_in_any_layout_replaces_the_synthetic_prompt(tmp_path: Path, built: Built) -> None:
    src = make_src(tmp_path)
    for name, (rate, channels, width, freq, seconds) in RECORDINGS.items():
        write_wav(src / "recordings" / f"{name}.wav", rate=rate, channels=channels, width=width,
                  freq=freq, seconds=seconds)
    first = build(src, tmp_path / "out")
    for name, (rate, _channels, width, freq, seconds) in RECORDINGS.items():
        wav = read_wav(first.sounds / f"{name}.wav")
        assert (wav.rate, wav.channels, wav.width, wav.format_tag) == (8000, 1, 2, 1), name
        lead_in = (FRAGMENT_LEAD_IN_MS if continues_sentence(name) else LEAD_IN_MS) / 1000
        assert wav.seconds == pytest.approx(lead_in + seconds, abs=0.015), name
        assert all(s == 0 for s in wav.samples[:int(lead_in * 8000)]), f"{name}: the lead-in is silent"
        heard, peak = tone_of(wav)
        assert heard == pytest.approx(freq, rel=0.03), f"{name} ({rate} Hz, {width * 8} bits): {heard:.0f} Hz"
        assert peak == pytest.approx(-6.0, abs=1.0), f"{name} ({width * 8} bits): peak {peak:.1f} dBFS"
    # the prompts without a recording are the synthetic ones
    assert (first.sounds / "greeting-96345.wav").read_bytes() == (built.sounds / "greeting-96345.wav").read_bytes()

    # nothing changed: nothing rebuilt
    assert build(src, tmp_path / "out").written == []
    # a new take of one recording: only that prompt is rebuilt
    write_wav(src / "recordings" / "greeting-110.wav", rate=22050, channels=1, width=2, freq=600.0, seconds=1.0)
    again = build(src, tmp_path / "out")
    assert [p.name for p in again.written] == ["greeting-110.wav"]
    assert tone_of(read_wav(again.sounds / "greeting-110.wav"))[0] == pytest.approx(600.0, rel=0.03)
    # the recording removed: the synthetic voice again
    (src / "recordings" / "greeting-110.wav").unlink()
    back = build(src, tmp_path / "out")
    assert [p.name for p in back.written] == ["greeting-110.wav"]
    assert (back.sounds / "greeting-110.wav").read_bytes() == (built.sounds / "greeting-110.wav").read_bytes()


def _float_wav(extensible: bool) -> bytes:
    samples = struct.pack("<800f", *(0.5 * math.sin(i / 5) for i in range(800)))
    if extensible:
        guid = struct.pack("<H", 3) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 32000, 4, 32, 22, 32, 4) + guid
    else:
        fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_an_unusable_recording_leaves_the_synthetic_prompt(tmp_path: Path, built: Built,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Float samples (pydub would read them as integers: noise), a file that is no WAV, a
    silent take: the line keeps its synthetic prompt and the log says why."""
    src = make_src(tmp_path)
    rec = src / "recordings"
    rec.mkdir()
    (rec / "greeting-110.wav").write_bytes(_float_wav(extensible=False))
    (rec / "greeting-96345.wav").write_bytes(_float_wav(extensible=True))
    (rec / "hold-notice.wav").write_bytes(b"ID3\x03not a wav at all" * 20)
    write_wav(rec / "num-7.wav", rate=8000, channels=1, width=2, freq=440.0, seconds=1.0, dbfs=-200)
    # a take named after no prompt (a typo) is not silently ignored
    write_wav(rec / "greting-110.wav", rate=8000, channels=1, width=2, freq=440.0, seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="callrouter.prompts"):
        out = build(src, tmp_path / "out")
    for name in ("greeting-110", "greeting-96345", "hold-notice", "num-7"):
        assert (out.sounds / f"{name}.wav").read_bytes() == (built.sounds / f"{name}.wav").read_bytes(), name
    warned = [r.getMessage() for r in caplog.records if "recording_unusable" in r.getMessage()]
    assert len(warned) == 4, warned
    assert any("floating-point" in w and "greeting-96345" in w for w in warned)
    assert any("silent" in w and "num-7" in w for w in warned)
    assert [r.getMessage() for r in caplog.records if "recording_unused" in r.getMessage() and "greting-110" in
            r.getMessage()], caplog.text
    assert not (out.sounds / "greting-110.wav").exists()


def test_a_new_pipeline_version_rebuilds_every_prompt(tmp_path: Path) -> None:
    _require_espeak()
    src = make_src(tmp_path)
    out = build(src, tmp_path / "out")
    stamps = out.sounds / ".sources.json"
    # what version 1 (espeak-ng -v cmn on the characters) left behind
    old = {name: hashlib.sha256(b"1" + text.encode()).hexdigest() for name, text in out.scripts.items()}
    stamps.write_text(json.dumps(old))
    rebuilt = build(src, tmp_path / "out")
    assert {p.stem for p in rebuilt.written} >= set(out.scripts)


def test_a_script_the_voice_would_read_as_english_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "prompts.toml").write_text('[greeting-110]\ntext = "您好，请按 A 键"\n', encoding="utf-8")
    with pytest.raises(PromptError, match=r"prompts\.toml: \[greeting-110\] 'A' in .* cannot be spoken as Mandarin"):
        load_scripts(tmp_path)
