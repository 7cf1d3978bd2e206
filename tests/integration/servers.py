"""Private Redis and PostgreSQL servers for outage tests: started by the test, stopped and
started again by the test, never the shared ones on 6379 / 5432.

A missing binary fails under CI (``CI=true``) and skips, loudly, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import missing_part


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, up: bool, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                is_up = True
        except OSError:
            is_up = False
        if is_up == up:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} on port {port} not {'up' if up else 'down'} "
                                 f"after {timeout} s")
        time.sleep(0.02)


class PrivateRedis:
    """``redis-server`` on a free loopback port, without persistence: a restart empties it,
    as a crashed cache without AOF would be."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, True, 10, "redis-server")

    def kill(self) -> None:
        """A crash: SIGKILL, wait until the port is closed."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None
        _wait_port(self.port, False, 10, "redis-server")


class StoppableRedis:
    """A private redis-server that is *stopped* (SIGTERM, as a service stop) and started
    again on the same port. AOF persistence (fsync always) keeps the stream and the
    consumer group over the stop, as a production dispatch Redis would."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="callrouter-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, True, 10, "redis-server")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        _wait_port(self.port, False, 10, "redis-server")

    def destroy(self) -> None:
        try:
            self.stop()
        except AssertionError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def private_redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_part("redis-server (apt-get install redis-server) for the private Redis "
                     "of the outage tests")
        raise AssertionError("unreachable")
    return binary


def _pg_bindir() -> Path | None:
    base = Path("/usr/lib/postgresql")
    if not base.is_dir():
        return None
    versions = sorted((p for p in base.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1] / "bin" if versions else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb into a temp dir as the ``postgres`` OS user,
    trust auth, a free loopback port) that a test can stop and start."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="callrouter-pg-"))
        self.datadir = self.root / "data"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_postgres, *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=60)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "--auth=trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                  str(self.root / "log"), "-o", options, "-w", "-t", "30", "start")
        _wait_port(self.port, True, 30, "postgres")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: a crash (no shutdown checkpoint); clients are cut off at once."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
                  "stop")
        _wait_port(self.port, False, 30, "postgres")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (subprocess.SubprocessError, AssertionError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def private_postgres_bindir() -> Path:
    bindir = _pg_bindir()
    if bindir is None:
        missing_part("PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                     "(apt-get install postgresql) for the private PostgreSQL of the "
                     "outage tests")
        raise AssertionError("unreachable")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing_part("runuser, to run initdb as the postgres user")
    return bindir


class CuttableLink:
    """A TCP forwarder on loopback to ``target`` that a test can cut: ``cut()`` closes the
    listener and every connection through it, so the far side sees a dead network (new
    connections refused), not a slow one. Threads, not the test's event loop."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        import threading

        self.target = (target_host, target_port)
        self.listener = socket.create_server((host, 0))
        self.host, self.port = host, int(self.listener.getsockname()[1])
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cut_done = False
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                near, _ = self.listener.accept()
                far = socket.create_connection(self.target, timeout=2)
            except OSError:
                return  # cut (or the target is away: this connection fails, the next may not)
            far.settimeout(None)
            with self._lock:
                if self.cut_done:
                    near.close()
                    far.close()
                    return
                self._sockets |= {near, far}
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), name="link-pump", daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            self.cut_done = True
            self.listener.close()
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()
