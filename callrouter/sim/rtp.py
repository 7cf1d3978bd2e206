"""RTP receivers for probe callers: what a caller hears, timestamped by the kernel.

A probe caller (sip-sim/scenarios/probe-call.xml) puts one of these UDP sockets in its
SDP, so Asterisk sends the far end's audio here. Every packet is stamped with its kernel
receive time (SO_TIMESTAMPNS: this process's own scheduling does not count).

Two uses:
  gaps        every packet is kept (time, RTP sequence): the gaps between packets say
              whether hold audio breaks (scripts/bench_held.py; 20 ms is clean)
  first audio only the first packet and the first packet whose G.711 payload is above
              silence are kept; after that the socket is no longer read and its receive
              buffer shrinks to the kernel's minimum, so thousands of callers cost this
              process a dozen packets each (scripts/bench_answer.py: 200 OK -> greeting)
"""

from __future__ import annotations

import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
PCMU, PCMA = 0, 8
# a sample at or below this (of 32767) is silence: the prompts' lead-in is digital zero
# (within +-8), speech reaches thousands
SILENCE_MAX = 64


def ulaw_to_linear(code: int) -> int:
    """G.711 mu-law byte -> 16-bit linear sample."""
    u = ~code & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return -(magnitude - 0x84) if u & 0x80 else magnitude - 0x84


def alaw_to_linear(code: int) -> int:
    """G.711 A-law byte -> 16-bit linear sample."""
    a = code ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if a & 0x80 else -magnitude


def _quiet_codes(decode: Callable[[int], int], limit: int) -> bytes:
    return bytes(c for c in range(256) if abs(decode(c)) <= limit)


QUIET = {PCMU: _quiet_codes(ulaw_to_linear, SILENCE_MAX), PCMA: _quiet_codes(alaw_to_linear, SILENCE_MAX)}


def rtp_payload(packet: bytes) -> tuple[int, bytes] | None:
    """(payload type, payload) of an RTP packet; None if it is not one (too short, not
    version 2, a header longer than the packet)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    start = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if len(packet) < start + 4:
            return None
        start += 4 + 4 * struct.unpack("!H", packet[start + 2:start + 4])[0]
    end = len(packet)
    if packet[0] & 0x20 and end > start:  # padding: its count is the last byte
        end -= packet[-1]
    if end < start:
        return None
    return packet[1] & 0x7F, packet[start:end]


def is_audible(packet: bytes) -> bool:
    """Does this RTP packet carry G.711 audio above silence? Comfort noise, DTMF events and
    other codecs do not count."""
    parsed = rtp_payload(packet)
    if parsed is None or parsed[0] not in QUIET:
        return False
    kind, payload = parsed
    return bool(payload.translate(None, QUIET[kind]))


class RtpProbes:
    """``count`` UDP sockets on ``host``, read by one thread until stop().

    Kept per socket: ``packets`` (kernel receive ns, RTP seq) of every packet, or with
    ``first_audio_only`` just ``first_packet_ns`` and ``first_audio_ns`` (None: nothing came).
    """

    def __init__(self, count: int, host: str = "127.0.0.1", *, first_audio_only: bool = False) -> None:
        self.first_audio_only = first_audio_only
        self.socks: list[socket.socket] = []
        self.packets: list[list[tuple[int, int]]] = [[] for _ in range(count)]
        self.first_packet_ns: list[int | None] = [None] * count
        self.first_audio_ns: list[int | None] = [None] * count
        try:
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                # first audio: a quarter second of packets may wait for this thread
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16 if first_audio_only else 1 << 20)
                s.bind((host, 0))
                s.setblocking(False)
        except OSError:
            for s in self.socks:
                s.close()
            raise
        self.ports = [s.getsockname()[1] for s in self.socks]
        self._sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            self._sel.register(s, selectors.EVENT_READ, i)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtp-probes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                i = key.data
                s = self.socks[i]
                while True:
                    try:
                        data, anc, _flags, _addr = s.recvmsg(2048, space)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # closed under us by stop()
                        return
                    ns = time.time_ns()
                    for level, kind, payload in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", payload[:16])
                            ns = sec * 1_000_000_000 + nsec
                    if len(data) < 12:
                        continue
                    if not self.first_audio_only:
                        self.packets[i].append((ns, struct.unpack("!H", data[2:4])[0]))
                        continue
                    if self.first_packet_ns[i] is None:
                        self.first_packet_ns[i] = ns
                    if is_audible(data):
                        self.first_audio_ns[i] = ns
                        self._done_with(i, s)
                        break

    def _done_with(self, i: int, s: socket.socket) -> None:
        """Heard: the rest of this caller's audio is dropped by the kernel (the smallest
        receive buffer, never read again). The socket stays bound until stop(), so no other
        program gets the port while Asterisk still sends to it."""
        self._sel.unregister(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        while True:
            try:
                s.recv(2048)
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sel.close()
        for s in self.socks:
            s.close()

    def gaps(self, t0: float, t1: float) -> tuple[list[float], int, int]:
        """Gaps (ms) between consecutive packets whose later packet arrived in [t0, t1];
        also packets received in the window and RTP sequence numbers missing."""
        out: list[float] = []
        received = lost = 0
        lo, hi = int(t0 * 1e9), int(t1 * 1e9)
        for pkts in self.packets:
            for (a, sa), (b, sb) in itertools.pairwise(pkts):
                if lo <= b <= hi:
                    out.append((b - a) / 1e6)
                    received += 1
                    step = (sb - sa) % 65536
                    if 1 < step < 1000:  # a jump of thousands is a new RTP stream (source change)
                        lost += step - 1
        return out, received, lost
