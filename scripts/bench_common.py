"""Shared helpers of the queue benchmarks (bench_dispatch, bench_held, bench_queue).

An engine subprocess with its own ticket DB, state file, Redis prefix, lines file and API
port (as tests/e2e does), CPU/RSS sampling from /proc, and the machine line.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import platform
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callrouter.config import Settings
from callrouter.sim.processes import end_process, wait_port_free

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEATS_110 = [f"s110-{i:02d}" for i in range(1, 11)]
SEATS_96345 = [f"s96345-{i:02d}" for i in range(1, 11)]
POOL = [f"ovf-{i:02d}" for i in range(1, 7)]
NUMBERS_96345 = ["12345", "12315", "95598", "96345", "12333", "12369"]
NUMBERS_110 = ["110", "119", "120", "122"]


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}{mem}, Python {platform.python_version()}"


def stamp() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def fast_lines(src: Path, dest: Path, **values: float) -> Path:
    """lines.toml with some keys set for every line (as tests/e2e/conftest.py does)."""
    text = src.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^({key}\s*=\s*)[0-9.]+", rf"\g<1>{value}", text)
        if n == 0:
            raise SystemExit(f"{src}: no {key} to set")
    dest.write_text(text)
    return dest


def unrecorded_lines(src: Path, dest: Path) -> Path:
    """The shipped lines file with recording off on every line: the baselines record
    nobody, so neither does the engine (bench_held, bench_answer; --recording keeps the
    shipped policy)."""
    text, _n = re.subn(r"(?m)^(enabled\s*=\s*)true", r"\g<1>false", src.read_text())
    dest.write_text(text)
    return dest


class CpuSampler:
    """CPU seconds (utime+stime) and RSS of one pid, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.c0 = self.cpu_s()
        self.peak_rss_mb = 0.0

    def cpu_s(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return 0.0

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                    self.peak_rss_mb = max(self.peak_rss_mb, rss)
                    return rss
        except (OSError, ValueError):
            pass
        return 0.0

    def reset(self) -> None:
        self.t0, self.c0 = time.monotonic(), self.cpu_s()

    def percent(self) -> float:
        """CPU % of one core since the last reset."""
        dt = time.monotonic() - self.t0
        return 100.0 * (self.cpu_s() - self.c0) / dt if dt > 0 else 0.0


def asterisk_pid(settings: Settings | None = None) -> int:
    """The pid of OUR Asterisk: the one whose root is the chroot (another chroot's
    Asterisk may run beside it on other ports)."""
    from callrouter.config import load_settings

    root = str((settings or load_settings()).chroot)
    out = subprocess.run(["pgrep", "-x", "asterisk"], capture_output=True, text=True, check=False).stdout
    for pid in out.split():
        try:
            if os.readlink(f"/proc/{pid}/root") == root:
                return int(pid)
        except OSError:
            continue
    raise SystemExit(f"no Asterisk running in {root}: .venv/bin/callrouter asterisk up")


def rx(settings: Settings, command: str) -> str:
    from callrouter.provision import asterisk as prov

    return prov.rx(prov.select_target(settings), command).stdout


class BenchEngine:
    """`callrouter run` as a subprocess with its own state (never the shipped DB/state)."""

    def __init__(self, settings: Settings, tmp: Path, *, api_port: int = 8091, log_level: str = "INFO",
                 **lines: float) -> None:
        self.settings = dataclasses.replace(settings, api_port=api_port)
        self.tmp = tmp
        self.db_url = f"sqlite:///{tmp / 'tickets.sqlite3'}"
        self.log_path = tmp / "engine.log"
        self.env = {**os.environ, "CALLROUTER_DB_URL": self.db_url,
                    "CALLROUTER_STATE_FILE": str(tmp / "state.json"),
                    # an earlier engine's open CEL calls and spooled changes are not this run's
                    "CALLROUTER_CEL_STATE_FILE": str(tmp / "cel-import.json"),
                    "CALLROUTER_SPOOL_FILE": str(tmp / "tickets-spool.jsonl"),
                    "CALLROUTER_REDIS_PREFIX": f"crbench-{secrets.token_hex(4)}",
                    "CALLROUTER_API_PORT": str(api_port), "CALLROUTER_LOG_LEVEL": log_level}
        if lines:
            path = fast_lines(settings.lines_path, tmp / "lines.toml", **lines)
            self.env["CALLROUTER_LINES"] = str(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        host, port = self.settings.api_bind, self.settings.api_port
        if not wait_port_free(host, port, 5.0):
            raise SystemExit(f"API port {host}:{port} is taken (an engine left running?): not starting another")
        # Asterisk's record of earlier runs' calls (other benchmarks, the other path of this
        # one) would become tickets of this engine (it records trunk calls it never saw)
        from callrouter.calls.unseen import CEL_FILE
        from callrouter.provision.asterisk import log_dir_on_host

        cel = log_dir_on_host(self.settings) / CEL_FILE
        for path in (cel, cel.with_name(cel.name + ".importing")):
            path.unlink(missing_ok=True)
        # ended whatever happens next (an exception before the caller's try, a seat that
        # fails to bind): never an engine left running after the benchmark
        atexit.register(self.stop)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "run"], stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "event=reconciled" in self.log():
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"engine exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        self.stop()
        raise SystemExit("engine did not connect to ARI in 30 s")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def api(self, method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.settings.api_url}{path}", method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {self.settings.secret('api_token')}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ari_counts(self) -> tuple[int, int, dict[str, int], dict[str, int]]:
        """ARI requests and events so far (the engine's /metrics): totals, then by kind / type."""
        req = urllib.request.Request(f"{self.settings.api_url}/metrics",
                                     headers={"Authorization": f"Bearer {self.settings.secret('api_token')}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
        found: dict[str, dict[str, int]] = {"requests": {}, "events": {}}
        for m in re.finditer(r'^callrouter_ari_(requests|events)_total\{\w+="([^"]*)"\} (\d+)$', text, re.MULTILINE):
            found[m.group(1)][m.group(2)] = int(m.group(3))
        return sum(found["requests"].values()), sum(found["events"].values()), found["requests"], found["events"]

    def login(self, *seats: str, action: str = "login") -> None:
        for seat in seats:
            status, body = self.api("POST", f"/api/seats/{seat}/{action}")
            if status != 200:
                raise SystemExit(f"{action} {seat}: {status} {body}")

    def status(self) -> dict[str, Any]:
        status, body = self.api("GET", "/api/status")
        if status != 200:
            raise SystemExit(f"status: {status} {body}")
        return body

    def stop(self) -> None:
        """SIGTERM; SIGKILL if the engine outlives 15 s (reported); then its port must be free."""
        if self.proc is None or self.proc.returncode is not None:
            return
        ended = end_process(self.proc, wait_s=15.0)
        if ended.killed:
            print(f"engine pid {self.proc.pid} outlived SIGTERM by 15 s: killed (log {self.log_path})", file=sys.stderr)
        if not wait_port_free(self.settings.api_bind, self.settings.api_port, 5.0):
            print(f"API port {self.settings.api_bind}:{self.settings.api_port} still taken after the engine ended",
                  file=sys.stderr)


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (as callrouter.sim.trunk.percentile), unrounded."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def per_call(before: tuple[int, int, dict[str, int], dict[str, int]],
             after: tuple[int, int, dict[str, int], dict[str, int]], calls: int) -> str:
    """ARI requests and events per call between two ``ari_counts``, with the main kinds."""
    n = max(1, calls)
    req = {k: v - before[2].get(k, 0) for k, v in after[2].items() if v - before[2].get(k, 0)}
    ev = {k: v - before[3].get(k, 0) for k, v in after[3].items() if v - before[3].get(k, 0)}
    top = lambda d: ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
    return (f"ARI per call ({calls}): requests {(after[0] - before[0]) / n:.2f} [{top(req)}]; "
            f"events {(after[1] - before[1]) / n:.2f} [{top(ev)}]")
