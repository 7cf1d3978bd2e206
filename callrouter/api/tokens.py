"""API tokens with roles, stored hashed.

`callrouter tokens create --role agent --seat s110-01` prints a new token once and keeps
only its SHA-256 in ``<home>/tokens.json`` (mode 0600). Roles:

    agent       its own seat (log in/out, pause, resume) and the calls on that seat
    supervisor  reads everything, controls every seat and the lines' runtime seats
    admin       all of that, and reloads the configuration (lines, number plan)
    unit        one dispatch unit (``--unit <id>``): its own orders (read, acknowledge,
                report) and their events on the feed; nothing else
    intake      a channel system (``--name``: the web form, the WeChat account, the forum):
                ``POST /api/intake`` (and the OpenAPI document) only, a citizen's request into a ticket

The first three form a ladder (each may do what the one below may). A role outside it
reaches only its own endpoints (``OWN_PATHS``), whatever else the API has.

The bootstrap token in secrets.json (``api_token``, used by the CLI) is an admin token.
The engine re-reads the file when it changes, so a token works as soon as it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

ROLES = ("agent", "supervisor", "admin")  # the ladder
# roles outside the ladder: the paths (and what lies under them) each may reach
OWN_PATHS: dict[str, tuple[str, ...]] = {
    "unit": ("/api/orders", "/api/events", "/api/me", "/api/openapi.json"),
    "intake": ("/api/intake", "/api/me", "/api/openapi.json"),  # its system integrates from the document
}
ALL_ROLES = (*ROLES, *OWN_PATHS)
UNIT_ID_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")  # a unit's slug in queues/units.toml (dispatch.units.SLUG)
MAX_TOKEN = 256  # ours are 43 characters (token_urlsafe(32)); the bootstrap one similar


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    role: str
    seat: str | None = None
    name: str = ""
    unit: str | None = None  # a unit token's unit

    def at_least(self, role: str) -> bool:
        """On the ladder at ``role`` or above; a role outside the ladder never is."""
        return self.role in ROLES and ROLES.index(self.role) >= ROLES.index(role)

    def may_reach(self, path: str) -> bool:
        """Whether the token may call ``path`` at all (each route then checks its own rule):
        the ladder's roles everything, the others only their own paths."""
        if self.role in ROLES:
            return True
        return any(path == own or path.startswith(own + "/") for own in OWN_PATHS.get(self.role, ()))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, path: Path, bootstrap_admin: str) -> None:
        self.path = path
        self._bootstrap = bootstrap_admin
        self._mtime = -1.0
        self._by_digest: dict[str, Principal] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._by_digest, self._mtime = {}, -1.0
            return
        if mtime == self._mtime:
            return
        data = json.loads(self.path.read_text())
        self._by_digest = {d: Principal(v["role"], v.get("seat"), v.get("name", ""), v.get("unit"))
                           for d, v in data.items()}
        self._mtime = mtime

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``; None for anything that is not one of our tokens
        (empty, too long, not printable ASCII: never an exception, so never a 500)."""
        if not token or len(token) > MAX_TOKEN or not (token.isascii() and token.isprintable()):
            return None
        if hmac.compare_digest(token, self._bootstrap):
            return Principal("admin", None, "bootstrap")
        self._load()
        return self._by_digest.get(_digest(token))

    def create(self, role: str, seat: str | None = None, name: str = "", unit: str | None = None) -> str:
        if role not in ALL_ROLES:
            raise TokenError(f"role {role!r}: use one of {', '.join(ALL_ROLES)}")
        if role == "agent" and not seat:
            raise TokenError("an agent token needs --seat: it acts only on its own seat")
        if role == "unit" and not (unit and UNIT_ID_RE.fullmatch(unit)):
            raise TokenError("a unit token needs --unit <unit id> (a slug of queues/units.toml): "
                             "it acts only on its own unit's orders")
        if role != "unit" and unit:
            raise TokenError("--unit is for --role unit only")
        if role == "intake" and not name.strip():
            raise TokenError("an intake token needs --name <the channel system that sends requests, e.g. web-form>")
        token = secrets.token_urlsafe(32)
        data: dict[str, dict[str, object]] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
        data[_digest(token)] = {"role": role, "seat": seat, "name": name, "created": time.time(),
                                **({"unit": unit} if unit else {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=1))
        tmp.replace(self.path)
        return token
