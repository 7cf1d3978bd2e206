"""The container image, built and run (issue 12 item 4): the repository's Dockerfile built
with podman on a debootstrap'd Debian sid base (callrouter.provision.image), run with the
host's network; a SIPp call from the host to the container's Asterisk is answered and
leaves a ticket; `podman stop` ends Asterisk and the engine within 10 s, cleanly, and no
process of the container remains.

The container binds its own address (CALLROUTER_CONTAINER_BIND, default 127.0.1.42) and
RTP ports, so a host Asterisk of the other tests may run beside it. About 1.5 minutes with
the base kept from an earlier run (under <home>/podman), about 3 with the base made first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callrouter.config import Settings
from callrouter.provision import asterisk as prov
from callrouter.provision import image
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import missing_part, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
BIND = os.environ.get("CALLROUTER_CONTAINER_BIND", "127.0.1.42")
RTP = (47500, 47999)
TAG = "localhost/callrouter:test"
STOP_BOUND_S = 10.0


@pytest.fixture(scope="module")
def podman(settings: Settings) -> image.Podman:
    if os.geteuid() != 0:
        missing_part("root, for rootful podman")
    missing = image.podman_missing()
    if missing:
        missing_part(f"{missing} (Debian's podman and runc; scripts/test.sh installs them)")
    try:
        prov.ensure_host_packages(["sipp", "debootstrap"])
    except prov.ProvisionError as exc:
        missing_part(f"SIPp or debootstrap: {exc}")
    podman = image.podman_for(settings)
    podman.configure()
    # a run killed before its cleanup left its container (holding the SIP address): gone
    left = podman.run("ps", "--all", "--quiet", "--filter", "name=^callrouter-test-", check=False).stdout.split()
    if left:
        podman.run("rm", "--force", "--time", "0", *left, check=False, timeout=120)
    return podman


@pytest.fixture(scope="module")
def built(settings: Settings, podman: image.Podman, tmp_path_factory: pytest.TempPathFactory) -> image.BuildReport:
    log_path = tmp_path_factory.mktemp("image") / "build.log"
    report = image.build(settings, REPO, tag=TAG, podman=podman, log_path=log_path)
    print(f"\nimage: {json.dumps(report.to_json())}")
    return report


@dataclasses.dataclass
class Container:
    podman: image.Podman
    name: str
    state: Path
    settings: Settings  # the container's addresses, as seen from the host
    started_at: float

    def logs(self) -> str:
        proc = self.podman.run("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def inspect(self, field: str) -> str:
        return self.podman.run("inspect", "--format", "{{" + field + "}}", self.name).stdout.strip()

    def api(self, path: str) -> tuple[int, Any]:
        try:  # the engine writes its token into the state volume when it starts
            token = json.loads((self.state / "secrets.json").read_text())["api_token"]
        except (OSError, ValueError, KeyError):
            return 0, None
        req = urllib.request.Request(f"{self.settings.api_url}{path}", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None


@pytest.fixture
def container(settings: Settings, podman: image.Podman, built: image.BuildReport,
              tmp_path: Path) -> Iterator[Container]:
    name = f"callrouter-test-{secrets.token_hex(3)}"
    state = tmp_path / "state"
    state.mkdir()
    env = {"CALLROUTER_SIP_BIND": BIND, "CALLROUTER_HTTP_BIND": BIND, "CALLROUTER_API_BIND": BIND,
           "CALLROUTER_RTP_START": str(RTP[0]), "CALLROUTER_RTP_END": str(RTP[1]),
           "CALLROUTER_REDIS_PREFIX": f"crtest-{secrets.token_hex(4)}"}
    seen = dataclasses.replace(settings, home=state, sip_bind=BIND, http_bind=BIND, api_bind=BIND, sip_port=5060,
                               api_port=8080)
    started = time.monotonic()
    podman.run("run", "--detach", "--name", name, "--network", "host", "--volume", f"{state}:/var/lib/callrouter",
               *[a for k, v in env.items() for a in ("--env", f"{k}={v}")], built.image, timeout=60)
    try:
        yield Container(podman, name, state, seen, started)
    finally:
        podman.run("rm", "--force", "--time", "0", name, check=False, timeout=60)


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in(namespace: str) -> dict[int, str]:
    """pid -> command line of every host process in that PID namespace."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and pid_namespace(int(proc.name)) == namespace:
            try:
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def test_image_answers_a_call_and_stops_within_10_s(container: Container, built: image.BuildReport) -> None:
    # the engine's API answers once Asterisk is up and the engine connected to it
    try:
        wait_for(lambda: container.api("/api/status")[0] == 200 and "event=reconciled" in container.logs(), 90,
                 "the container's engine")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.logs()[-3000:]}") from None
    ready_s = time.monotonic() - container.started_at
    report = run_calls(container.settings, [CallSpec("110", "13800000001", 2.0)], rate=1.0, local_ip="127.0.0.1")
    assert report.answered == 1 and report.failed == 0, (report.to_json(), container.logs()[-3000:])
    # podman run -> the first call's 200 OK: the engine ready, then SIPp's INVITE->200
    answered_s = ready_s + report.rtt_ms[0] / 1000

    def ticket() -> list[dict[str, Any]]:
        status, rows = container.api("/api/tickets")
        return [r for r in rows or [] if r.get("ended_at")] if status == 200 else []

    rows = wait_for(ticket, 20, "the call's ticket, closed")
    assert [(r["line"], r["dialled"], r["caller"]) for r in rows] == [("110", "110", "13800000001")]
    figures = {"image_mb": round(built.size_bytes / 1e6), "build_s": round(built.build_s, 1),
               "base_made_s": built.base_made_s and round(built.base_made_s, 1), "run_to_ready_s": round(ready_s, 1),
               "run_to_first_answer_s": round(answered_s, 1)}

    # what runs in the container: tini, serve, the engine, Asterisk
    namespace = pid_namespace(int(container.inspect(".State.Pid")))
    assert namespace is not None
    inside = processes_in(namespace).values()
    assert any("/usr/sbin/asterisk" in cmd for cmd in inside), inside
    assert any("callrouter.cli run" in cmd for cmd in inside), inside
    assert any(cmd.startswith("/usr/bin/tini") for cmd in inside), inside

    started = time.monotonic()
    container.podman.run("stop", "--time", str(int(STOP_BOUND_S)), container.name, timeout=60)
    took = time.monotonic() - started
    logs = container.logs()
    assert took < STOP_BOUND_S, f"podman stop took {took:.1f} s\n{logs[-3000:]}"
    assert container.inspect(".State.ExitCode") == "0", logs[-3000:]
    assert "event=engine_stopped" in logs and "event=serve_asterisk_stopped was_running=True" in logs, logs[-3000:]
    assert processes_in(namespace) == {}
    # the figures in artifacts/ (record_property is refused by the suite's xunit2 junit file)
    figures["stop_s"] = round(took, 1)
    print(f"\ncontainer: {json.dumps(figures)}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "container-figures.json").write_text(json.dumps(figures, indent=1) + "\n")
