"""Bounded shutdown (issue 8, item 3): SIGTERM ends the engine within 10 s in every state.

Each test brings a real `callrouter run` engine into one state, sends SIGTERM and asserts
the process exited before the deadline: a bound on correctness, not a speed figure (the
figures are scripts/bench_shutdown.py's). The states are those that once kept an engine
alive: Asterisk stopped or frozen (SIGSTOP: every ARI request and the WebSocket close
hang), Redis unreachable, the database frozen mid-transaction (a worker thread stuck in
a call that never returns, which also holds up the interpreter's exit), an /api/events
client that never reads, and a storm of callers in progress. A second SIGTERM exits at once.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrouter.provision import asterisk as prov
from callrouter.shutdown import EXIT_ABANDONED
from callrouter.sim.processes import end_process
from callrouter.sim.trunk import CallSpec, TrunkReport
from tests.conftest import wait_for
from tests.e2e.conftest import Engine, EngineFactory
from tests.integration.servers import PrivatePostgres, free_port, private_postgres_bindir

BOUND_S = 10.0
STATES = ["idle", "asterisk_stopped", "asterisk_frozen", "redis_unreachable", "database_frozen",
          "feed_client_not_reading", "calls_in_progress"]


def sigterm_seconds(engine: Engine, bound: float = BOUND_S) -> float:
    """SIGTERM, then seconds until the process exited; fails (after a SIGKILL) past ``bound``."""
    ended = end_process(engine.proc, wait_s=bound)
    assert not ended.killed, f"engine still ran {bound:.0f} s after SIGTERM (killed):\n{engine.log()[-3000:]}"
    return ended.seconds


def _pids_of_cluster(server: PrivatePostgres) -> list[int]:
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True,
                              check=False).stdout.split()
    return [postmaster, *map(int, children)]


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def feed_client_that_never_reads(engines: EngineFactory) -> socket.socket:
    """A WebSocket client of /api/events that completes the handshake and never reads again."""
    s = engines.settings
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few events
    sock.settimeout(5)
    sock.connect((s.api_bind, s.api_port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/events HTTP/1.1\r\nHost: {s.api_bind}:{s.api_port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {s.secret('api_token')}\r\n\r\n").encode())
    head = sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return sock


@contextlib.contextmanager
def engine_in_state(state: str, engines: EngineFactory) -> Iterator[Engine]:
    """An engine brought into ``state``, ready for its SIGTERM; everything is put back after."""
    settings = engines.settings
    target = prov.select_target(settings)
    with contextlib.ExitStack() as stack:
        if state == "redis_unreachable":
            engines.env["CALLROUTER_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
        if state == "database_frozen":
            server = PrivatePostgres(private_postgres_bindir())
            stack.callback(server.destroy)
            server.init()
            server.start()
            engines.env["CALLROUTER_DB_URL"] = server.url
        engine = engines.start()
        if state == "asterisk_stopped":
            def restart() -> None:
                if not prov.running(target):
                    prov.start(target)
            stack.callback(restart)
            prov.stop(target)
        elif state == "asterisk_frozen":
            pid = prov.pid(target)
            assert pid is not None
            stack.callback(os.kill, pid, signal.SIGCONT)
            os.kill(pid, signal.SIGSTOP)
        elif state == "database_frozen":
            pids = _pids_of_cluster(server)
            stack.callback(_signal_all, pids, signal.SIGCONT)
            # a call whose ticket writes then hang inside the database driver (worker thread)
            thread, _ = engines.calls_in_background([CallSpec("12345", "13800000001", 3.0)], rate=1)
            stack.callback(thread.join, 30)
            wait_for(lambda: "event=call_arrived" in engine.log(), 15, "the call to arrive")
            _signal_all(pids, signal.SIGSTOP)
            time.sleep(1.0)  # the writer's next transaction is under way, and stuck
        elif state == "feed_client_not_reading":
            for _ in range(3):
                stack.enter_context(contextlib.closing(feed_client_that_never_reads(engines)))
            # events for the clients that never read: they fill their socket buffers
            thread, _ = engines.calls_in_background([CallSpec("12345", f"1380000{i:04d}", 1.0) for i in range(20)],
                                                    rate=10)
            stack.callback(thread.join, 60)
            wait_for(lambda: engine.log().count("event=call_ended") >= 10, 30, "ten calls to end")
        elif state == "calls_in_progress":
            specs = [CallSpec(["110", "12345", "119", "96345"][i % 4], f"1381{i:07d}", 20.0) for i in range(60)]
            thread, out = engines.calls_in_background(specs, rate=20)
            stack.callback(_end_calls, settings, thread, out)
            wait_for(lambda: engine.log().count("event=call_arrived") >= 30, 30, "30 callers to arrive")
        yield engine


def _end_calls(settings: object, thread: threading.Thread, out: list[TrunkReport]) -> None:
    from callrouter.config import Settings

    assert isinstance(settings, Settings)
    prov.rx(prov.select_target(settings), "channel request hangup all")
    thread.join(timeout=60)


@pytest.mark.parametrize("state", [pytest.param(s, marks=pytest.mark.restarts_asterisk)
                                   if s == "asterisk_stopped" else s for s in STATES])
def test_sigterm_ends_the_engine_within_the_bound(state: str, engines: EngineFactory) -> None:
    with engine_in_state(state, engines) as engine:
        seconds = sigterm_seconds(engine)
    assert seconds <= BOUND_S
    log = engine.log()
    assert "event=engine_stopping" in log
    # the orderly path finished, or what it could not finish is named in the log
    assert "event=engine_stopped" in log or "event=shutdown_step_abandoned" in log \
        or "event=shutdown_watchdog_exit" in log, log[-3000:]
    if state == "database_frozen":
        assert "event=shutdown_step_abandoned step=ticket_writer" in log, "the writer's wait is abandoned, logged"
        # what the frozen database never got is in the spool for the next engine
        assert "event=tickets_spooled_at_shutdown" in log, log[-3000:]
        assert (engines.tmp / "tickets-spool.jsonl").stat().st_size > 0


def test_a_second_sigterm_exits_at_once(engines: EngineFactory) -> None:
    # the database frozen: the orderly stop waits seconds for the writer, so there is time
    # for the second signal, which must not wait for anything
    with engine_in_state("database_frozen", engines) as engine:
        engine.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "event=engine_stopping" in engine.log(), 5, "the engine to start stopping")
        engine.proc.send_signal(signal.SIGTERM)
        code = engine.proc.wait(timeout=BOUND_S)
    log = engine.log()
    # it exited from the second signal's handler, not after the orderly steps
    assert "event=shutdown_forced signal=SIGTERM" in log, log[-2000:]
    assert code == EXIT_ABANDONED
    assert "event=engine_stopped" not in log


def test_an_engine_that_ignores_sigterm_is_killed_and_its_port_freed(engines: EngineFactory, tmp_path: Path) -> None:
    """The fixtures' escalation: a stuck engine (SIGSTOP: it ignores every signal but
    SIGKILL) is killed after the wait, and the API port is free for the next engine."""
    engine = engines.start()
    engine.proc.send_signal(signal.SIGSTOP)
    with pytest.raises(AssertionError, match="killed"):
        engine.stop(timeout=2.0)
    assert engine.proc.returncode == -signal.SIGKILL
    second = engines.start()
    assert second.proc.poll() is None
