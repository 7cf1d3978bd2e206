"""Least privilege on the real system: Asterisk runs under an id no other host account has,
and every file holding callers' data is readable by its owner (and Asterisk's group
where the engine must read what Asterisk writes) only."""

from __future__ import annotations

import stat
from pathlib import Path

from callrouter.calls.unseen import CEL_FILE
from callrouter.provision import asterisk as prov
from callrouter.sim.trunk import CallSpec, run_calls
from tests.conftest import wait_for
from tests.e2e.conftest import EngineFactory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ids(status: str, key: str) -> set[int]:
    line = next(x for x in status.splitlines() if x.startswith(f"{key}:"))
    return {int(v) for v in line.split()[1:]}


def test_asterisk_has_an_id_of_its_own_and_caller_data_files_are_private(engines: EngineFactory) -> None:
    s = engines.settings
    target = prov.select_target(s)
    pid = prov.pid(target)
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    uids, gids = _ids(status, "Uid"), _ids(status, "Gid")
    assert 0 not in uids and 0 not in gids, "Asterisk never runs as root"
    if target.mode == "chroot":
        host_users = prov.parse_ids(Path("/etc/passwd").read_text())
        host_groups = prov.parse_ids(Path("/etc/group").read_text())
        (uid,) = uids
        (gid,) = gids
        # the id is the reserved host account's and nobody else's
        assert [n for n, i in host_users.items() if i == uid] == [prov.HOST_ACCOUNT]
        assert [n for n, i in host_groups.items() if i == gid] == [prov.HOST_ACCOUNT]
        assert prov.parse_ids(target.host_path("/etc/passwd").read_text())["asterisk"] == uid

    # a caller held by the dialplan (no engine yet) leaves Asterisk's record of the call
    report = run_calls(s, [CallSpec("119", "13900000077", 0.5)], rate=1)
    assert report.calls[0].ok, report.to_json()
    logs = prov.log_dir_on_host(s)
    cel = logs / CEL_FILE
    wait_for(cel.exists, 5, "Asterisk's CEL file")
    # the caller has hung up before the engine returns once Asterisk recorded the end: an
    # engine that took the file before that would read the end only at its next import
    wait_for(lambda: "CHAN_END" in cel.read_text(), 10, "Asterisk to record the caller's hang-up")
    assert _mode(logs) & 0o027 == 0 and _mode(cel.parent) & 0o027 == 0
    for path in (cel, logs / "security.log", logs / "messages.log"):
        assert _mode(path) & 0o137 == 0, f"{path}: {oct(_mode(path))}"  # at most 0640

    # the engine records the call and keeps its own files private
    engine = engines.start()
    rows = wait_for(lambda: engines.closed_tickets(1), 20, "the held caller's ticket")
    assert rows[0]["caller"] == "13900000077"
    engine.stop()
    tmp = engines.tmp
    for name in ("tickets.sqlite3", "state.json", "cel-import.json"):
        assert _mode(tmp / name) == 0o600, f"{name}: {oct(_mode(tmp / name))}"
