"""What Asterisk still holds after a scenario: bridges and channels, asked of ARI.

Used after every e2e test and by the benchmarks: the engine's bridges and channels must
match its live calls. Once the calls are gone, what may stay is each line's spare holding
bridge (empty, kept for reuse: at most ``ceil(waiting / shard) + 1`` per line, so one at
rest) with the ``Announcer/ARI_MOH`` channel that plays its music. Anything else of ours
(a mixing bridge, a surplus holding bridge, a seat leg, a caller's channel) is a leak.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from callrouter.calls.holding import hold_line
from callrouter.config import Settings

BRIDGE_PREFIX = "callrouter-"


@dataclass
class PbxResources:
    bridges: list[dict[str, Any]] = field(default_factory=list)  # every bridge Asterisk holds
    channels: list[dict[str, Any]] = field(default_factory=list)  # every channel

    @property
    def ours(self) -> list[dict[str, Any]]:
        return [b for b in self.bridges if str(b.get("id", "")).startswith(BRIDGE_PREFIX)]

    @property
    def holding(self) -> list[dict[str, Any]]:
        return [b for b in self.ours if hold_line(str(b["id"])) is not None]

    @property
    def announcers(self) -> list[dict[str, Any]]:
        return [c for c in self.channels if str(c.get("name", "")).startswith("Announcer/ARI_MOH")]

    def summary(self) -> dict[str, int]:
        return {"bridges": len(self.bridges), "callrouter_bridges": len(self.ours), "holding_bridges": len(self.holding),
                "channels": len(self.channels), "announcer_channels": len(self.announcers),
                "other_channels": len(self.channels) - len(self.announcers)}


def _ari_get(settings: Settings, path: str, timeout: float) -> Any:
    token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
    req = urllib.request.Request(f"{settings.ari_url}{path}", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"[]")


def _channels_cli(settings: Settings, target: Any = None) -> list[dict[str, Any]]:
    """Every channel, from ``core show channels concise``: ARI's GET /channels leaves out
    the Announcer channels that play a bridge's music, so ask the CLI (of ``target``, a
    cluster node's; default: the settings' Asterisk)."""
    from callrouter.provision import asterisk as prov

    out = prov.rx(target or prov.select_target(settings), "core show channels concise").stdout
    channels = []
    for line in out.splitlines():
        f = line.split("!")
        if len(f) >= 14:
            channels.append({"name": f[0], "state": f[4], "app": f[5], "bridge": f[12], "id": f[13]})
    return channels


def pbx_resources(settings: Settings, timeout: float = 10.0, target: Any = None) -> PbxResources:
    return PbxResources(bridges=list(_ari_get(settings, "/bridges", timeout)), channels=_channels_cli(settings, target))


def leftover_problems(res: PbxResources, *, shard_size: int = 40, allow_channels: int = 0,
                      allow_bridges: int = 0) -> list[str]:
    """What Asterisk holds beyond the rule above, as readable lines ([] when clean).

    ``allow_channels``/``allow_bridges``: what a test leaves on purpose (callers still
    held, say) beyond the spare holding bridges.
    """
    problems: list[str] = []
    by_line: dict[str, list[dict[str, Any]]] = {}
    for bridge in res.holding:
        by_line.setdefault(str(hold_line(str(bridge["id"]))), []).append(bridge)
    announcer_ids = {str(c["id"]) for c in res.announcers}
    for line, bridges in sorted(by_line.items()):
        waiting = sum(1 for b in bridges for c in b.get("channels") or [] if c not in announcer_ids)
        bound = math.ceil(waiting / shard_size) + 1
        if len(bridges) > bound:
            ids = sorted((str(b["id"]) for b in bridges), key=lambda b: int(b.rsplit("-", 1)[1]))
            problems.append(f"line {line}: {len(bridges)} holding bridges for {waiting} waiting (at most {bound}): "
                            + ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else ""))
    extra_bridges = [b for b in res.ours if hold_line(str(b["id"])) is None]
    if len(extra_bridges) > allow_bridges:
        problems.append(f"{len(extra_bridges)} callrouter bridges besides holding ones (allowed {allow_bridges}): "
                        + ", ".join(f"{b['id']}({len(b.get('channels') or [])})" for b in extra_bridges[:10]))
    # an announcer is a pair of channels (;1 and ;2), one pair per holding bridge playing music
    pairs = {str(c["name"]).split(";")[0] for c in res.announcers}
    if len(pairs) > len(res.holding):
        problems.append(f"{len(pairs)} Announcer/ARI_MOH channel pairs for {len(res.holding)} holding bridges")
    others = [c for c in res.channels if c not in res.announcers]
    if len(others) > allow_channels:
        problems.append(f"{len(others)} channels remain (allowed {allow_channels}): "
                        + ", ".join(f"{c.get('name')}[{c.get('state')}]" for c in others[:10]))
    return problems
