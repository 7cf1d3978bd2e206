"""End a process we started, whatever state it is in, and check its port is free again.

Tests and benchmarks run the engine as a `callrouter run` subprocess. One engine that
does not stop must not fail every test after it (seen: an engine kept port 8080 for
15 minutes and every later engine failed to bind), so ending one escalates: the signal
asked for, a bounded wait, then SIGKILL; and the port is bind-tested afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Ended:
    returncode: int
    seconds: float  # from the first signal to the exit
    killed: bool  # it outlived the wait and got SIGKILL


def end_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, wait_s: float = 12.0,
                kill_wait_s: float = 10.0) -> Ended:
    """Send ``sig``, wait ``wait_s``, then SIGKILL and wait again. Never raises for a
    process that will not stop: ``killed`` says it had to be killed."""
    started = time.monotonic()
    if proc.poll() is not None:
        return Ended(proc.returncode, 0.0, False)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=wait_s)
        return Ended(code, time.monotonic() - started, False)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    code = proc.wait(timeout=kill_wait_s)
    return Ended(code, time.monotonic() - started, True)


def tcp_port_free(host: str, port: int) -> bool:
    """Could a server bind ``host:port`` now (SO_REUSEADDR, as aiohttp binds)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_port_free(host: str, port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not tcp_port_free(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
