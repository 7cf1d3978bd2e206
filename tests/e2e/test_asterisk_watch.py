"""An Asterisk that crashes is started again by `callrouter asterisk watch`, which logs
what is known of the crash (the core's backtrace), and the engine reconnects to the new
one by itself: the next caller is answered and gets a ticket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from callrouter.provision import asterisk as prov
from callrouter.sim.processes import end_process
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory


@pytest.mark.restarts_asterisk
def test_a_crashed_asterisk_is_restarted_and_the_next_caller_answered(engines: EngineFactory,
                                                                       tmp_path: Path) -> None:
    settings = engines.settings
    target = prov.select_target(settings)
    log_path = tmp_path / "watch.log"
    with log_path.open("wb") as log:
        watch = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "asterisk", "watch"], stdout=log,
                                 stderr=subprocess.STDOUT, env={**os.environ, **engines.env})
    try:
        engine = engines.start()
        first = run_calls(settings, [CallSpec("110", "13900000001", 1.0)], rate=1)
        assert first.calls[0].ok, first.to_json()
        crashed = prov.pid(target)
        assert crashed is not None
        os.kill(crashed, signal.SIGSEGV)  # what a crash in Asterisk looks like from outside

        wait_for(lambda: "event=asterisk_restarted" in log_path.read_text(errors="replace"), 60,
                 "the watcher to start Asterisk again")
        assert (prov.pid(target) or crashed) != crashed and prov.running(target)
        text = log_path.read_text(errors="replace")
        assert f"event=asterisk_gone pid={crashed}" in text, text[-3000:]
        assert "Program terminated with signal SIGSEGV" in text, "the crash report carries the core's backtrace"
        # the engine saw Asterisk go and come back, by itself
        wait_for(lambda: engine.log().count("event=ari_connected") >= 2, 30, "the engine to reconnect")
        second = run_calls(settings, [CallSpec("96345", "13900000002", 1.0)], rate=1)
        assert second.calls[0].ok, second.to_json()
        rows = wait_for(lambda: engines.closed_tickets(2), 30, "both callers' tickets")
        assert {r["caller"] for r in rows} == {"13900000001", "13900000002"}
    finally:
        ended = end_process(watch, sig=signal.SIGTERM, wait_s=10)
    assert not ended.killed and ended.returncode == 0, log_path.read_text(errors="replace")[-2000:]
    assert prov.running(target), "stopping the watcher leaves Asterisk running"
