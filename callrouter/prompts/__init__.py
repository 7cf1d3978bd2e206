"""The prompt pipeline: ivr_prompts/ sources -> Asterisk sound files.

Every prompt in ``ivr_prompts/prompts.toml``, and the numbers ``num-0`` ... ``num-99``
the engine plays inside position and wait announcements, becomes ``<sounds>/<name>.wav``
(8 kHz, 16-bit, mono: what Asterisk's format_wav plays without transcoding). A recording
in ``ivr_prompts/recordings/<name>.wav`` (integer PCM WAV at any rate, any channels) is
used when present; otherwise the text is spoken: characters -> tone-numbered pinyin
(:mod:`callrouter.prompts.mandarin`) -> espeak-ng's ``cmn-latn-pinyin`` voice. Hold music
is generated (no music ships with the Asterisk packages): a quiet, slow arpeggio, so a
caller on hold always hears that the line is alive. Outputs are rebuilt only when their
source (the pinyin script, or the recording's bytes) or the pipeline changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
import subprocess
import tomllib
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # pydub imports audioop (deprecated in Python 3.11/3.12, gone in 3.13, where the
    # audioop-lts package provides it) and warns when ffmpeg is absent; this pipeline reads
    # and writes only WAV, which pydub handles itself.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError
    from pydub.generators import Sine
    from pydub.silence import detect_leading_silence

from callrouter.prompts.mandarin import ScriptError, number_words, script

log = logging.getLogger("callrouter.prompts")

RATE = 8000
# bump when the sounds a source makes change (voice, script, format): every chroot's
# sounds are rebuilt at its next `asterisk up`. 2: pinyin through cmn-latn-pinyin
PIPELINE_VERSION = "2"
# espeak-ng's Mandarin voice for tone-numbered pinyin (`-v cmn` reads hanzi as English)
VOICE = "cmn-latn-pinyin"
# words (here: syllables) per minute; a little slower than espeak's 175 for the phone
SPEED_WPM = 160
# Numbers for position and wait announcements: num-0 ... num-99, said as counts.
NUMBERS = range(100)
# silence before a prompt, so the first syllable is not clipped while media settles ...
LEAD_IN_MS = 250
# ... but not before a piece the engine plays inside a sentence, right after another
# (您前面还有 | 两 | 位来电在等候): a gap there sounds like a fault
FRAGMENT_LEAD_IN_MS = 0
# espeak-ng ends every utterance with ~350 ms of silence: cut to this
TAIL_MS = 100
# a recording whose loudest sample is below this is taken for a silent take
SILENT_DBFS = -50.0
# (frequency Hz, ms) notes of the hold tune; pentatonic, soft.
HOLD_TUNE = [(523, 400), (587, 400), (659, 400), (784, 600), (659, 400), (587, 400), (523, 800),
             (440, 400), (523, 400), (587, 600), (523, 400), (440, 400), (392, 1000)]


class PromptError(Exception):
    pass


def _telephone(seg: Any) -> Any:
    return seg.set_frame_rate(RATE).set_channels(1).set_sample_width(2)


def _espeak(*args: str) -> bytes:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise PromptError("espeak-ng is not installed (Debian package espeak-ng): cannot speak prompts")
    proc = subprocess.run([espeak, "-v", VOICE, *args], capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise PromptError(f"espeak-ng -v {VOICE} failed ({proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip() or 'no output'}; "
                          "the voice ships in Debian's espeak-ng-data")
    return proc.stdout


def speak(pinyin: str) -> Any:
    """Speak a tone-numbered pinyin script (see :func:`mandarin.script`); returns an
    AudioSegment at espeak's own rate."""
    seg = _decode_wav(_espeak("-s", str(SPEED_WPM), "--stdout", pinyin), "espeak-ng's output")
    tail = detect_leading_silence(seg.reverse(), silence_threshold=-50.0, chunk_size=5)
    return seg[:max(len(seg) - tail + TAIL_MS, 1)]


def continues_sentence(name: str) -> bool:
    """A prompt the engine plays right after another inside one sentence (calls/service.py
    plays position-prefix, num-N, position-suffix, wait-prefix, num-N, wait-suffix)."""
    return name.startswith("num-") or name.endswith("-suffix")


def _decode_wav(data: bytes, what: str) -> Any:
    try:
        # the constructor parses WAV itself; AudioSegment.from_file hands anything it cannot
        # parse (or any file object without a format) to ffmpeg, which is not installed
        return AudioSegment(data=data)
    except (CouldntDecodeError, ValueError, IndexError, struct.error) as exc:
        raise PromptError(f"{what}: not a PCM WAV file pydub can read ({exc})") from exc


def phonemes(pinyin: str) -> str:
    """espeak-ng's phoneme transcription of a pinyin script, as the voice will say it
    (a language switch shows as ``(en)``): what the tests check prompts against."""
    return _espeak("-q", "-x", pinyin).decode(errors="replace")


def read_recording(path: Path) -> Any:
    """A recorded prompt: a PCM WAV file at any rate and channel count, 8 to 32 bits."""
    data = path.read_bytes()
    if _wav_float(data):
        # pydub would read float samples as integers: loud noise on the line
        raise PromptError(f"{path}: floating-point WAV; export it as 16-bit PCM")
    seg = _decode_wav(data, str(path))
    if len(seg) < 100 or seg.max_dBFS < SILENT_DBFS:
        raise PromptError(f"{path}: empty or silent ({len(seg)} ms, peak {seg.max_dBFS:.0f} dBFS)")
    return seg


def _wav_float(data: bytes) -> bool:
    """True when the WAV's format (or an extensible WAV's sub-format) is IEEE float."""
    if data[:4] != b"RIFF":
        return False
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt " and size >= 16:
            tag = struct.unpack_from("<H", data, pos + 8)[0]
            if tag == 0xFFFE and size >= 40:
                tag = struct.unpack_from("<H", data, pos + 8 + 24)[0]  # the SubFormat GUID's first two bytes
            return bool(tag == 3)
        pos += 8 + size + (size & 1)
    return False


def hold_music(repeats: int = 3) -> Any:
    tune = AudioSegment.silent(duration=0, frame_rate=RATE)
    for freq, ms in HOLD_TUNE:
        note = Sine(freq, sample_rate=RATE).to_audio_segment(duration=ms, volume=-24.0)
        tune += note.fade_in(30).fade_out(120)
    tune += AudioSegment.silent(duration=600, frame_rate=RATE)
    return _telephone(tune * repeats)


def tone(freq: int, ms: int, gap_ms: int = 0, times: int = 1) -> Any:
    seg = AudioSegment.silent(duration=0, frame_rate=RATE)
    for _ in range(times):
        seg += Sine(freq, sample_rate=RATE).to_audio_segment(duration=ms, volume=-12.0).fade_out(20)
        seg += AudioSegment.silent(duration=gap_ms, frame_rate=RATE)
    return _telephone(seg)


def load_scripts(src: Path) -> dict[str, str]:
    manifest = src / "prompts.toml"
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PromptError(f"{manifest}: {exc}") from exc
    scripts: dict[str, str] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or not entry["text"].strip():
            raise PromptError(f"{manifest}: [{name}] needs a non-empty text = \"...\"")
        scripts[name] = entry["text"].strip()
    for n in NUMBERS:
        scripts.setdefault(f"num-{n}", number_words(n))
    for name, text in scripts.items():
        try:
            script(text)
        except ScriptError as exc:
            raise PromptError(f"{manifest}: [{name}] {exc}") from exc
    return scripts


def _write_wav(seg: AudioSegment, out: Path) -> None:
    # pydub's export(path) opens the file and never closes it (a ResourceWarning per
    # prompt, an error under the tests' filterwarnings): hand it a file we close
    with out.open("wb") as fh:
        seg.export(fh, format="wav")


def build_sounds(src: Path, sounds_dir: Path, moh_dir: Path) -> list[Path]:
    """Render every prompt and the hold music; returns the files (re)written."""
    sounds_dir.mkdir(parents=True, exist_ok=True)
    moh_dir.mkdir(parents=True, exist_ok=True)
    stamp_file = sounds_dir / ".sources.json"
    try:
        stamps: dict[str, str] = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    written: list[Path] = []
    scripts = load_scripts(src)
    recordings = src / "recordings"
    if recordings.is_dir():
        for stray in sorted(p.name for p in recordings.iterdir() if p.suffix == ".wav" and p.stem not in scripts):
            log.warning("event=recording_unused file=%s: no prompt of that name (prompts.toml, num-0 ... num-99)",
                        recordings / stray)
    for name, text in scripts.items():
        recording = recordings / f"{name}.wav"
        pinyin = script(text)
        # the pinyin, not the characters: a pypinyin upgrade that reads a word differently
        # rebuilds that prompt
        source = recording.read_bytes() if recording.is_file() else f"{VOICE} {SPEED_WPM} {pinyin}".encode()
        digest = hashlib.sha256(PIPELINE_VERSION.encode() + source).hexdigest()
        out = sounds_dir / f"{name}.wav"
        if stamps.get(name) == digest and out.exists():
            continue
        seg = None
        if recording.is_file():
            try:
                seg = read_recording(recording)
            except PromptError as exc:
                # a bad recording must not leave the line without a prompt: speak it instead
                log.warning("event=recording_unusable prompt=%s error=%s; using the synthetic voice", name, exc)
        if seg is None:
            seg = speak(pinyin)
        lead_in = FRAGMENT_LEAD_IN_MS if continues_sentence(name) else LEAD_IN_MS
        seg = AudioSegment.silent(duration=lead_in, frame_rate=RATE) + _telephone(seg)
        _write_wav(_telephone(seg), out)
        stamps[name] = digest
        written.append(out)
    # feature-code confirmations: one short beep for done, three low ones for refused
    for name, (freq, ms, gap, times) in {"beep": (1000, 200, 0, 1), "beeperr": (400, 150, 100, 3)}.items():
        out = sounds_dir / f"{name}.wav"
        if not out.exists():
            _write_wav(tone(freq, ms, gap, times), out)
            written.append(out)
    moh = moh_dir / "callrouter-hold.wav"
    digest = hashlib.sha256((PIPELINE_VERSION + repr(HOLD_TUNE)).encode()).hexdigest()
    if stamps.get("__moh__") != digest or not moh.exists():
        _write_wav(hold_music(), moh)
        stamps["__moh__"] = digest
        written.append(moh)
    stamp_file.write_text(json.dumps(stamps, indent=1, sort_keys=True))
    for path in (*sounds_dir.iterdir(), *moh_dir.iterdir()):
        path.chmod(0o644)
    return written
