"""RTP probes: G.711 decoding, what counts as audible, and first audio on a real socket."""

from __future__ import annotations

import socket
import struct
import time

from callrouter.sim.rtp import PCMA, PCMU, RtpProbes, alaw_to_linear, is_audible, rtp_payload, ulaw_to_linear


def rtp(payload: bytes, pt: int = PCMU, seq: int = 1, *, csrc: int = 0, ext_words: int = -1, pad: int = 0) -> bytes:
    first = 0x80 | csrc | (0x10 if ext_words >= 0 else 0) | (0x20 if pad else 0)
    head = struct.pack("!BBHII", first, pt, seq, 160 * seq, 0x1234) + b"\0\0\0\1" * csrc
    if ext_words >= 0:
        head += struct.pack("!HH", 0xBEDE, ext_words) + b"\xaa" * 4 * ext_words
    return head + payload + (bytes(pad - 1) + bytes([pad]) if pad else b"")


def test_g711_decoding_known_values() -> None:
    assert ulaw_to_linear(0xFF) == 0 and ulaw_to_linear(0x7F) == 0  # mu-law's two silences
    assert ulaw_to_linear(0x00) == -32124 and ulaw_to_linear(0x80) == 32124
    assert alaw_to_linear(0xD5) == 8 and alaw_to_linear(0x55) == -8  # A-law's quietest
    assert alaw_to_linear(0xAA) == 32256 and alaw_to_linear(0x2A) == -32256
    # monotone within a sign: every code decodes to a distinct step
    assert len({ulaw_to_linear(c) for c in range(0x80, 0x100)}) == 128


def test_silence_is_not_audible_speech_is() -> None:
    assert not is_audible(rtp(b"\xff" * 160))
    assert not is_audible(rtp(b"\xfe\x7e" * 80))  # +-4 of 32767: still silence
    assert not is_audible(rtp(b"\xd5" * 160, PCMA))
    assert is_audible(rtp(b"\xff" * 159 + b"\x20"))  # one loud sample is enough
    assert is_audible(rtp(b"\xd5" * 159 + b"\xaa", PCMA))
    assert not is_audible(rtp(b"\x20" * 4, 101))  # a DTMF event is not audio
    assert not is_audible(rtp(b"\x20" * 160, 9))  # G.722 is not read


def test_rtp_payload_skips_csrc_extension_and_padding() -> None:
    assert rtp_payload(rtp(b"abc", csrc=2, ext_words=1, pad=3)) == (PCMU, b"abc")
    assert rtp_payload(b"\x80\x00") is None  # short
    assert rtp_payload(b"\x40" + bytes(20)) is None  # version 1
    assert rtp_payload(rtp(b"", ext_words=5)[:14]) is None  # extension beyond the packet


def test_first_audio_on_a_loopback_socket() -> None:
    probes = RtpProbes(2, first_audio_only=True)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for seq in range(1, 4):
                tx.sendto(rtp(b"\xff" * 160, seq=seq), ("127.0.0.1", probes.ports[0]))
            time.sleep(0.05)
            sent_loud = time.time_ns()
            for seq in range(4, 30):
                tx.sendto(rtp(b"\x20" * 160, seq=seq), ("127.0.0.1", probes.ports[0]))
            tx.sendto(rtp(b"\xff" * 160), ("127.0.0.1", probes.ports[1]))  # silence only
        deadline = time.monotonic() + 5
        while (probes.first_audio_ns[0] is None or probes.first_packet_ns[1] is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        first, heard = probes.first_packet_ns[0], probes.first_audio_ns[0]
        assert first is not None and heard is not None
        assert first < sent_loud <= heard < time.time_ns()
        assert probes.first_packet_ns[1] is not None and probes.first_audio_ns[1] is None
        assert probes.packets == [[], []]  # first-audio probes keep no packet list
    finally:
        probes.stop()


def test_gap_probes_keep_every_packet() -> None:
    probes = RtpProbes(3)
    try:
        t0 = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for seq in (1, 2, 4):  # 3 lost
                tx.sendto(rtp(b"\xff" * 160, seq=seq), ("127.0.0.1", probes.ports[1]))
        deadline = time.monotonic() + 5
        while len(probes.packets[1]) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        gaps, received, lost = probes.gaps(t0, time.time() + 1)
        assert [seq for _ns, seq in probes.packets[1]] == [1, 2, 4]
        assert (len(gaps), received, lost) == (2, 2, 1)
        assert probes.first_audio_ns == [None] * 3
    finally:
        probes.stop()
