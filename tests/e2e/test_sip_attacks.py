"""Attack tools against the real Asterisk, from a loopback address that is not the trunk.

Debian's sipvicious scans (svmap), enumerates accounts (svwar), and guesses a seat's
password (svcrack); SIPp sends an INVITE as if it were the carrier. None of it may reach
the engine (no channel in Stasis, no ticket), nothing may tell a seat's name from a
made-up one, and every failed or challenged attempt shows in /metrics.

Debian's sipvicious 0.3.3 svwar and svcrack accept ``-b`` but never pass it on (svmap
does): they run through a small shim that makes their unbound socket bind to the
scanner's address, the way their own ``-b`` would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import EngineFactory

SCANNER = "127.0.44.4"  # a loopback address that is not the trunk's

BIND_SHIM = """
import os, runpy, socket, sys
src, tool = sys.argv[1], os.path.realpath(sys.argv[2])
_bind = socket.socket.bind
def bind(self, address):
    if isinstance(address, tuple) and address[0] in ("", "0.0.0.0"):
        address = (src, *address[1:])
    return _bind(self, address)
socket.socket.bind = bind
sys.path.insert(0, os.path.dirname(tool))
sys.argv = [tool, *sys.argv[3:]]
runpy.run_path(tool, run_name="__main__")
"""


def _tool(name: str) -> str:
    try:
        prov.ensure_host_packages([name])
    except prov.ProvisionError as exc:
        missing_part(f"sipvicious ({name}): {exc}")
    found = shutil.which(name)
    if found is None:
        missing_part(f"sipvicious ({name}) not found after installing it")
    return str(found)


def _run(cmd: list[str], home: Path) -> str:
    # sipvicious keeps sessions under $HOME/.sipvicious: never the real home
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)},
                          cwd=home, check=False)
    return proc.stdout + proc.stderr


def _interpreter(tool: str) -> str:
    shebang = Path(tool).read_text().splitlines()[0]
    return shebang[2:].strip() if shebang.startswith("#!") else sys.executable


def _security_counts(engines: EngineFactory) -> dict[str, int]:
    req = urllib.request.Request(f"{engines.settings.api_url}/metrics",
                                 headers={"Authorization": f"Bearer {engines.settings.secret('api_token')}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read().decode()
    assert "callrouter_sip_security_log_readable 1" in text, text[-2000:]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'callrouter_sip_security_events_total\{event="(\w+)"\} (\d+)', text)}


def _stasis_channels(engines: EngineFactory) -> list[str]:
    s = engines.settings
    req = urllib.request.Request(f"{s.ari_url}/applications/{s.ari_app}")
    auth = f"{s.ari_user}:{s.ari_password}".encode()
    import base64

    req.add_header("Authorization", "Basic " + base64.b64encode(auth).decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return list(json.loads(resp.read())["channel_ids"])


def test_scans_enumeration_cracking_and_a_foreign_invite_reach_nothing_and_are_counted(
        engines: EngineFactory, tmp_path: Path) -> None:
    s = engines.settings
    assert SCANNER not in s.trunk_ips and SCANNER != s.sip_bind
    svmap, svwar, svcrack = _tool("svmap"), _tool("svwar"), _tool("svcrack")
    engine = engines.start()
    before = _security_counts(engines)
    host, port = s.sip_bind, str(s.sip_port)
    shim = tmp_path / "bind_shim.py"
    shim.write_text(BIND_SHIM)

    # svmap finds the PBX (it answers OPTIONS), and nothing more
    out = _run([svmap, "-b", SCANNER, "-p", port, host], tmp_path)
    assert f"{host}:{port}" in out, out

    # svwar: a real seat and made-up names get the same answer, so nothing is enumerated
    names = tmp_path / "names.txt"
    names.write_text("s110-01\ns96345-01\nadmin\n100\nnobody-here\n")
    out = _run([_interpreter(svwar), str(shim), SCANNER, svwar, "-x", SCANNER, "-p", port, "-d", str(names),
                "-m", "REGISTER", "--force", host], tmp_path)
    assert "found nothing" in out and "s110-01 " not in out.split("found nothing")[-1], out
    out = _run([_interpreter(svwar), str(shim), SCANNER, svwar, "-x", SCANNER, "-p", port, "-e", "100-120",
                "-m", "INVITE", "--force", host], tmp_path)
    assert "| 1" not in out, out  # no extension listed as found

    # svcrack against a seat: no password guessed
    words = tmp_path / "words.txt"
    guesses = ["1234", "password", "s110-01", "admin", "callrouter", "asterisk"]
    words.write_text("".join(f"{g}\n" for g in guesses))
    out = _run([_interpreter(svcrack), str(shim), SCANNER, svcrack, "-x", SCANNER, "-p", port, "-u", "s110-01",
                "-d", str(words), host], tmp_path)
    assert "found nothing" in out, out

    # an INVITE from the scanner's address, as if it were the carrier: refused before any channel
    report = run_calls(s, [CallSpec("110", "13900000066", 2.0)], rate=1, local_ip=SCANNER)
    assert [c.outcome for c in report.calls] != ["completed"], report.to_json()
    assert not any(c.ok for c in report.calls), report.to_json()

    assert _stasis_channels(engines) == []
    assert "event=call_arrived" not in engine.log()
    def guesses_counted() -> dict[str, int]:
        counts = _security_counts(engines)
        enough = counts.get("ChallengeResponseFailed", 0) >= before.get("ChallengeResponseFailed", 0) + len(guesses)
        return counts if enough else {}
    after = wait_for(guesses_counted, 10, "the failed password guesses in /metrics")
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(f"security events counted: {grew}; foreign INVITE: {[c.outcome for c in report.calls]}")
    assert grew.get("InvalidAccountID", 0) >= 1, grew  # names no account has
    assert grew.get("ChallengeSent", 0) >= 5, grew  # every REGISTER/INVITE challenged
    # the CEL import ran at connect and again: still nothing to record
    engine.stop()
    store = engines.store()
    try:
        assert store.count() == 0, store.list()
    finally:
        store.close()
    target = prov.select_target(s)
    assert "0 active channels" in prov.rx(target, "core show channels count").stdout
