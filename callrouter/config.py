"""Typed settings: defaults <- file <- environment.

Every setting has a default that is safe on a single machine: everything listens on
loopback, secrets are generated on first use and kept under the state directory
(never in git). A TOML file (``--config FILE`` or ``$CALLROUTER_CONFIG``) overrides
defaults; ``CALLROUTER_<FIELD>`` environment variables override both.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(Exception):
    """A setting is malformed; the message names the source and the fix."""


# the shipped data: the checkout's top-level directories, in an installed wheel
# callrouter/data/<dir> (setup.py maps them there at build time)
DATA_DIRS = ("asterisk-conf", "ivr_prompts", "kamailio-conf", "queues", "sip-sim")


def _default_data_dir() -> Path:
    """Where the shipped data is when no setting names it (``data_dir`` or
    ``CALLROUTER_DATA_DIR`` come first; single files such as ``numberplan`` override that)."""
    # a source checkout (editable install, CI, the demo) reads the directories beside the
    # package, so an edit there takes effect without a rebuild
    repo = PACKAGE_DIR.parent
    if all((repo / name).is_dir() for name in DATA_DIRS):
        return repo
    # an installed wheel carries them in the package (a zipped install, which has no
    # directory to hand to Asterisk or SIPp, is not supported)
    packaged = importlib.resources.files("callrouter") / "data"
    return packaged if isinstance(packaged, Path) else PACKAGE_DIR / "data"


def _default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/callrouter")
    return Path.home() / ".local" / "state" / "callrouter"


@dataclass
class Settings:
    # where generated state lives: secrets, the Asterisk chroot, the SQLite ticket file
    home: Path = field(default_factory=_default_home)
    # where the shipped data lives: queues/, asterisk-conf/, kamailio-conf/, ivr_prompts/, sip-sim/
    data_dir: Path = field(default_factory=_default_data_dir)

    # Asterisk: "auto" uses a host Asterisk >= 20 if installed, else the Debian sid chroot
    asterisk_mode: str = "auto"
    asterisk_root: Path | None = None  # chroot directory; default home/asterisk-root
    apt_mirror: str = ""  # for debootstrap; default taken from the host's apt sources
    sip_bind: str = "127.0.0.1"
    sip_port: int = 5060
    rtp_start: int = 10000
    rtp_end: int = 20000
    http_bind: str = "127.0.0.1"
    http_port: int = 8088
    ari_app: str = "callrouter"
    ari_user: str = "callrouter"
    # send ARI REST requests over the events WebSocket (Asterisk 20.14/22.4+) instead of
    # one HTTP request each: far less CPU per call in a storm
    ari_rest_over_ws: bool = True
    # source addresses identifying the carrier trunk; the simulator uses 127.0.0.1
    trunk_ips: tuple[str, ...] = ("127.0.0.1",)
    # A second trunk that reaches only a plain dialplan Answer(), for the latency
    # baseline of the benchmark. Empty: not rendered at all.
    bench_trunk_ip: str = ""
    # seconds the dialplan holds a caller before retrying Stasis when the engine is away
    fallback_hold_s: int = 2

    # Several engines on one Asterisk (callrouter.ha). Empty (the default): one engine, and
    # the dialplan hands every call to Stasis(ari_app). A regular expression (no comma):
    # the dialplan offers each call with StasisBroadcast to every ARI application whose
    # name matches it, and each engine runs with its own ari_app matching it. One engine at
    # a time holds the lease ``<redis_prefix>:ha:lease`` (ha_lease_ttl_ms, renewed every
    # third of it) and claims the calls and runs the queues; the others stand by and take
    # over when it dies. A call nobody claims within ha_claim_timeout_ms goes to the
    # dialplan's fallback hold and is offered again after fallback_hold_s.
    ha_app_filter: str = ""
    ha_claim_timeout_ms: int = 500
    ha_lease_ttl_ms: int = 3000

    # `callrouter cluster up` (callrouter.provision.cluster): Kamailio on sip_bind:sip_port
    # (where the trunk sends) in front of Asterisk nodes on cluster_nodes (empty: the
    # cluster_size addresses after sip_bind: 127.0.0.2, 127.0.0.3 ...). Kamailio probes the
    # nodes every cluster_probe_s and gives a node up after cluster_sip_timer_s without a
    # reply (the call goes to the next one); a source other than the trunk and the nodes
    # sending more than cluster_pike_limit requests in 2 s is dropped (pike).
    cluster_size: int = 2
    cluster_nodes: tuple[str, ...] = ()
    cluster_probe_s: int = 2
    cluster_sip_timer_s: int = 2
    cluster_pike_limit: int = 16
    # `callrouter run` drives every node of the cluster these settings describe (one ARI
    # connection per node; seats' presence from Kamailio's registrar) instead of the one
    # Asterisk at ari_url; a node whose connection stays down cluster_node_lost_s is dead
    # (its calls are counted lost, its seats freed)
    cluster_engine: bool = False
    cluster_node_lost_s: int = 3
    # where the engine reads each node's call recordings (MixMonitor's directory on that
    # node): "{node}" becomes the node's name ("/mnt/rec-{node}"). Empty: the node's own
    # directory on this machine (the chroot nodes of `cluster up`); nodes on other machines
    # need theirs mounted here (read-write: the engine moves each file out)
    cluster_recording_dir: str = ""
    # where the engine reads each node's Asterisk log directory (its CEL file: tickets of
    # calls the engine never saw): <cluster_log_root>/<node name>, e.g. each node's
    # /var/log/asterisk mounted there read-write from its machine. Empty: the nodes' own
    # log directories on this machine (`cluster up` on one machine)
    cluster_log_root: Path | None = None

    numberplan: Path | None = None  # default data_dir/queues/numberplan.csv
    categories: Path | None = None  # default data_dir/queues/categories.toml (Chinese labels)
    # Dispatch (callrouter.dispatch): the units that act on tickets (default
    # data_dir/queues/units.toml); an intake request of the same contact and category within
    # intake_window_s links to the open ticket. dispatch_ack_max_s > 0 caps every unit's time
    # to acknowledge (drills, tests). Webhooks: each attempt times out after
    # dispatch_webhook_timeout_s; a failing endpoint is retried with backoff up to
    # dispatch_retry_max_s apart, forever; a dispatcher holds a claimed delivery or order for
    # dispatch_lease_s (another takes it over after that, e.g. after kill -9).
    units: Path | None = None
    intake_window_s: int = 86400
    dispatch_ack_max_s: int = 0
    dispatch_webhook_timeout_s: int = 10
    dispatch_retry_max_s: int = 300
    dispatch_lease_s: int = 60
    lines: Path | None = None  # default data_dir/queues/lines.toml
    db_url: str = ""  # default sqlite under home
    redis_url: str = "redis://127.0.0.1:6379/0"
    # every Redis key the engine writes starts with this (state, the ticket stream ...)
    redis_prefix: str = "callrouter"
    state_file: Path | None = None  # default home/state.json: recovery when Redis is away
    spool_file: Path | None = None  # default home/tickets-spool.jsonl: ticket changes while the DB is away
    # Asterisk's record of every trunk call (CEL) is read into tickets for calls the engine
    # never saw at every (re)connect and this often (seconds); what is read is kept in
    # cel_state_file (default home/cel-import.json) until the call ends
    cel_import_s: int = 30
    cel_state_file: Path | None = None
    # the dispatch stream keeps events at least this long (then trimmed, MINID ~), and at
    # most about stream_maxlen of them (MAXLEN ~ on every XADD; 0: no length cap)
    stream_retention_s: int = 86400
    stream_maxlen: int = 1_000_000
    # outbox rows already on the stream are deleted this long after they were sent
    outbox_retention_s: int = 86400
    # the relay trims, reports groups behind the trim point and purges this often
    housekeeping_s: int = 30
    # below 100 ticket changes/s the ticket writer starts commits at least this far apart
    # (milliseconds; a change after a quiet spell is written at once): each commit costs the
    # engine ~3 ms of CPU, so a shorter gap trades CPU for ticket change -> stream latency
    # (p99 about the gap plus a few ms; docs/BENCHMARKS.md). 30 gives p99 ~35-40 ms at 50
    # changes/s, at ~1.6x the engine + Asterisk CPU per answered call in a surge
    ticket_commit_gap_ms: int = 200

    api_bind: str = "127.0.0.1"
    api_port: int = 8080
    # where `callrouter staffing ... --publish` writes the plan the wallboard shows
    # (default home/staffing)
    staffing_dir: Path | None = None

    # What callers say while they wait, transcribed by vosk (callrouter.speech). Empty: off.
    # A path to an unpacked vosk model directory, never a model name (vosk would try to
    # download it and exit the process). speech_model_name: the model's name on tickets and
    # in keywords.toml (default: the directory's name).
    speech_model: Path | None = None
    speech_model_name: str = ""
    keywords: Path | None = None  # default data_dir/queues/keywords.toml
    # at most this many callers transcribed at once; more are not transcribed (counted)
    speech_max_concurrent: int = 4
    speech_workers: int = 2  # recogniser threads (CPU-bound): at most one per core
    # a caller is transcribed from the greeting on, for at most speech_max_s, and stops
    # speech_after_answer_s after a seat answers
    speech_max_s: int = 120
    speech_after_answer_s: int = 8
    # where the engine receives each transcribed caller's audio (RTP from Asterisk's
    # ExternalMedia channel, one UDP port per caller, chosen by the system); Asterisk is told
    # to send there, so it is one concrete address. Empty: http_bind (the engine beside its
    # one Asterisk, or any loopback address when the cluster's nodes are on this machine).
    # A cluster with nodes on other machines needs an address of the engine's machine that
    # every node reaches; a loopback one turns speech off at start, saying so.
    speech_rtp_bind: str = ""

    # Call recordings (callrouter.recordings): which lines record and for how long is in
    # lines.toml; kept files live under recordings_dir (default home/recordings) by date.
    # Below recording_min_free_mb free on Asterisk's recording directory or on
    # recordings_dir, calls go on unrecorded (counted, on the wallboard).
    recordings_dir: Path | None = None
    recording_min_free_mb: int = 256

    log_level: str = "INFO"

    # --- derived paths -------------------------------------------------------------
    @property
    def chroot(self) -> Path:
        return self.asterisk_root or (self.home / "asterisk-root")

    @property
    def numberplan_path(self) -> Path:
        return self.numberplan or (self.data_dir / "queues" / "numberplan.csv")

    @property
    def categories_path(self) -> Path:
        return self.categories or (self.data_dir / "queues" / "categories.toml")

    @property
    def units_path(self) -> Path:
        return self.units or (self.data_dir / "queues" / "units.toml")

    @property
    def lines_path(self) -> Path:
        return self.lines or (self.data_dir / "queues" / "lines.toml")

    @property
    def recordings_path(self) -> Path:
        return self.recordings_dir or (self.home / "recordings")

    @property
    def keywords_path(self) -> Path:
        return self.keywords or (self.data_dir / "queues" / "keywords.toml")

    @property
    def state_path(self) -> Path:
        return self.state_file or (self.home / "state.json")

    @property
    def spool_path(self) -> Path:
        return self.spool_file or (self.home / "tickets-spool.jsonl")

    @property
    def cel_state_path(self) -> Path:
        return self.cel_state_file or (self.home / "cel-import.json")

    @property
    def staffing_path(self) -> Path:
        return self.staffing_dir or (self.home / "staffing")

    @property
    def api_url(self) -> str:
        return f"http://{self.api_bind}:{self.api_port}"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'tickets.sqlite3'}"

    @property
    def ari_url(self) -> str:
        return f"http://{self.http_bind}:{self.http_port}/ari"

    @property
    def secrets_path(self) -> Path:
        return self.home / "secrets.json"

    # --- secrets: generated on first run, kept out of git ---------------------------
    def secrets(self) -> dict[str, str]:
        """Read the secrets file as it is: empty when there is none. Creates nothing.

        Holds the ARI password and one SIP password per seat. ``secret()`` generates a
        missing secret and writes the file, mode 0600.
        """
        path = self.secrets_path
        data: dict[str, str] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise ConfigError(f"{path}: not valid JSON ({exc}); fix it or move it away to regenerate "
                                  "every secret") from exc
        return data

    def secret(self, name: str) -> str:
        data = self.secrets()
        if name not in data:
            data[name] = secrets.token_urlsafe(24)
            path = self.secrets_path
            path.parent.mkdir(parents=True, exist_ok=True)
            # created 0600 from the first byte, under a name no other writer uses
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(data, indent=2, sort_keys=True))
            tmp.replace(path)
        return data[name]

    @property
    def ari_password(self) -> str:
        return self.secret("ari_password")


def _coerce(name: str, raw: Any, target: Any, source: str) -> Any:
    typ = str(target)
    try:
        if "tuple" in typ:
            if isinstance(raw, str):
                return tuple(x.strip() for x in raw.split(",") if x.strip())
            return tuple(str(x) for x in raw)
        if "Path" in typ:
            return Path(str(raw)) if raw not in ("", None) else None
        if typ == "int":
            return int(raw)
        if typ == "bool":
            return str(raw).lower() in ("1", "true", "yes", "on")
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: setting {name!r}: cannot read {raw!r} ({exc})") from exc


# TOML tables whose keys are settings with the table's name as prefix: [cluster] nodes = [...]
# is cluster_nodes
SECTIONS = ("cluster",)


def _flatten_sections(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            out.update({f"{key}_{inner}": v for inner, v in value.items()})
        else:
            out[key] = value
    return out


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    settings = Settings()
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    path = path or env.get("CALLROUTER_CONFIG")
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{p}: config file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
        for key, value in _flatten_sections(data).items():
            if key not in fields:
                raise ConfigError(f"{p}: unknown setting {key!r}; known: {', '.join(sorted(fields))}")
            setattr(settings, key, _coerce(key, value, fields[key].type, str(p)))
    for name, f in fields.items():
        var = f"CALLROUTER_{name.upper()}"
        if var in env:
            setattr(settings, name, _coerce(name, env[var], f.type, f"${var}"))
    return settings
