"""RTP from Asterisk's ExternalMedia channel: parse a packet, turn L16 into vosk's PCM.

Asterisk sends ``slin16`` over RTP as L16 (RFC 3551): 16-bit samples in network byte
order (big-endian); vosk wants little-endian. Packets come from Asterisk on loopback,
but are still checked: a datagram that is not RTP version 2, or is shorter than its own
header says, is dropped (and counted), never trusted.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass

HEADER = 12


class NotRtp(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket:
    """The packet in ``data``; NotRtp if it is not a well-formed RTP packet."""
    if len(data) < HEADER:
        raise NotRtp(f"{len(data)} bytes: shorter than an RTP header")
    first = data[0]
    if first >> 6 != 2:
        raise NotRtp(f"RTP version {first >> 6}, not 2")
    offset = HEADER + 4 * (first & 0x0F)  # CSRC list
    if first & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if len(data) < offset + 4:
            raise NotRtp("truncated header extension")
        offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
    end = len(data)
    if first & 0x20:  # padding: the last byte says how much
        end -= data[-1]
    if offset > end:
        raise NotRtp(f"header of {offset} bytes, packet of {len(data)}")
    return RtpPacket(payload_type=data[1] & 0x7F, seq=int.from_bytes(data[2:4], "big"),
                     timestamp=int.from_bytes(data[4:8], "big"), ssrc=int.from_bytes(data[8:12], "big"),
                     payload=bytes(data[offset:end]))


def l16_to_pcm(payload: bytes) -> bytes:
    """Big-endian 16-bit samples (L16) as little-endian (vosk); an odd last byte is dropped."""
    samples = array.array("h")
    samples.frombytes(payload[: len(payload) & ~1])
    if sys.byteorder == "little":
        samples.byteswap()
    return samples.tobytes()
