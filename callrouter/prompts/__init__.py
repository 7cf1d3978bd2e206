"""The prompt pipeline: ivr_prompts/ sources -> Asterisk sound files.

Every prompt in ``ivr_prompts/prompts.toml`` becomes ``<sounds>/<name>.wav`` (8 kHz,
16-bit, mono: what Asterisk's format_wav plays without transcoding). A recording in
``ivr_prompts/recordings/<name>.wav`` is used when present; otherwise espeak-ng's
Mandarin voice speaks the script. Hold music is generated (no music ships with the
Asterisk packages): a quiet, slow arpeggio, so a caller on hold always hears that the
line is alive. Outputs are rebuilt only when their source changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import tomllib
import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # pydub imports audioop (deprecated since Python 3.11, still shipped in 3.11/3.12) and
    # warns when ffmpeg is absent; this pipeline reads and writes only WAV, which pydub
    # handles itself.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    from pydub import AudioSegment
    from pydub.generators import Sine

log = logging.getLogger("callrouter.prompts")

RATE = 8000
PIPELINE_VERSION = "1"
# Numbers for position and wait announcements: num-0 ... num-99 (spoken in Mandarin).
NUMBERS = range(100)
# (frequency Hz, ms) notes of the hold tune; pentatonic, soft.
HOLD_TUNE = [(523, 400), (587, 400), (659, 400), (784, 600), (659, 400), (587, 400), (523, 800),
             (440, 400), (523, 400), (587, 600), (523, 400), (440, 400), (392, 1000)]


class PromptError(Exception):
    pass


def _telephone(seg: Any) -> Any:
    return seg.set_frame_rate(RATE).set_channels(1).set_sample_width(2)


def synthesize(text: str) -> Any:
    """Speak ``text`` with espeak-ng's Mandarin voice; returns an AudioSegment."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise PromptError("espeak-ng is not installed (Debian package espeak-ng): cannot speak prompts")
    proc = subprocess.run([espeak, "-v", "cmn", "-s", "150", "--stdout", text],
                          capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise PromptError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
    return AudioSegment.from_file(io.BytesIO(proc.stdout), format="wav")


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
        scripts.setdefault(f"num-{n}", str(n))
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
    for name, text in load_scripts(src).items():
        recording = src / "recordings" / f"{name}.wav"
        source = recording.read_bytes() if recording.exists() else text.encode()
        digest = hashlib.sha256(PIPELINE_VERSION.encode() + source).hexdigest()
        out = sounds_dir / f"{name}.wav"
        if stamps.get(name) == digest and out.exists():
            continue
        if recording.exists():
            with recording.open("rb") as fh:
                seg = AudioSegment.from_file(fh)
        else:
            seg = synthesize(text)
        # a short lead-in so the first syllable is not clipped while media settles
        seg = AudioSegment.silent(duration=250, frame_rate=RATE) + _telephone(seg)
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
