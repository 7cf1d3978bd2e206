"""Reading Asterisk's CEL file: records, trunk-only folding, the ticket op of an ended call."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from callrouter.calls.unseen import TrunkCall, fold, node_state_path, parse_line, parse_records, unseen_op
from callrouter.config import Settings
from callrouter.numberplan import load_plan
from callrouter.tickets import ticket_id_for_channel


def rec(kind: str, at: float, uid: str, context: str = "from-trunk", exten: str = "119", app: str = "",
        num: str = "13911112222", name: str = "") -> str:
    return json.dumps({"eventtype": kind, "eventtime": f"{at:.6f}", "uniqueid": uid, "context": context,
                       "exten": exten, "channame": "PJSIP/trunk-00000001", "appname": app, "num": num,
                       "name": name})


def held_call(uid: str = "1796085206.0", t0: float = 1796085206.794305) -> list[str]:
    """What Asterisk wrote for a caller held two rounds by the dialplan who then hung up."""
    return [rec("CHAN_START", t0, uid, exten="0578119"),
            rec("ANSWER", t0 + 0.0005, uid, context="callrouter-engine", exten="s", app="Answer"),
            rec("APP_START", t0 + 0.5, uid, context="callrouter-engine", exten="s", app="MusicOnHold"),
            rec("APP_START", t0 + 2.5, uid, context="callrouter-engine", exten="s", app="MusicOnHold"),
            rec("CHAN_END", t0 + 3.0, uid, context="callrouter-engine", exten="s")]


def test_a_record_is_read_with_its_time_and_fields() -> None:
    ev = parse_line(rec("CHAN_START", 1796085206.794305, "1796085206.0", exten="0578119"))
    assert ev is not None
    assert (ev.kind, ev.uniqueid, ev.context, ev.exten, ev.caller) == (
        "CHAN_START", "1796085206.0", "from-trunk", "0578119", "13911112222")
    assert ev.at == pytest.approx(1796085206.794305)


@pytest.mark.parametrize("line", ["", "not json", "[1,2]", '{"eventtype":"CHAN_START"}',
                                  '{"eventtype":"CHAN_START","eventtime":"x","uniqueid":"1.2"}',
                                  '{"eventtype":"","eventtime":"1.0","uniqueid":"1.2"}'])
def test_what_is_not_a_record_is_none(line: str) -> None:
    assert parse_line(line) is None


def test_hostile_caller_fields_stay_data_and_are_capped() -> None:
    hostile = '1<img src=x onerror=alert(1)>",\\' + "9" * 1000
    ev = parse_line(rec("CHAN_START", 1.0, "1.1", num=hostile, name="a,b\"c"))
    assert ev is not None and ev.caller == hostile[:256] and ev.caller_name == 'a,b"c'


def test_a_caller_name_with_a_line_break_is_read_across_it_and_garbage_is_counted() -> None:
    broken = rec("CHAN_START", 1.0, "1.1", name="line1\nline2").replace("\\n", "\n")
    assert "\n" in broken
    text = "\n".join([broken, "garbage{", rec("CHAN_END", 2.0, "1.1"), ""])
    events, bad = parse_records(text)
    assert [e.kind for e in events] == ["CHAN_START", "CHAN_END"]
    assert events[0].caller_name == "line1\nline2"
    assert bad == 1


def test_fold_follows_trunk_channels_only_with_answer_hold_rounds_and_end() -> None:
    seat = [rec("CHAN_START", 5.0, "9.1", context="from-seat", exten="*11"), rec("CHAN_END", 6.0, "9.1")]
    leg = [rec("CHAN_START", 5.0, "9.2", context="default", exten="s"), rec("CHAN_END", 6.0, "9.2")]
    events, bad = parse_records("\n".join(held_call() + seat + leg))
    assert bad == 0
    calls: dict[str, TrunkCall] = {}
    fold(events, calls)
    assert list(calls) == ["1796085206.0"]
    call = calls["1796085206.0"]
    assert call.dialled == "0578119" and call.held_rounds == 2
    assert call.answered == pytest.approx(1796085206.794805)
    assert call.ended == pytest.approx(1796085209.794305)


def test_an_end_in_a_later_file_completes_a_call_started_in_an_earlier_one() -> None:
    lines = held_call()
    calls: dict[str, TrunkCall] = {}
    fold(parse_records("\n".join(lines[:3]))[0], calls)
    assert calls["1796085206.0"].ended is None
    fold(parse_records("\n".join(lines[3:]))[0], calls)
    # a repeated start (a file read twice) changes nothing
    fold(parse_records(lines[0])[0], calls)
    assert calls["1796085206.0"].ended is not None and calls["1796085206.0"].held_rounds == 2


def test_the_op_of_an_ended_call_is_routed_and_keeps_the_engines_ticket_id() -> None:
    plan = load_plan(Settings().numberplan_path)
    calls: dict[str, TrunkCall] = {}
    fold(parse_records("\n".join(held_call()))[0], calls)
    op = unseen_op(calls["1796085206.0"], plan)
    arrived = datetime.fromtimestamp(1796085206.794305, UTC)
    assert op.id == ticket_id_for_channel(arrived, "1796085206.0")
    assert (op.line, op.number, op.category) == ("110", "119", "fire")
    assert op.held_by_dialplan is True and op.channel_id == "1796085206.0"
    assert (op.ended_at - op.arrived_at).total_seconds() == pytest.approx(3.0)
    assert op.answered_at is not None


def test_a_call_that_never_went_to_hold_is_not_flagged_and_an_open_one_has_no_op() -> None:
    plan = load_plan(Settings().numberplan_path)
    short = TrunkCall(uniqueid="1.5", started=100.0, dialled="12345", caller="", caller_name="", ended=100.2)
    op = unseen_op(short, plan)
    assert op.held_by_dialplan is False and op.line == "96345"
    with pytest.raises(ValueError):
        unseen_op(TrunkCall(uniqueid="1.6", started=100.0, dialled="110", caller="", caller_name=""), plan)


# lines exactly as Asterisk 22.10 wrote them (cel_custom.conf, format = json)
ASTERISK_LINES = [
    ('{"eventtype":"CHAN_START","eventtime":"1796085206.794305","uniqueid":"1796085206.0","context":"from-trunk",'
    '"exten":"0578119","channame":"PJSIP/trunk-00000000","appname":"","num":"13912345678","name":"13912345678"}'),
    ('{"eventtype":"CHAN_START","eventtime":"1796085207.1","uniqueid":"1796085207.1","context":"from-seat",'
    '"exten":"*11","channame":"PJSIP/s110-01-00000001","appname":"","num":"s110-01","name":"s110-01"}'),
    ('{"eventtype":"ANSWER","eventtime":"1796085206.794736","uniqueid":"1796085206.0","context":"callrouter-engine",'
    '"exten":"s","channame":"PJSIP/trunk-00000000","appname":"Answer","num":"13912345678","name":"13912345678"}'),
    ('{"eventtype":"CHAN_END","eventtime":"1796085207.5","uniqueid":"1796085207.1","context":"from-seat",'
    '"exten":"*11","channame":"PJSIP/s110-01-00000001","appname":"","num":"s110-01","name":"s110-01"}'),
    ('{"eventtype":"CHAN_END","eventtime":"1796085209.799944","uniqueid":"1796085206.0","context":"callrouter-engine",'
    '"exten":"s","channame":"PJSIP/trunk-00000000","appname":"","num":"13912345678","name":"13912345678"}'),
]


def test_other_channels_records_are_skipped_unparsed_and_trunk_ones_kept() -> None:
    follow: set[str] = {"1796085100.9"}  # followed since an earlier file
    ended_earlier = ('{"eventtype":"CHAN_END","eventtime":"1796085210.0","uniqueid":"1796085100.9",'
                     '"context":"callrouter-engine","exten":"s","channame":"PJSIP/trunk-1","appname":"",'
                     '"num":"","name":""}')
    events, bad = parse_records("\n".join([*ASTERISK_LINES, ended_earlier, ""]), follow=follow)
    assert bad == 0
    assert [(e.kind, e.uniqueid) for e in events] == [
        ("CHAN_START", "1796085206.0"), ("ANSWER", "1796085206.0"), ("CHAN_END", "1796085206.0"),
        ("CHAN_END", "1796085100.9")]
    assert follow == {"1796085100.9", "1796085206.0"}
    # without a follow set every record is parsed, and fold still keeps trunk calls only
    every, _ = parse_records("\n".join(ASTERISK_LINES))
    assert len(every) == 5
    calls: dict[str, TrunkCall] = {}
    fold(every, calls)
    assert list(calls) == ["1796085206.0"] and calls["1796085206.0"].ended is not None


def test_each_cluster_node_keeps_its_own_import_state_beside_the_engines() -> None:
    state = Path("/var/lib/callrouter/cel-import.json")
    assert node_state_path(state, "node1") == Path("/var/lib/callrouter/cel-import-node1.json")
    assert node_state_path(state, "node2") != node_state_path(state, "node1")
    assert node_state_path(Path("/tmp/celstate"), "node1") == Path("/tmp/celstate-node1")
