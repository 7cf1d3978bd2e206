"""`callrouter cluster up|down|status`: Kamailio in front of N Asterisk nodes.

One machine by default: Kamailio (Debian's ``kamailio``) on ``sip_bind:sip_port``, where
the trunk sends its calls, and the nodes on the next loopback addresses (127.0.0.2,
127.0.0.3 ...), all from the one Asterisk chroot the project builds, each node with its
own configuration and state directories (``asterisk -C``), its own ``systemname`` (channel
ids never collide), its own SIP address, RTP range (a share of rtp_start..rtp_end) and
ARI port (http_port + its number) with credentials generated on first run under
``home/cluster/<node>/`` (never in git).

Kamailio's configuration is rendered from ``kamailio-conf/`` with the same ``{{name}}``
placeholders as ``asterisk-conf/``: dispatcher with OPTIONS probing and failover to the
next node, registrar for the seats (the nodes dial seats through Kamailio), pike for
sources other than the trunk and the nodes, and INVITEs to the hotline numbers only from
the trunk's addresses.

Real machines: name the nodes' addresses (``cluster_nodes``) and Kamailio's
(``sip_bind``); ``cluster up`` on each machine starts the parts whose address is on that
machine. Provisioning, not the call path: blocking calls are fine here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callrouter.config import Settings
from callrouter.provision import asterisk as prov
from callrouter.provision.render import AsteriskPaths, render_text

log = logging.getLogger("callrouter.provision.cluster")

KAMAILIO_USER = "kamailio"  # made by Debian's kamailio package
KAMAILIO_MODULES = ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/kamailio/modules",
                    "/usr/lib/kamailio/modules", "/usr/lib64/kamailio/modules")
DISPATCHER_SET = 1


@dataclass(frozen=True)
class Node:
    """One Asterisk node: its name (also its ``systemname``), own settings and target."""

    name: str
    index: int  # 1, 2 ...
    settings: Settings
    target: prov.Target

    @property
    def address(self) -> str:
        return self.settings.sip_bind

    @property
    def sip_uri(self) -> str:
        return f"sip:{self.settings.sip_bind}:{self.settings.sip_port}"


@dataclass(frozen=True)
class Cluster:
    settings: Settings
    nodes: list[Node]

    @property
    def proxy_address(self) -> str:
        return self.settings.sip_bind

    @property
    def dir(self) -> Path:
        return self.settings.home / "cluster"

    @property
    def kamailio_dir(self) -> Path:
        return self.dir / "kamailio"

    @property
    def run_dir(self) -> Path:
        # the control sockets: a short path (a unix socket path has at most 107 bytes)
        return self.kamailio_dir / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "kamailio.pid"

    @property
    def log_file(self) -> Path:
        return self.kamailio_dir / "kamailio.log"

    @property
    def cfg_file(self) -> Path:
        return self.kamailio_dir / "kamailio.cfg"

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise prov.ProvisionError(f"no cluster node {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")


# ---------------------------------------------------------------------------------------
def node_addresses(settings: Settings, size: int | None = None) -> list[str]:
    """The nodes' addresses: ``cluster_nodes`` as given, else the ``size`` addresses after
    ``sip_bind`` (Kamailio's)."""
    count = settings.cluster_size if size is None else size
    if settings.cluster_nodes:
        if size is not None and size != len(settings.cluster_nodes):
            raise prov.ProvisionError(f"--nodes {size}, but cluster_nodes names {len(settings.cluster_nodes)} "
                                      "addresses: give as many addresses as nodes")
        return list(settings.cluster_nodes)
    if count < 1:
        raise prov.ProvisionError(f"cluster_size {count}: a cluster needs at least one node")
    try:
        first = ipaddress.ip_address(settings.sip_bind)
    except ValueError as exc:
        raise prov.ProvisionError(f"sip_bind {settings.sip_bind!r} is not an address: set cluster_nodes "
                                  "to the nodes' addresses") from exc
    if first.is_unspecified:
        raise prov.ProvisionError("sip_bind is 0.0.0.0: Kamailio needs its own address; set sip_bind and "
                                  "cluster_nodes")
    return [str(first + i) for i in range(1, count + 1)]


def rtp_ranges(start: int, end: int, count: int) -> list[tuple[int, int]]:
    """rtp_start..rtp_end in ``count`` even-aligned shares, one per node."""
    share = (end - start + 1) // count
    if share < 100:
        raise prov.ProvisionError(f"RTP range {start}-{end} is too small for {count} nodes (at least 100 "
                                  "ports each)")
    share -= share % 2
    return [(start + i * share, start + (i + 1) * share - 1) for i in range(count)]


def node_paths(name: str) -> AsteriskPaths:
    """A chroot node's own directories, as Asterisk sees them."""
    return AsteriskPaths(etc_dir=f"/etc/asterisk-{name}", varlib_dir=f"/var/lib/asterisk-{name}",
                         spool_dir=f"/var/spool/asterisk-{name}", run_dir=f"/run/asterisk-{name}",
                         log_dir=f"/var/log/asterisk-{name}")


def plan(settings: Settings, size: int | None = None) -> Cluster:
    """The cluster these settings describe (nothing is started or written)."""
    addresses = node_addresses(settings, size)
    ranges = rtp_ranges(settings.rtp_start, settings.rtp_end, len(addresses))
    base = prov.select_target(settings)
    nodes = []
    for i, (address, (rtp_start, rtp_end)) in enumerate(zip(addresses, ranges, strict=True), 1):
        name = f"node{i}"
        # the node's own home: its own ARI password, generated on first run; the chroot
        # stays the one the project builds
        node_settings = dataclasses.replace(
            settings, home=settings.home / "cluster" / name, asterisk_root=settings.chroot,
            asterisk_mode=base.mode, sip_bind=address, http_bind=address, http_port=settings.http_port + i,
            rtp_start=rtp_start, rtp_end=rtp_end,
            # calls reach a node only through Kamailio: Kamailio's address is its trunk
            trunk_ips=(settings.sip_bind,), bench_trunk_ip="")
        target = (prov.Target("chroot", base.root, node_paths(name)) if base.mode == "chroot"
                  else prov.select_target(node_settings))
        nodes.append(Node(name, i, node_settings, target))
    return Cluster(settings, nodes)


def recording_dirs(cluster: Cluster) -> dict[str, Path]:
    """Where the engine finds each node's call recordings: ``cluster_recording_dir`` with
    ``{node}`` replaced by the node's name (nodes on other machines: where their directory
    is mounted here), else the node's own recording directory as this machine sees it
    (the nodes `cluster up` runs here: inside the chroot, or under the node's home)."""
    template = cluster.settings.cluster_recording_dir
    if template:
        # without {node}: one directory shared by every node (their files never clash:
        # each channel id carries its node)
        return {n.name: Path(template.replace("{node}", n.name)) for n in cluster.nodes}
    return {n.name: n.target.host_path(n.target.paths.recording_dir) for n in cluster.nodes}


def node_log_dir(cluster: Cluster, node: Node) -> Path:
    """A node's Asterisk log directory (its CEL file) as the engine sees it: under
    ``cluster_log_root`` by the node's name when set (the node's own machine's directory,
    mounted there), else the node's directory on this machine."""
    root = cluster.settings.cluster_log_root
    return root / node.name if root is not None else node.target.host_path(node.target.paths.log_dir)


def proxied_seat_sections(seats: list[str], proxy: str) -> str:
    """A node's seat endpoints: no registration here (seats register to Kamailio); the
    node rings a seat by sending the INVITE to Kamailio, which knows where it is."""
    out = []
    for seat in seats:
        # rewrite_contact off: the seat's own Contact (behind Kamailio's Record-Route) is
        # where in-dialog requests go, not Kamailio's address the answer came from
        out.append(f"[{seat}](seat-endpoint)\naors = {seat}\ntransport = transport-udp\nrewrite_contact = no\n"
                   f"callerid = \"{seat}\" <{seat}>\n\n[{seat}](seat-aor)\ncontact = sip:{seat}@{proxy}\n")
    return "\n".join(out)


def node_template_values(cluster: Cluster, node: Node) -> dict[str, str]:
    s = cluster.settings
    return {"system_name_line": f"systemname = {node.name}",
            "seats": proxied_seat_sections(prov.seat_names(s), f"{s.sip_bind}:{s.sip_port}")}


def _subnets(addresses: tuple[str, ...] | list[str]) -> str:
    out = []
    for a in addresses:
        try:
            net = ipaddress.ip_network(a, strict=False)
        except ValueError as exc:
            raise prov.ProvisionError(f"trunk address {a!r} is not an address or network") from exc
        out.append(str(net))
    return ",".join(out)


def kamailio_module_dir() -> str:
    for candidate in KAMAILIO_MODULES:
        if Path(candidate, "dispatcher.so").exists():
            return candidate
    raise prov.ProvisionError("Kamailio's modules (dispatcher.so) not found: install Debian's kamailio")


def kamailio_values(cluster: Cluster, module_dir: str) -> dict[str, str]:
    s = cluster.settings
    passwords = []
    for seat in prov.seat_names(s):
        passwords.append(f'\tif ($tU == "{seat}") {{ $var(pw) = "{s.secret(f"seat:{seat}")}"; }}')
    return {
        "proxy_address": s.sip_bind, "proxy_port": str(s.sip_port),
        "log_prefix": "kamailio: ", "children": "4",
        "module_dir": module_dir, "run_dir": str(cluster.run_dir),
        "fr_timer_ms": str(s.cluster_sip_timer_s * 1000),
        "probe_s": str(s.cluster_probe_s),
        "pike_unit_s": "2", "pike_density": str(s.cluster_pike_limit), "pike_latency_s": "4",
        "dispatcher_list": str(cluster.kamailio_dir / "dispatcher.list"),
        "trunk_subnets": _subnets(s.trunk_ips),
        "seat_passwords": "\n".join(passwords),
    }


def dispatcher_list(cluster: Cluster) -> str:
    lines = ["# set destination flags priority attributes (rendered by `callrouter cluster up`)"]
    lines += [f"{DISPATCHER_SET} {n.sip_uri} 0 0 duid={n.name}" for n in cluster.nodes]
    return "\n".join(lines) + "\n"


def render_kamailio(cluster: Cluster) -> bool:
    """Write Kamailio's configuration and dispatcher list; returns whether the
    configuration (not the list, which reloads live) changed."""
    src = cluster.settings.data_dir / "kamailio-conf" / "kamailio.cfg"
    if not src.exists():
        raise prov.ProvisionError(f"{src}: Kamailio's configuration template is missing")
    text = render_text(src.read_text(), kamailio_values(cluster, kamailio_module_dir()), str(src))
    cluster.kamailio_dir.mkdir(parents=True, exist_ok=True)
    cluster.run_dir.mkdir(parents=True, exist_ok=True)
    uid, gid = _kamailio_ids()
    os.chown(cluster.run_dir, uid, gid)
    cluster.run_dir.chmod(0o750)
    try:
        changed = cluster.cfg_file.read_text() != text
    except OSError:
        changed = True
    for path, body in ((cluster.cfg_file, text), (cluster.kamailio_dir / "dispatcher.list", dispatcher_list(cluster))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body)
        # seat passwords inside: root and the kamailio group only
        tmp.chmod(0o640)
        os.chown(tmp, 0, gid)
        tmp.replace(path)
    return changed


def _kamailio_ids() -> tuple[int, int]:
    import grp
    import pwd

    try:
        return pwd.getpwnam(KAMAILIO_USER).pw_uid, grp.getgrnam(KAMAILIO_USER).gr_gid
    except KeyError as exc:
        raise prov.ProvisionError(f"no {KAMAILIO_USER} user: install Debian's kamailio package") from exc


# ---------------------------------------------------------------------------------------
def address_is_local(address: str) -> bool:
    """Can this machine bind ``address`` (so a part on it runs here)?"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def kamailio_pid(cluster: Cluster) -> int | None:
    """The running Kamailio's main pid (checked to be a kamailio with this cluster's
    configuration: a stale pid file's number may belong to another process by now)."""
    try:
        pid = int(cluster.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(cluster.cfg_file).encode() in cmdline else None


def _own_kamailios(cluster: Cluster) -> list[int]:
    """Every process running a kamailio with this cluster's configuration (the main one
    and its children, also after the main one was killed)."""
    found = []
    cfg = str(cluster.cfg_file).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if args and args[0].endswith(b"kamailio") and cfg in args:
                found.append(int(entry.name))
    return found


def check_kamailio(cluster: Cluster) -> bool:
    """Install Kamailio if missing, render its configuration and have it checked;
    returns whether the configuration changed."""
    prov.ensure_host_packages(["kamailio"])
    changed = render_kamailio(cluster)
    cfg = cluster.cfg_file
    check = subprocess.run([_kamailio_binary(), "-c", "-f", str(cfg)], capture_output=True, text=True,
                           check=False, timeout=30)
    if check.returncode != 0:
        errors = [ln for ln in check.stderr.splitlines() if "ERROR" in ln or "CRITICAL" in ln]
        # counted as changed next time: a running Kamailio still has the older configuration
        cfg.rename(cfg.with_name(cfg.name + ".rejected"))
        raise prov.ProvisionError(f"{cfg}: Kamailio rejects its configuration:\n" + "\n".join(errors[-20:]))
    return changed


def _kamailio_binary() -> str:
    return shutil.which("kamailio") or "/usr/sbin/kamailio"


def start_kamailio(cluster: Cluster, changed: bool, timeout: float = 15.0) -> tuple[int, bool]:
    """Start Kamailio with the configuration check_kamailio() wrote (restart it when that
    ``changed``); returns its pid and whether it was (re)started."""
    cfg, binary = cluster.cfg_file, _kamailio_binary()
    existing = kamailio_pid(cluster)
    if existing is not None and not changed:
        # new nodes: the dispatcher list reloads live
        rpc(cluster, "dispatcher.reload")
        return existing, False
    if existing is not None:
        # the registrations (in memory) go with it: the seats register again within
        # their expiry; the calls are not touched (they run between the trunk and a node)
        log.warning("Kamailio's configuration changed: restarting it")
    for stray in _own_kamailios(cluster):
        _kill_group(stray)
    cluster.pid_file.unlink(missing_ok=True)
    uid, gid = _kamailio_ids()
    with cluster.log_file.open("ab") as logf:
        os.chown(cluster.log_file, uid, gid)
        cluster.log_file.chmod(0o640)
        # fork=yes: the launcher exits once Kamailio runs in its own session (setsid), the
        # main process is its process group's leader (down kills the group)
        proc = subprocess.run([binary, "-f", str(cfg), "-P", str(cluster.pid_file), "-u", KAMAILIO_USER,
                               "-g", KAMAILIO_USER, "-m", "64", "-M", "8"], stdin=subprocess.DEVNULL,
                              stdout=logf, stderr=logf, check=False, timeout=30)
    if proc.returncode != 0:
        raise prov.ProvisionError(f"kamailio failed to start ({proc.returncode}); log tail:\n{_tail(cluster.log_file)}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = kamailio_pid(cluster)
        if pid is not None and _rpc_or_none(cluster, "core.uptime") is not None:
            return pid, True
        time.sleep(0.1)
    raise prov.ProvisionError(f"kamailio did not answer on its control socket within {timeout:.0f} s; "
                              f"log tail:\n{_tail(cluster.log_file)}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _kill_group(pid: int, wait_s: float = 5.0) -> None:
    """SIGTERM the process and its group, then SIGKILL what is left after ``wait_s``."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    own_group = pgid == pid and pgid != os.getpgrp()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if own_group:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + (wait_s if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def stop_kamailio(cluster: Cluster) -> bool:
    pids = sorted({*([p] if (p := kamailio_pid(cluster)) is not None else []), *_own_kamailios(cluster)})
    for pid in pids:
        _kill_group(pid)
    cluster.pid_file.unlink(missing_ok=True)
    return bool(pids)


# ---------------------------------------------------------------------------------------
def rpc(cluster: Cluster, method: str, *params: Any, timeout: float = 3.0) -> Any:
    """One JSON-RPC call to Kamailio over its datagram control socket; the result."""
    server = str(cluster.run_dir / "kamailio_rpc.sock")
    with tempfile.TemporaryDirectory(prefix="callrouter-kam-") as tmp:
        # Kamailio (its own user) sends the reply to this socket
        Path(tmp).chmod(0o711)
        client = Path(tmp) / "c.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(client))
            client.chmod(0o666)
            s.settimeout(timeout)
            request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
            try:
                s.sendto(json.dumps(request).encode(), server)
                data = s.recv(1 << 20)
            except OSError as exc:
                raise prov.ProvisionError(f"Kamailio's control socket {server}: {exc}") from exc
    reply = json.loads(data)
    if "error" in reply:
        raise prov.ProvisionError(f"Kamailio RPC {method}: {reply['error']}")
    return reply.get("result")


def _rpc_or_none(cluster: Cluster, method: str, *params: Any) -> Any:
    try:
        return rpc(cluster, method, *params, timeout=1.0)
    except (prov.ProvisionError, ValueError):
        return None


def parse_dispatcher(result: Any) -> list[dict[str, Any]]:
    """``dispatcher.list``'s result -> [{set, uri, name, flags, state, probing}]."""
    out: list[dict[str, Any]] = []
    records = result.get("RECORDS", []) if isinstance(result, dict) else []
    for record in records:
        ds_set = record.get("SET", {})
        for target in ds_set.get("TARGETS", []):
            dest = target.get("DEST", {})
            flags = str(dest.get("FLAGS", ""))
            attrs = dest.get("ATTRS", {})
            state = {"A": "active", "I": "inactive", "D": "disabled", "T": "trying"}.get(flags[:1], flags)
            out.append({"set": ds_set.get("ID"), "uri": dest.get("URI"),
                        "name": attrs.get("DUID") if isinstance(attrs, dict) else None,
                        "flags": flags, "state": state, "probing": flags[1:2] == "P"})
    return out


def parse_registrations(result: Any) -> list[dict[str, Any]]:
    """``ul.dump``'s result -> [{seat, contacts}] (one entry per registered AOR)."""
    out: list[dict[str, Any]] = []
    domains = result.get("Domains", []) if isinstance(result, dict) else []
    for domain in domains:
        for aor in domain.get("Domain", {}).get("AoRs", []) or []:
            info = aor.get("Info", {})
            contacts = [c.get("Contact", {}).get("Address") for c in info.get("Contacts", []) or []]
            out.append({"seat": info.get("AoR"), "contacts": contacts})
    return out


def dispatcher_state(cluster: Cluster) -> list[dict[str, Any]]:
    return parse_dispatcher(rpc(cluster, "dispatcher.list"))


def registered_seats(cluster: Cluster) -> list[dict[str, Any]]:
    return parse_registrations(rpc(cluster, "ul.dump"))


# ---------------------------------------------------------------------------------------
def start_node(cluster: Cluster, node: Node) -> bool:
    """Render the node's configuration and start it (reload when running); returns
    whether it was started."""
    prov.render(node.settings, node.target, node_template_values(cluster, node))
    # res_crypto looks here (the chroot's default varlib has it; a node's own does not)
    keys = node.target.host_path(f"{node.target.paths.varlib_dir}/keys")
    keys.mkdir(exist_ok=True)
    if prov.running(node.target):
        prov.rx(node.target, "core reload", timeout=30)
        # the broadcast's modules when several engines came since the start (ha_app_filter)
        prov.load_new_modules(node.target)
        return False
    prov.stop(node.target)  # a stale pid file or half-dead process
    prov.start(node.target)
    return True


def is_node_process(node: Node, args: list[bytes], root: str) -> bool:
    """Is a process with this command line and root directory (``/proc/<pid>/root``) this
    node's Asterisk? A chroot node's ``-C`` path (``/etc/asterisk-node1/...``) is the same
    in every chroot: another home's cluster on the same machine runs the same command line,
    so the root must be this node's chroot too."""
    conf = f"{node.target.paths.etc_dir}/asterisk.conf".encode()
    if not args or not args[0].endswith(b"asterisk") or conf not in args:
        return False
    return node.target.mode != "chroot" or root == str(node.target.root)


def _node_strays(node: Node) -> list[int]:
    """Asterisk processes of this node (its -C, its chroot) still running without a pid file."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if args and args[0].endswith(b"asterisk") and is_node_process(node, args, os.readlink(entry / "root")):
                found.append(int(entry.name))
    return found


def stop_node(node: Node) -> bool:
    was = prov.stop(node.target)
    for stray in _node_strays(node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(stray, signal.SIGKILL)
        was = True
    return was


def node_channels(node: Node) -> dict[str, int | None]:
    """Active channels and calls, and calls processed since the start (CLI)."""
    out = prov.rx(node.target, "core show channels count", timeout=5).stdout
    counts: dict[str, int | None] = {}
    for key, pattern in (("channels", r"(\d+) active channel"), ("calls", r"(\d+) (?:of \d+ max )?active call"),
                         ("processed", r"(\d+) calls? processed")):
        m = re.search(pattern, out)
        counts[key] = int(m.group(1)) if m else None
    return counts


@dataclass
class UpReport:
    started: list[str]
    kept: list[str]
    remote: list[str]
    built_chroot_s: float | None
    seconds: float


def up(settings: Settings, size: int | None = None) -> UpReport:
    """Start Kamailio and the nodes whose addresses are on this machine (running ones
    get their configuration reloaded). A failure stops what this call started."""
    started_at = time.monotonic()
    cluster = plan(settings, size)
    if os.geteuid() != 0:
        raise prov.ProvisionError("the cluster needs root (chroot, Kamailio's user)")
    local_nodes = [n for n in cluster.nodes if address_is_local(n.address)]
    built = prov.ensure_chroot(settings, prov.select_target(settings)) if local_nodes else None
    report = UpReport([], [], [n.name for n in cluster.nodes if n not in local_nodes], built, 0.0)
    proxy_here = address_is_local(cluster.proxy_address)
    if proxy_here:
        # a configuration error shows before any node starts
        kamailio_changed = check_kamailio(cluster)
    try:
        for node in local_nodes:
            (report.started if start_node(cluster, node) else report.kept).append(node.name)
        if proxy_here:
            _, restarted = start_kamailio(cluster, kamailio_changed)
            (report.started if restarted else report.kept).append("kamailio")
        else:
            report.remote.append("kamailio")
    except BaseException:
        for name in report.started:
            if name == "kamailio":
                stop_kamailio(cluster)
            else:
                stop_node(cluster.node(name))
        raise
    report.seconds = time.monotonic() - started_at
    return report


def down(settings: Settings, size: int | None = None) -> dict[str, bool]:
    """Stop Kamailio and every node of this machine, whatever state they are in (also
    nodes an earlier ``up --nodes N`` started beyond these settings' count)."""
    cluster = plan(settings, size)
    stopped = {"kamailio": stop_kamailio(cluster)}
    for node in cluster.nodes:
        stopped[node.name] = stop_node(node)
    for pid, name in _other_nodes(cluster):
        if name.startswith("node"):  # a chroot node: stopped as the others, killed if need be
            prov.stop(prov.Target("chroot", settings.chroot, node_paths(name)))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        stopped[name] = True
    return stopped


def _other_nodes(cluster: Cluster) -> list[tuple[int, str]]:
    """(pid, node name) of Asterisk processes of this cluster's chroot or home that run a
    node configuration other than the planned nodes'."""
    planned = {f"{n.target.paths.etc_dir}/asterisk.conf" for n in cluster.nodes}
    chroot = str(cluster.settings.chroot)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            args = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")]
            if not args[0].endswith("asterisk") or "-C" not in args:
                continue
            conf = args[args.index("-C") + 1]
            m = re.fullmatch(r"/etc/asterisk-(node\d+)/asterisk\.conf", conf)
            ours = (m is not None and os.readlink(entry / "root") == chroot) or conf.startswith(f"{cluster.dir}/")
            if ours and conf not in planned:
                found.append((int(entry.name), m.group(1) if m else conf))
    return found


def status(settings: Settings, size: int | None = None) -> dict[str, Any]:
    cluster = plan(settings, size)
    kam_pid = kamailio_pid(cluster)
    proxy: dict[str, Any] = {"sip": f"udp:{cluster.proxy_address}:{settings.sip_port}", "running": False,
                             "pid": kam_pid, "config": str(cluster.cfg_file)}
    if kam_pid is not None:
        try:
            proxy["dispatcher"] = dispatcher_state(cluster)
            proxy["seats_registered"] = registered_seats(cluster)
            proxy["running"] = True
        except prov.ProvisionError as exc:
            proxy["error"] = str(exc)
    nodes = []
    for node in cluster.nodes:
        info: dict[str, Any] = {"name": node.name, "sip": f"udp:{node.address}:{node.settings.sip_port}",
                                "ari": node.settings.ari_url, "ari_user": node.settings.ari_user,
                                "rtp": [node.settings.rtp_start, node.settings.rtp_end],
                                "etc": str(node.target.host_path(node.target.paths.etc_dir)),
                                "pid": prov.pid(node.target), "running": False}
        if info["pid"] is not None and prov.running(node.target):
            info["running"] = True
            info.update(node_channels(node))
        nodes.append(info)
    return {"proxy": proxy, "nodes": nodes,
            "healthy": proxy["running"] and all(n["running"] for n in nodes)}
