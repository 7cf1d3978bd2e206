"""What a 96345 caller hears while waiting, end to end: real Asterisk with the sounds the
prompt pipeline built for it, the engine, SIPp callers. Asterisk's own playback events
(seen by an onlooker ARI application) say which sound files it played to each caller's
channel, in what order and for how long.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import Any

from callrouter.acd.lines import load_lines
from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import CallSpec
from tests.conftest import wait_for
from tests.e2e.ari_watch import AriWatch
from tests.e2e.conftest import EngineFactory

# the first announcement is due this long after a caller queued: after the greeting
# (about 11 s), so it is not skipped for the greeting still playing
ANNOUNCE_S = 15


def _seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def _ms(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(event["timestamp"]).replace("+0000", "+00:00")).timestamp()


def test_a_96345_caller_hears_position_and_wait_in_order(engines: EngineFactory, ari_watch: AriWatch) -> None:
    lines = engines.use_lines(announce_interval_s=ANNOUNCE_S)
    # no call has ended yet: a call keeps a seat for the configured talk time plus wrap-up
    # (LineRuntime.aht_s)
    aht_s = next(line.aht_default_s + line.wrap_up_s for line in load_lines(lines).lines if line.id == "96345")
    engines.start()
    # no seat logged in: three callers wait on 96345, in arrival order, until hung up
    callers = [f"1390000000{i}" for i in range(3)]
    thread, out = engines.calls_in_background([CallSpec("96345", c, -1) for c in callers], 2)
    target = prov.select_target(engines.settings)
    sounds_dir = target.host_path(target.paths.sounds_dir)

    def playbacks_of(caller: str) -> dict[str, list[dict[str, Any]]]:
        """This caller's playbacks: id -> its events, in order."""
        by_id: dict[str, list[dict[str, Any]]] = {}
        for e in ari_watch.events(lambda e: str(e.get("type", "")).startswith("Playback")):
            pb = e["playback"]
            uri = str(pb.get("target_uri", ""))
            if uri.startswith("channel:") and ari_watch.channel_caller(uri[len("channel:"):]) == caller:
                by_id.setdefault(pb["id"], []).append(e)
        return by_id

    try:
        # a greeting still playing when an announcement falls due skips that one: allow two
        wait_for(lambda: all(any(evs[-1]["type"] == "PlaybackFinished" and pid.startswith("announce-")
                                 for pid, evs in playbacks_of(c).items()) for c in callers), 2 * ANNOUNCE_S + 30,
                 "every caller's first announcement to finish")
    finally:
        # the callers have heard what this test is about: hang them up
        for channel in ari_watch.channels().values():
            if channel.get("caller", {}).get("number") in callers and channel.get("name"):
                prov.rx(target, f"channel request hangup {channel['name']}")
        thread.join(timeout=60)
    assert out and all(c.ok for c in out[0].calls), out and out[0].calls
    for position, caller in enumerate(callers, start=1):
        played = playbacks_of(caller)
        greeting = [evs for pid, evs in played.items() if pid.startswith("greet-")]
        assert greeting and greeting[0][0]["playback"]["media_uri"] == "sound:callrouter/greeting-96345"
        announce = next(evs for pid, evs in played.items() if pid.startswith("announce-"))
        # Asterisk plays a list of sounds as one playback: Started for each sound, Continuing
        # between two, Finished after the last
        # nobody serving: the core's ETA is position x AHT, announced in whole minutes
        minutes = max(1, min(99, math.ceil(round(position * aht_s) / 60)))
        # the first in line is told so (您是下一位), the others how many callers are ahead
        where = ["position-next"] if position == 1 else ["position-prefix", f"num-{position - 1}", "position-suffix"]
        names = [*where, "wait-prefix", f"num-{minutes}", "wait-suffix"]
        types = [e["type"] for e in announce]
        assert types == (["PlaybackStarted"] + ["PlaybackContinuing", "PlaybackStarted"] * (len(names) - 1)
                         + ["PlaybackFinished"]), (
            caller, [(e["type"], e["playback"].get("media_uri"), e["timestamp"]) for e in announce])
        assert announce[-1]["playback"]["state"] == "done", announce[-1]
        started = [e for e in announce if e["type"] == "PlaybackStarted"]
        assert [e["playback"]["media_uri"] for e in started] == [f"sound:callrouter/{n}" for n in names], caller
        # each sound played for as long as its file lasts: Asterisk found it and played it through
        for name, start, end in zip(names, started, [*started[1:], announce[-1]], strict=True):
            took, lasts = _ms(end) - _ms(start), _seconds(sounds_dir / f"{name}.wav")
            assert lasts - 0.15 <= took <= lasts + 0.6, f"{caller}: {name}.wav lasts {lasts:.2f} s, played {took:.2f} s"
