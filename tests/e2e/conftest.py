"""End-to-end fixtures: the real Asterisk (provisioned by the project), the engine as a
real `callrouter run` process, and SIPp as the carrier trunk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from callrouter.config import Settings, load_settings
from callrouter.tickets import TicketStore
from tests.conftest import missing_part, wait_for


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
    try:
        prov.ensure_host_packages(["sipp"])
    except prov.ProvisionError as exc:
        missing_part(f"SIPp: {exc}")
    return settings


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    log_path: Path
    db_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


class EngineFactory:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.db_url = f"sqlite:///{tmp / 'tickets.sqlite3'}"
        self.started: list[Engine] = []

    def start(self, wait_connected: bool = True) -> Engine:
        n = len(self.started)
        log_path = self.tmp / f"engine-{n}.log"
        env = {**os.environ, "CALLROUTER_DB_URL": self.db_url}
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "run"], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        engine = Engine(proc, log_path, self.db_url)
        self.started.append(engine)
        if wait_connected:
            wait_for(lambda: "event=reconciled" in engine.log() or proc.poll() is not None, 20,
                     "the engine to connect to ARI")
            if proc.poll() is not None:
                raise AssertionError(f"engine exited {proc.returncode}:\n{engine.log()}")
        return engine

    def store(self) -> TicketStore:
        return TicketStore(self.db_url)


@pytest.fixture
def engines(asterisk: Settings, tmp_path: Path) -> Iterator[EngineFactory]:
    factory = EngineFactory(asterisk, tmp_path)
    yield factory
    for engine in factory.started:
        if engine.proc.poll() is None:
            engine.stop(signal.SIGTERM)
            try:
                engine.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                engine.proc.kill()
    # leave no caller behind for the next test
    from callrouter.provision import asterisk as prov

    target = prov.select_target(asterisk)
    prov.rx(target, "channel request hangup all")
    time.sleep(0.3)
