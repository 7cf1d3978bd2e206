"""schemathesis against the running engine's /api/openapi.json, once with each role's token
(agent, supervisor, admin, and a unit's and an intake system's outside the ladder): every operation and method of the document, well-formed and
malformed input, with a caller waiting and a closed ticket to act on. No answer may be a
5xx, and every answer must match the document (status codes, content types, schemas).

Bounded: at most MAX_EXAMPLES cases per operation and phase, one worker, a fixed seed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from callrouter.sim.trunk import CallSpec
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import EngineFactory
from tests.e2e.test_roles_feed import _token

MAX_EXAMPLES = 20
# The event feed is a WebSocket: a plain GET is refused (400) whatever its parameters, so
# "valid data must be accepted" cannot hold there; every other check does.
CONFIG = """
[[operations]]
include-path = "/api/events"
checks.positive_data_acceptance.enabled = false
"""


def _fuzz(engines: EngineFactory, tmp: Path, role: str, token: str) -> str:
    st = Path(sys.executable).parent / "schemathesis"
    if not st.exists():
        missing_part("schemathesis (pip install -e '.[test]')")
    config = tmp / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [str(st), "--config-file", str(config), "run", f"{engines.settings.api_url}/api/openapi.json",
           "-H", f"Authorization: Bearer {token}", "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
           "--seed", "20261201", "--no-color", "--generation-database", "none", "--request-timeout", "10"]
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis as {role} found problems:\n{out[-12000:]}"
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) > 200, f"as {role}, too few cases ran:\n{out[-3000:]}"
    return out


def test_schemathesis_finds_no_5xx_and_no_mismatch_for_any_role(engines: EngineFactory, tmp_path: Path) -> None:
    engines.use_lines(wrap_up_s=1)
    engine = engines.start()
    # something to act on: a closed ticket, and a caller waiting in the 110 queue
    thread, _ = engines.calls_in_background([CallSpec("119", "13960000001", 0.5), CallSpec("119", "13960000002", -1)], 2)
    wait_for(lambda: engines.api("GET", "/api/calls")[1], 15, "a caller waiting")
    wait_for(lambda: engines.api("GET", "/api/tickets?limit=1")[1], 15, "a ticket")
    tokens = {"agent": _token(engines, "--role", "agent", "--seat", "s110-01"),
              "supervisor": _token(engines, "--role", "supervisor"),
              "admin": _token(engines, "--role", "admin"),
              # outside the ladder: 403 on every path but its own (documented on every operation)
              "unit": _token(engines, "--role", "unit", "--unit", "fire_zhukou"),
              # a channel system: POST /api/intake (a ticket per well-formed request), /api/me, this document
              "intake": _token(engines, "--role", "intake", "--name", "fuzz-web-form")}
    for role, token in tokens.items():
        (tmp_path / role).mkdir()
        _fuzz(engines, tmp_path / role, role, token)
    log = engine.log()
    assert "Error handling request" not in log and "Traceback" not in log, log[-5000:]
    assert engine.proc.poll() is None, "the engine survived the fuzzing"
    thread.join(timeout=0)  # the waiting caller is hung up by the fixture (or by the fuzzer's DELETE)
