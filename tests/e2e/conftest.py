"""End-to-end fixtures: the real Asterisk (provisioned by the project), the engine as a
real `callrouter run` process, and SIPp as the carrier trunk."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from callrouter.config import Settings, load_settings
from callrouter.sim.leftovers import leftover_problems, pbx_resources
from callrouter.sim.processes import end_process, wait_port_free
from callrouter.sim.seats import SeatSims
from callrouter.sim.trunk import CallSpec, TrunkReport, run_calls
from callrouter.tickets import TicketStore
from tests.conftest import missing_part, wait_for
from tests.integration.servers import StoppableRedis, private_redis_binary


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def asterisk(settings: Settings) -> Settings:
    """A running Asterisk with callrouter's configuration (built and started if needed)."""
    from callrouter.provision import asterisk as prov

    if os.geteuid() != 0:
        missing_part("root, to run the Asterisk chroot")
    try:
        prov.up(settings)
    except prov.ProvisionError as exc:
        missing_part(f"a real Asterisk: {exc}")
    # an Asterisk left running (a demo kept up, an interrupted run) may still hold callers:
    # tests start from an empty PBX
    prov.rx(prov.select_target(settings), "channel request hangup all")
    try:
        prov.ensure_host_packages(["sipp"])
    except prov.ProvisionError as exc:
        missing_part(f"SIPp: {exc}")
    return settings


@pytest.fixture(autouse=True)
def asterisk_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that uses Asterisk fails if Asterisk died during it, with what is known of
    the crash (log tail, the core's backtrace), and the next test gets a restarted one:
    one crash fails one test, not every test after it."""
    if "asterisk" not in request.fixturenames or request.node.get_closest_marker("restarts_asterisk"):
        yield
        return
    from callrouter.provision import asterisk as prov

    settings: Settings = request.getfixturevalue("asterisk")
    target = prov.select_target(settings)
    before = prov.pid(target)
    if before is None or not prov.running(target):
        # died between tests (or in a test that did not use it): a fresh one for this test
        sys.stderr.write(f"\ne2e: Asterisk was not running before {request.node.nodeid}; restarting it\n"
                         + prov.crash_report(target) + "\n")
        prov.up(settings)
        before = prov.pid(target)
    started = time.time()
    yield
    after = prov.pid(target)
    if after == before:
        return
    report = prov.crash_report(target, since=started)
    prov.up(settings)
    pytest.fail(f"Asterisk (pid {before}) died during the test (now: pid {after}); "
                f"restarted for the next test.\n{report}", pytrace=False)


# SIGTERM ends the engine within 10 s (issue 8); a little more under a loaded machine
STOP_BOUND_S = 12.0
# after a test, Asterisk settles (BYEs, the engine's surplus holding bridges, 2 s idle) within
SETTLE_S = 15.0


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    log_path: Path
    db_url: str
    api_url: str = ""  # its own API (several engines at once: use_ha)
    app: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_BOUND_S) -> int:
        """Signal the engine and wait; one that outlives ``timeout`` is SIGKILLed (so it
        cannot hold its port for the tests after it) and the test fails saying so."""
        ended = end_process(self.proc, sig=sig, wait_s=timeout)
        if ended.killed:
            tail = "\n".join(self.log().splitlines()[-15:])
            raise AssertionError(f"engine pid {self.proc.pid} still ran {timeout:.0f} s after signal {sig}: "
                                 f"killed. Log tail:\n{tail}")
        return ended.returncode


def log_time(engine: Engine, mark: str) -> float:
    """Wall-clock time of the first line of the engine's log holding ``mark``."""
    for line in engine.log().splitlines():
        if mark in line:
            found = re.search(r"ts=(\S+)Z", line)
            assert found, line
            return datetime.fromisoformat(found.group(1) + "+00:00").timestamp()
    raise AssertionError(f"no {mark!r} in the log")


def fast_lines(src: Path, dest: Path, **values: float) -> Path:
    """The shipped lines.toml with some times shortened, so tests finish in seconds.

    ``values`` maps a key (``wrap_up_s``, ``calm_s``, ``ring_timeout_s`` ...) to the value
    every line gets.
    """
    text = src.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^({key}\s*=\s*)[0-9.]+", rf"\g<1>{value}", text)
        if n == 0:
            raise AssertionError(f"{src}: no {key} to shorten")
    dest.write_text(text)
    return dest


def forget_cel_record(settings: Settings) -> None:
    from callrouter.provision.asterisk import log_dir_on_host

    forget_cel_file(log_dir_on_host(settings))


def forget_cel_file(log_dir: Path) -> None:
    """Asterisk's CEL file under ``log_dir`` (and one being imported) gone: the engine
    records no earlier test's calls."""
    from callrouter.calls.unseen import CEL_FILE

    cel = log_dir / CEL_FILE
    for path in (cel, cel.with_name(cel.name + ".importing")):
        path.unlink(missing_ok=True)


class EngineFactory:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.db_url = f"sqlite:///{tmp / 'tickets.sqlite3'}"
        self.started: list[Engine] = []
        self.lines: Path | None = None
        # what the test leaves in Asterisk on purpose (checked after it): see leaves()
        self.left_channels = 0
        self.left_bridges = 0
        # this test's own state: never resume another test's seats and callers
        self.env = {"CALLROUTER_DB_URL": self.db_url, "CALLROUTER_STATE_FILE": str(tmp / "state.json"),
                    "CALLROUTER_SPOOL_FILE": str(tmp / "tickets-spool.jsonl"),
                    "CALLROUTER_REDIS_PREFIX": f"crtest-{secrets.token_hex(4)}",
                    "CALLROUTER_CEL_STATE_FILE": str(tmp / "cel-import.json")}
        # Asterisk's record of earlier tests' calls would become tickets of this test's
        # engine (it records trunk calls it never saw): start from an empty record
        forget_cel_record(settings)
        # run after the test, once its engines ended (use_ha puts the dialplan back)
        self.cleanups: list[Callable[[], object]] = []
        self.ha_filter = ""

    def use_ha(self, ttl_ms: int = 3000, claim_timeout_ms: int = 500) -> None:
        """Several engines on the session's Asterisk (callrouter.ha): its dialplan offers
        every call by StasisBroadcast to this test's applications until the test ends;
        start each engine with ``start(ha=name)``."""
        from callrouter.provision import asterisk as prov

        self.ha_filter = f"^crtest-ha-{secrets.token_hex(3)}-"
        self.env.update({"CALLROUTER_HA_APP_FILTER": self.ha_filter, "CALLROUTER_HA_LEASE_TTL_MS": str(ttl_ms),
                         "CALLROUTER_HA_CLAIM_TIMEOUT_MS": str(claim_timeout_ms)})
        self.cleanups.append(lambda: prov.up(self.settings))
        prov.up(replace(self.settings, ha_app_filter=self.ha_filter, ha_claim_timeout_ms=claim_timeout_ms,
                        ha_lease_ttl_ms=ttl_ms))

    def leaves(self, *, channels: int = 0, bridges: int = 0) -> None:
        """Declare what this test leaves in Asterisk on purpose, beyond each line's spare
        empty holding bridge (callers still held by the dialplan, say). The check after the
        test allows that many channels and non-holding ``callrouter-*`` bridges."""
        self.left_channels, self.left_bridges = channels, bridges

    def use_lines(self, **values: float) -> Path:
        self.lines = fast_lines(self.settings.lines_path, self.tmp / "lines.toml", **values)
        self.env["CALLROUTER_LINES"] = str(self.lines)
        return self.lines

    def api(self, method: str, path: str, body: dict[str, object] | None = None,
            engine: Engine | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        base = engine.api_url if engine is not None and engine.api_url else self.settings.api_url
        req = urllib.request.Request(f"{base}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.settings.secret('api_token')}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def login(self, *seats: str, engine: Engine | None = None) -> None:
        for seat in seats:
            status, body = self.api("POST", f"/api/seats/{seat}/login", engine=engine)
            assert status == 200, body

    def status(self, engine: Engine | None = None) -> dict[str, Any]:
        status, body = self.api("GET", "/api/status", engine=engine)
        assert status == 200 and isinstance(body, dict), body
        return body

    def start(self, wait_connected: bool = True, ha: str = "") -> Engine:
        """An engine; with ``ha`` (after use_ha) one of several, with its own application
        name, API port and state file: it is up once connected (leading or standing by)."""
        n = len(self.started)
        log_path = self.tmp / f"engine-{n}.log"
        env = {**os.environ, **self.env}
        api_url, app, ready = "", "", "event=reconciled"
        if ha:
            assert self.ha_filter, "use_ha() first"
            app = f"{self.ha_filter[1:]}{ha}"
            port = self.settings.api_port + 1 + n
            api_url = f"http://{self.settings.api_bind}:{port}"
            env.update({"CALLROUTER_ARI_APP": app, "CALLROUTER_API_PORT": str(port),
                        "CALLROUTER_STATE_FILE": str(self.tmp / f"state-{ha}.json")})
            ready = "event=ari_connected"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "run"], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        engine = Engine(proc, log_path, self.db_url, api_url, app)
        self.started.append(engine)
        if wait_connected:
            wait_for(lambda: ready in engine.log() or proc.poll() is not None, 20,
                     "the engine to connect to ARI")
            if proc.poll() is not None:
                raise AssertionError(f"engine exited {proc.returncode}:\n{engine.log()}")
        return engine

    def store(self) -> TicketStore:
        return TicketStore(self.db_url)

    def recordings_settled(self) -> bool:
        """No call being recorded, no recording still being kept and every ticket change
        written: a ticket gets its ``recorded`` change a moment after ``closed``; wait for
        this before counting a ticket's changes."""
        status = self.status()
        rec = status.get("recording") or {}
        return (rec.get("recording") == 0 and rec.get("keeping") == 0
                and status.get("engine", {}).get("tickets_pending") == 0)

    def closed_tickets(self, n: int) -> list[dict[str, Any]]:
        """Every ticket, once there are at least ``n`` and all are closed; else [] (for wait_for)."""
        store = self.store()
        try:
            rows = store.list(limit=100_000)
        finally:
            store.close()
        return rows if len(rows) >= n and all(r["ended_at"] for r in rows) else []

    def calls_in_background(self, specs: list[CallSpec], rate: float) -> tuple[threading.Thread, list[TrunkReport]]:
        """Place calls through the SIPp trunk in a thread; the report lands in the list."""
        out: list[TrunkReport] = []
        thread = threading.Thread(target=lambda: out.append(run_calls(self.settings, specs, rate=rate)), daemon=True)
        thread.start()
        return thread, out


def _kill_child_sipp() -> None:
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and cmd.endswith(b"sipp"):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "call":
        item.stash[CALL_PASSED] = report.passed
    return report


CALL_PASSED = pytest.StashKey[bool]()


def asterisk_leftovers(factory: EngineFactory, timeout: float = SETTLE_S) -> list[str]:
    """What Asterisk still holds beyond the rule (callrouter.sim.leftovers), once it settled."""
    deadline = time.monotonic() + timeout
    while True:
        problems = leftover_problems(pbx_resources(factory.settings), allow_channels=factory.left_channels,
                                     allow_bridges=factory.left_bridges)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.5)


@pytest.fixture
def engines(asterisk: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EngineFactory]:
    """Engines for one test. After the test (if it passed), Asterisk must hold nothing of
    the test's beyond each line's spare holding bridge (empty, with its music) and what
    the test declared with ``leaves()``: no mixing bridge, no surplus holding bridge, no
    caller or seat channel. Then every engine is stopped (SIGKILL if it outlives the
    bound, which fails the test) and the API port must be free again."""
    factory = EngineFactory(asterisk, tmp_path)
    yield factory
    problems: list[str] = []
    if request.node.stash.get(CALL_PASSED, False):
        # while the engine still runs: it removes its surplus holding bridges as it idles
        problems += [f"Asterisk holds after the test: {p}" for p in asterisk_leftovers(factory)]
    for engine in factory.started:
        if engine.proc.poll() is None:
            engine.proc.send_signal(signal.SIGCONT)  # a test may have stopped it (SIGSTOP)
        try:
            engine.stop(signal.SIGTERM)
        except AssertionError as exc:
            problems.append(str(exc))
    if not wait_port_free(asterisk.api_bind, asterisk.api_port, 5.0):
        problems.append(f"API port {asterisk.api_bind}:{asterisk.api_port} still taken after the engines ended")
    # leave no caller behind for the next test: a test that failed early may have left
    # its SIPp trunk still placing calls, which the next test's engine would pick up
    _kill_child_sipp()
    from callrouter.provision import asterisk as prov

    target = prov.select_target(asterisk)
    prov.rx(target, "channel request hangup all")
    time.sleep(0.3)
    # the test's calls stay out of whatever engine (a demo) next reads Asterisk's record
    forget_cel_record(asterisk)
    for cleanup in factory.cleanups:
        try:
            cleanup()
        except Exception as exc:  # noqa: BLE001 - every cleanup runs; the failure is reported
            problems.append(f"cleanup {cleanup!r} failed: {exc!r}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def ari_watch(asterisk: Settings) -> Iterator[Any]:
    """Asterisk's events from now on, as an onlooker application subscribed to everything
    sees them (tests/e2e/ari_watch.py): which sounds were played to which channel."""
    from tests.e2e.ari_watch import AriWatch

    watch = AriWatch(asterisk).start()
    yield watch
    watch.stop()


@pytest.fixture
def seats(engines: EngineFactory) -> Iterator[list[SeatSims]]:
    """SIPp seat groups a test starts (append them): stopped after the test, before its engines."""
    started: list[SeatSims] = []
    yield started
    for group in started:
        group.stop()


@pytest.fixture
def stoppable_redis() -> Iterator[StoppableRedis]:
    """A private redis-server a test may stop and start again (outage and lease tests)."""
    server = StoppableRedis(private_redis_binary())
    server.start()
    try:
        yield server
    finally:
        server.destroy()
