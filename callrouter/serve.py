"""`callrouter serve`: Asterisk and the engine together in the foreground, until SIGTERM.

What a container runs (under tini, which forwards the signal) and what a service manager
may run: Asterisk is brought up (``asterisk up``) and kept up (``asterisk watch``: one that
dies is started again), the engine runs as a ``callrouter run`` child process. SIGTERM or
SIGINT goes to the engine, which stops within its own bound (callrouter.shutdown); then
Asterisk is stopped. An engine that exits by itself ends serve too, with its exit status
(a container's restart policy then starts the pair again).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from types import FrameType

from callrouter.config import Settings
from callrouter.provision import asterisk as prov
from callrouter.shutdown import HARD_DEADLINE_S
from callrouter.sim.processes import end_process

log = logging.getLogger("callrouter.serve")

# Asterisk's own stop ("core stop now", then signals) after the engine's
ASTERISK_STOP_S = 3.0


def serve(settings: Settings) -> int:
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    target = prov.select_target(settings)
    watching = threading.Event()
    watcher: threading.Thread | None = None
    engine: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        report = prov.up(settings)
        log.info("event=serve_asterisk_up mode=%s seconds=%.1f", report.mode, report.seconds)
        if stop.is_set():
            return 0
        watcher = threading.Thread(target=prov.watch, args=(settings, watching), name="asterisk-watch", daemon=True)
        watcher.start()
        # its own session: a Ctrl-C at a terminal reaches serve alone, which forwards it once
        # (the engine takes a second signal as "exit at once")
        engine = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "run"], start_new_session=True)
        while not stop.wait(0.5):
            if engine.poll() is not None:
                code = engine.returncode
                log.error("event=serve_engine_exited code=%s", code)
                return code or 1
        log.info("event=serve_stopping signal=%s", received[0] if received else "-")
        # the engine's watchdog ends it by HARD_DEADLINE_S whatever it waits for
        ended = end_process(engine, sig=received[0] if received else signal.SIGTERM, wait_s=HARD_DEADLINE_S + 0.5,
                            kill_wait_s=1.0)
        code = 0 if ended.returncode in (0, -signal.SIGTERM, -signal.SIGINT) else ended.returncode
        log.info("event=serve_engine_stopped code=%s seconds=%.1f killed=%s", ended.returncode, ended.seconds,
                 ended.killed)
        return code
    finally:
        if engine is not None and engine.poll() is None:
            end_process(engine, wait_s=HARD_DEADLINE_S + 0.5, kill_wait_s=1.0)
        watching.set()
        if watcher is not None:
            watcher.join(timeout=2)
        stopped = prov.stop(target, timeout=ASTERISK_STOP_S)
        log.info("event=serve_asterisk_stopped was_running=%s", stopped)
