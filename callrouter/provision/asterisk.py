"""Bring up a real Asterisk for callrouter: a host install (20+) or a Debian sid chroot.

Debian bookworm ships no Asterisk; sid ships 22. `debootstrap --variant=minbase` builds a
working chroot in about a minute; Asterisk then runs with `chroot DIR /usr/sbin/asterisk`
in the host's network namespace (no mounts needed). The chroot is cached under the state
directory, reused when healthy and rebuilt when broken.

These are provisioning commands run by an operator, not the call path: blocking
subprocess calls are fine here.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from callrouter.config import Settings
from callrouter.prompts import build_sounds
from callrouter.provision.render import AsteriskPaths, render_config

log = logging.getLogger("callrouter.provision")

HOST_PACKAGES = {"debootstrap": "debootstrap", "sipp": "sip-tester",
                 "svmap": "sipvicious", "svwar": "sipvicious", "svcrack": "sipvicious",
                 "kamailio": "kamailio", "kamcmd": "kamailio"}
CHROOT_PACKAGES = "asterisk,asterisk-modules,asterisk-core-sounds-en-gsm"


class ProvisionError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """Where Asterisk lives: a chroot root, or '/' for a host install."""

    mode: str  # "chroot" | "host"
    root: Path
    paths: AsteriskPaths

    def host_path(self, inner: str) -> Path:
        """Translate a path as Asterisk sees it into a path on the host.

        Never go through the chroot's /var/run: it is an absolute link to /run and
        would resolve on the host's side.
        """
        if inner == "/var/run" or inner.startswith("/var/run/"):
            inner = "/run" + inner[len("/var/run"):]
        return self.root / inner.lstrip("/") if self.mode == "chroot" else Path(inner)

    def conf_args(self) -> list[str]:
        """``-C``: needed on the host, and for a chroot's cluster node (its own etc dir)."""
        if self.mode == "chroot" and self.paths.etc_dir == AsteriskPaths().etc_dir:
            return []
        return ["-C", f"{self.paths.etc_dir}/asterisk.conf"]

    def command(self, *args: str) -> list[str]:
        base = ["chroot", str(self.root)] if self.mode == "chroot" else []
        return [*base, "/usr/sbin/asterisk", *self.conf_args(), *args]


# ---------------------------------------------------------------------------------------
def ensure_host_packages(names: list[str]) -> None:
    """Install the Debian packages providing these commands if they are missing."""
    missing = sorted({HOST_PACKAGES[n] for n in names if shutil.which(n) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ProvisionError(f"missing commands {names}: install Debian packages {missing} (needs root)")
    log.info("installing Debian packages: %s", " ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=False, capture_output=True, timeout=600)
    proc = subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env,
                          capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        raise ProvisionError(f"apt-get install {' '.join(missing)} failed: {proc.stderr[-2000:]}")


def host_mirror() -> str:
    """The Debian mirror the host's own apt sources use (never hard-coded here)."""
    candidates: list[Path] = [Path("/etc/apt/sources.list")]
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        candidates += sorted(sources_d.iterdir())
    files: list[tuple[str, str]] = []
    for path in candidates:
        try:
            files.append((path.name, path.read_text()))
        except OSError:
            continue
    return parse_mirror(files)


def parse_mirror(files: list[tuple[str, str]]) -> str:
    """The first Debian mirror in apt sources given as (file name, text), in order.

    A name ending in ``.sources`` is read as deb822, any other as one-line
    ``sources.list``. Security suites are skipped: debootstrap needs the main archive.
    """
    for name, text in files:
        if Path(name).suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                uris = re.search(r"^URIs:\s*(\S+)", block, re.MULTILINE)
                suites = re.search(r"^Suites:\s*(.+)$", block, re.MULTILINE)
                if uris and suites and "security" not in suites.group(1) and "/debian" in uris.group(1):
                    return uris.group(1)
        else:
            for line in text.splitlines():
                m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
                if m and "security" not in m.group(2) and "/debian" in m.group(1):
                    return m.group(1)
    return ""


def _asterisk_version(cmd: list[str]) -> tuple[int, str] | None:
    try:
        out = subprocess.run([*cmd, "-V"], capture_output=True, text=True, check=False, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Asterisk (\d+)\.\S*", out)
    return (int(m.group(1)), m.group(0)) if m else None


def select_target(settings: Settings) -> Target:
    mode = settings.asterisk_mode
    if mode not in ("auto", "host", "chroot"):
        raise ProvisionError(f"asterisk_mode {mode!r}: use auto, host or chroot")
    if mode in ("auto", "host"):
        host_bin = shutil.which("asterisk") or ("/usr/sbin/asterisk" if Path("/usr/sbin/asterisk").exists() else None)
        version = _asterisk_version([host_bin]) if host_bin else None
        if version and version[0] >= 20:
            etc = settings.home / "asterisk-etc"
            paths = AsteriskPaths(
                etc_dir=str(etc), varlib_dir=str(settings.home / "asterisk-lib"),
                spool_dir=str(settings.home / "asterisk-spool"), run_dir=str(settings.home / "asterisk-run"),
                log_dir=str(settings.home / "asterisk-log"),
                mod_dir=_host_module_dir(), data_dir="/usr/share/asterisk",
            )
            return Target("host", Path("/"), paths)
        if mode == "host":
            raise ProvisionError("asterisk_mode=host but no Asterisk 20 or newer is installed on this host")
    return Target("chroot", settings.chroot, AsteriskPaths())


def _host_module_dir() -> str:
    for candidate in ("/usr/lib/x86_64-linux-gnu/asterisk/modules", "/usr/lib/aarch64-linux-gnu/asterisk/modules",
                      "/usr/lib/asterisk/modules", "/usr/lib64/asterisk/modules"):
        if Path(candidate).is_dir():
            return candidate
    raise ProvisionError("host Asterisk found but not its modules directory")


def chroot_healthy(root: Path) -> bool:
    # Test links with lexists: the chroot's absolute links (sounds/en -> /etc/alternatives)
    # would resolve on the host's side.
    if not (root / "usr/sbin/asterisk").exists() or not os.path.lexists(root / "usr/share/asterisk/sounds/en"):
        return False
    version = _asterisk_version(["chroot", str(root), "/usr/sbin/asterisk"])
    return version is not None and version[0] >= 20


def build_chroot(settings: Settings, root: Path) -> float:
    """debootstrap a Debian sid minbase with Asterisk into root; returns seconds taken."""
    log.info("building the Asterisk chroot (Debian sid) in %s; about a minute", root)
    return debootstrap(settings, root, CHROOT_PACKAGES.split(","))


def debootstrap(settings: Settings, root: Path, packages: list[str]) -> float:
    """A Debian sid minbase with ``packages`` in ``root`` (replaced whole when done), from
    the mirror of the host's apt sources; returns seconds taken. Also the container
    image's base (callrouter.provision.image)."""
    ensure_host_packages(["debootstrap"])
    started = time.monotonic()
    tmp = root.with_name(root.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    mirror = settings.apt_mirror or host_mirror()
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", "sid", str(tmp)]
    if mirror:
        cmd.append(mirror)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise ProvisionError(f"debootstrap failed ({proc.returncode}); mirror {mirror or 'default'}:\n{tail}")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return time.monotonic() - started


def _prepare_chroot(root: Path) -> None:
    # A minbase chroot lacks /etc/hosts; Asterisk and PJSIP resolve "localhost".
    hosts = root / "etc/hosts"
    if not hosts.exists():
        hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")


# The chroot's Debian package makes its asterisk user with the next free system id (101),
# which on the host may well be another service's (postgres here): files Asterisk writes
# would then belong to that service on the host. The chroot's asterisk runs instead under
# an id reserved on the host for it alone, by a host system account of this name.
HOST_ACCOUNT = "callrouter-asterisk"
_ID_RANGE = range(500, 1000)  # middle of Debian's system range: adduser and sysusers allocate from its ends


def parse_ids(text: str) -> dict[str, int]:
    """name -> id (third field) of an /etc/passwd or /etc/group text."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def choose_free_id(taken: set[int], candidates: range = _ID_RANGE) -> int:
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    raise ProvisionError(f"no free id in {candidates.start}-{candidates.stop - 1} for {HOST_ACCOUNT}")


def host_account_ids(chroot: Path) -> tuple[int, int]:
    """uid/gid of the host account reserved for the chroot's Asterisk (created if missing).

    The id is free as a uid and a gid on the host and in the chroot (other than the
    chroot's own asterisk user).
    """
    existing = _host_account()
    if existing is not None:
        return existing
    users, groups = parse_ids(Path("/etc/passwd").read_text()), parse_ids(Path("/etc/group").read_text())
    inner_users = parse_ids((chroot / "etc/passwd").read_text())
    inner_groups = parse_ids((chroot / "etc/group").read_text())
    inner_users.pop("asterisk", None)
    inner_groups.pop("asterisk", None)
    taken = {*users.values(), *groups.values(), *inner_users.values(), *inner_groups.values()}
    new_id = choose_free_id(taken)
    log.info("reserving uid/gid %d on the host for Asterisk (account %s)", new_id, HOST_ACCOUNT)
    for cmd in (["groupadd", "--system", "-g", str(new_id), HOST_ACCOUNT],
                ["useradd", "--system", "-u", str(new_id), "-g", str(new_id), "-M", "-d", "/nonexistent",
                 "-s", "/usr/sbin/nologin", "-c", "callrouter Asterisk (chroot)", HOST_ACCOUNT]):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
        if proc.returncode != 0:
            # another `asterisk up` (another instance's) may have made it just now
            made = _host_account()
            if made is not None:
                return made
            raise ProvisionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return new_id, new_id


def _host_account() -> tuple[int, int] | None:
    for line in Path("/etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == HOST_ACCOUNT and len(parts) >= 4:
            return int(parts[2]), int(parts[3])
    return None


def set_account_id(text: str, name: str, new_id: int, gid_field: int | None = None) -> str:
    """``text`` (passwd or group) with ``name``'s id (and, for passwd, primary gid) changed."""
    out = []
    for line in text.splitlines(keepends=True):
        parts = line.rstrip("\n").split(":")
        if parts[0] == name and len(parts) >= 3:
            parts[2] = str(new_id)
            if gid_field is not None and len(parts) >= 4:
                parts[3] = str(gid_field)
            line = ":".join(parts) + ("\n" if line.endswith("\n") else "")
        out.append(line)
    return "".join(out)


def migrate_chroot_ids(root: Path, uid: int, gid: int) -> bool:
    """Give the chroot's asterisk user and group ``uid``/``gid``; chown what they owned.

    Returns whether anything changed. Asterisk must not be running.
    """
    passwd_path, group_path = root / "etc/passwd", root / "etc/group"
    passwd = passwd_path.read_text()
    old_uid = parse_ids(passwd).get("asterisk")
    old_gid = parse_ids(group_path.read_text()).get("asterisk")
    if old_uid is None or old_gid is None:
        raise ProvisionError(f"{passwd_path}: no asterisk user or group")
    if (old_uid, old_gid) == (uid, gid):
        return False
    log.warning("chroot %s: asterisk uid/gid %d/%d -> %d/%d (the old ids belong to other host accounts)",
                root, old_uid, old_gid, uid, gid)
    for path, text in ((passwd_path, set_account_id(passwd, "asterisk", uid, gid)),
                       (group_path, set_account_id(group_path.read_text(), "asterisk", gid))):
        tmp = path.with_name(path.name + ".callrouter-tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    skip = {root / "proc", root / "sys", root / "dev"}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in [*dirnames, *filenames]:
            path = here / name
            st = path.lstat()
            if st.st_uid == old_uid or st.st_gid == old_gid:
                os.lchown(path, uid if st.st_uid == old_uid else -1, gid if st.st_gid == old_gid else -1)
    return True


def _asterisk_ids(target: Target) -> tuple[int, int]:
    """The asterisk user's uid/gid (from the chroot's /etc/passwd, or the host's)."""
    passwd = target.host_path("/etc/passwd").read_text() if target.mode == "chroot" else Path("/etc/passwd").read_text()
    for line in passwd.splitlines():
        parts = line.split(":")
        if parts[0] == "asterisk":
            return int(parts[2]), int(parts[3])
    raise ProvisionError(f"{target.host_path('/etc/passwd')}: no asterisk user")


def seat_names(settings: Settings) -> list[str]:
    from callrouter.acd.lines import load_lines

    lines = load_lines(settings.lines_path)
    return [s.endpoint for line in lines.lines for s in line.seats] + [p.endpoint for p in lines.pool]


def render(settings: Settings, target: Target, extra: dict[str, str] | None = None) -> None:
    """Render the configuration (``extra``: template values that replace the computed
    ones, e.g. a cluster node's), build the prompts, make Asterisk's directories."""
    paths = target.paths
    uid, gid = _asterisk_ids(target) if target.mode == "chroot" or _host_has_asterisk_user() else (
        os.getuid(), os.getgid())
    etc = target.host_path(paths.etc_dir)
    for files in render_config(settings, etc, paths, seat_names(settings), extra):
        os.chown(files, 0, gid)
    build_sounds(settings.data_dir / "ivr_prompts", target.host_path(paths.sounds_dir),
                 target.host_path(paths.moh_dir))
    for inner in (paths.run_dir, paths.log_dir, paths.spool_dir, paths.varlib_dir):
        d = target.host_path(inner)
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, uid, gid)
    # Asterisk's logs hold caller numbers: owner and group only (the engine reads the
    # CEL file and the security log as root or as a member of the asterisk group)
    logs = target.host_path(paths.log_dir)
    logs.chmod(0o750)
    cel = logs / "cel-custom"
    cel.mkdir(exist_ok=True)
    os.chown(cel, uid, gid)
    cel.chmod(0o750)
    for path in [*logs.iterdir(), *cel.iterdir()]:
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode & 0o640)
    # calls being recorded (MixMonitor): callers' voices, Asterisk and its group only; the
    # engine (root, or in the asterisk group) moves each file out when its call has ended
    recordings = target.host_path(paths.recording_dir)
    recordings.mkdir(parents=True, exist_ok=True)
    os.chown(recordings, uid, gid)
    recordings.chmod(0o770)


def rx(target: Target, command: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(target.command("-rx", command), capture_output=True, text=True, check=False, timeout=timeout)


def pid(target: Target) -> int | None:
    pidfile = target.host_path(f"{target.paths.run_dir}/asterisk.pid")
    try:
        value = int(pidfile.read_text().strip())
        os.kill(value, 0)
        return value
    except (OSError, ValueError):
        return None


def running(target: Target) -> bool:
    if pid(target) is None:
        return False
    try:
        return rx(target, "core show version", timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _host_has_asterisk_user() -> bool:
    try:
        return any(line.split(":")[0] == "asterisk" for line in Path("/etc/passwd").read_text().splitlines())
    except OSError:
        return False


# A crashed Asterisk leaves its core here (``-g``; Linux writes the core into the working
# directory, which must be writable by the asterisk user), the newest KEEP_CORES kept.
# A core holds call data (numbers): owner only.
KEEP_CORES = 2


def cores_dir(target: Target) -> str:
    return f"{target.paths.varlib_dir}/cores"


def _prepare_cores(target: Target) -> None:
    d = target.host_path(cores_dir(target))
    d.mkdir(parents=True, exist_ok=True)
    if target.mode == "chroot" or _host_has_asterisk_user():
        uid, gid = _asterisk_ids(target)
        os.chown(d, uid, gid)
    d.chmod(0o700)
    last = d / "core"  # the kernel's default name: keep it from being overwritten by the next crash
    if last.exists():
        last.rename(d / time.strftime("core-%Y%m%dT%H%M%S", time.gmtime(last.stat().st_mtime)))
    cores = sorted((c for c in d.iterdir() if c.name.startswith("core")), key=lambda c: c.stat().st_mtime)
    for old in cores[:-KEEP_CORES] if len(cores) > KEEP_CORES else []:
        old.unlink(missing_ok=True)


def _start_command(target: Target, *args: str) -> tuple[list[str], str | None]:
    """The command that starts Asterisk with core dumps on, in its cores directory."""
    inner = cores_dir(target)
    if target.mode == "chroot":
        # chroot(1) starts in the new root, which the asterisk user cannot write
        return ["chroot", str(target.root), "/bin/sh", "-c", f'cd {shlex.quote(inner)} && exec "$@"', "asterisk",
                "/usr/sbin/asterisk", *target.conf_args(), "-g", *args], None
    return target.command("-g", *args), inner


def newest_core(target: Target, since: float = 0.0) -> Path | None:
    d = target.host_path(cores_dir(target))
    try:
        cores = [c for c in d.iterdir() if c.name.startswith("core") and c.stat().st_mtime >= since]
    except OSError:
        return None
    return max(cores, key=lambda c: c.stat().st_mtime) if cores else None


def crash_report(target: Target, since: float = 0.0, lines: int = 25) -> str:
    """What is known of an Asterisk that died: the tail of its log and, when it left a
    core and gdb is installed, the crashing thread's backtrace."""
    parts = []
    log_file = target.host_path(f"{target.paths.log_dir}/messages.log")
    try:
        parts.append("messages.log tail:\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:]))
    except OSError as exc:
        parts.append(f"no log ({exc})")
    core = newest_core(target, since)
    gdb = shutil.which("gdb")
    if core is None:
        parts.append("no core file")
    elif gdb is None:
        parts.append(f"core: {core} (install gdb for a backtrace)")
    else:
        binary = target.host_path("/usr/sbin/asterisk")
        cmd = [gdb, "-batch", "-nx"]
        if target.mode == "chroot":
            cmd += ["-ex", f"set sysroot {target.root}"]
        cmd += ["-ex", "bt 30", "-ex", "info threads", str(binary), str(core)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False).stdout
        except subprocess.TimeoutExpired:
            out = "(gdb timed out)"
        bt = [ln for ln in out.splitlines() if ln.startswith("#") or "signal" in ln.lower()]
        parts.append(f"core: {core}\nbacktrace:\n" + "\n".join(bt[:lines]))
    return "\n".join(parts)


def start(target: Target, timeout: float = 60) -> None:
    # never as root: the Debian package's asterisk user, in the chroot or on the host
    uid_args = ["-U", "asterisk", "-G", "asterisk"] if target.mode == "chroot" or _host_has_asterisk_user() else []
    _prepare_cores(target)
    cmd, cwd = _start_command(target, *uid_args)
    # files Asterisk creates (logs, the CEL file, its database) are not world-readable
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30, umask=0o027, cwd=cwd)
    if proc.returncode != 0:
        raise ProvisionError(f"asterisk failed to start: {proc.stderr.strip() or proc.stdout.strip()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = rx(target, "core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
            if r.returncode == 0 and "fully booted" in r.stdout.lower():
                return
        except subprocess.TimeoutExpired:
            break
        time.sleep(0.2)
    log_file = target.host_path(f"{target.paths.log_dir}/messages.log")
    tail = log_file.read_text()[-2000:] if log_file.exists() else "(no log)"
    raise ProvisionError(f"asterisk did not become fully booted within {timeout:.0f} s; log tail:\n{tail}")


def stop(target: Target, timeout: float = 5.0) -> bool:
    """Stop Asterisk within ``timeout`` seconds; returns whether one was running."""
    p = pid(target)
    if p is None:
        return False
    deadline = time.monotonic() + timeout
    try:
        rx(target, "core stop now", timeout=max(0.5, timeout - 1))
    except subprocess.TimeoutExpired:
        pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                return True
        end = deadline if sig is None else time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                os.kill(p, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
    return True


def modules_to_load(modules_conf: str) -> list[str]:
    """The ``load = X.so`` modules of a modules.conf text, in order."""
    return re.findall(r"(?m)^\s*load\s*=>?\s*(\S+\.so)\s*$", modules_conf)


def load_new_modules(target: Target) -> None:
    """A reload does not load modules added to modules.conf since the start: load them."""
    conf = target.host_path(f"{target.paths.etc_dir}/modules.conf").read_text()
    loaded = set(re.findall(r"(?m)^(\S+\.so)\s", rx(target, "module show").stdout))
    for module in modules_to_load(conf):
        if module not in loaded:
            result = rx(target, f"module load {module}")
            log.info("loaded module %s: %s", module, result.stdout.strip())


def _ids_differ(root: Path, uid: int, gid: int) -> bool:
    users, groups = parse_ids((root / "etc/passwd").read_text()), parse_ids((root / "etc/group").read_text())
    return (users.get("asterisk"), groups.get("asterisk")) != (uid, gid)


def log_dir_on_host(settings: Settings) -> Path:
    """Asterisk's log directory (CEL file, security log) as the engine sees it."""
    target = select_target(settings)
    return target.host_path(target.paths.log_dir)


def recording_dir_on_host(settings: Settings) -> Path:
    """Where MixMonitor writes calls being recorded, as the engine sees it."""
    target = select_target(settings)
    return target.host_path(target.paths.recording_dir)


@dataclass
class UpReport:
    mode: str
    root: str
    built_chroot_s: float | None
    started: bool
    seconds: float


def up(settings: Settings) -> UpReport:
    started_at = time.monotonic()
    target = select_target(settings)
    built = ensure_chroot(settings, target)
    render(settings, target)
    was_running = running(target)
    if was_running:
        # Same configuration files, live reload: calls in progress are untouched.
        rx(target, "core reload", timeout=30)
        load_new_modules(target)
    else:
        stop(target)  # a stale pid file or half-dead process
        start(target)
    return UpReport(target.mode, str(target.root), built, not was_running, time.monotonic() - started_at)


def ensure_chroot(settings: Settings, target: Target) -> float | None:
    """For a chroot target: (re)build it when broken, prepare it and give its asterisk
    user the host account's ids; returns seconds spent building (None: not built)."""
    built = None
    if target.mode == "chroot":
        if os.geteuid() != 0:
            raise ProvisionError("the Asterisk chroot needs root (chroot, debootstrap)")
        if not chroot_healthy(target.root):
            if target.root.exists():
                log.warning("chroot %s is broken or incomplete: rebuilding it", target.root)
            built = build_chroot(settings, target.root)
            if not chroot_healthy(target.root):
                raise ProvisionError(f"{target.root}: chroot built but Asterisk does not run in it")
        _prepare_chroot(target.root)
        uid, gid = host_account_ids(target.root)
        if _ids_differ(target.root, uid, gid):
            if running(target):
                log.warning("stopping Asterisk to move it to uid %d (calls in progress end)", uid)
                stop(target)
            migrate_chroot_ids(target.root, uid, gid)
    return built


def watch(settings: Settings, stop: threading.Event, interval_s: float = 1.0,
          on_restart: Callable[[str], None] | None = None) -> int:
    """Keep Asterisk running until ``stop`` is set (what ``safe_asterisk`` or a service
    manager does): an Asterisk that is gone is started again at once, with what is known
    of its end (log tail, the core's backtrace) logged. Restarts that fail are retried
    with a growing pause (1 s doubling to 30 s). Returns how many restarts it made.

    Callers on the dead Asterisk are lost with it (their channels were there); callers
    who dial again are answered by the new one as soon as it is up, and the engine
    reconnects to it by itself."""
    target = select_target(settings)
    restarts, pause = 0, 1.0
    seen = pid(target)
    since = time.time()
    while not stop.wait(interval_s):
        now = pid(target)
        if now is not None:
            seen, pause = now, 1.0
            continue
        report = crash_report(target, since=since)
        log.error("event=asterisk_gone pid=%s restarting=yes\n%s", seen, report)
        try:
            up(settings)
        except (ProvisionError, OSError, subprocess.SubprocessError) as exc:
            log.error("event=asterisk_restart_failed error=%r retry_in_s=%.0f", exc, pause)
            stop.wait(pause)
            pause = min(30.0, pause * 2)
            continue
        restarts += 1
        seen, since = pid(target), time.time()
        log.warning("event=asterisk_restarted pid=%s restarts=%d", seen, restarts)
        if on_restart is not None:
            on_restart(report)
    return restarts


def status(settings: Settings) -> dict[str, object]:
    target = select_target(settings)
    info: dict[str, object] = {
        "mode": target.mode,
        "root": str(target.root),
        "running": False,
        "sip": f"udp:{settings.sip_bind}:{settings.sip_port}",
        "ari": settings.ari_url,
    }
    if target.mode == "chroot":
        info["chroot_present"] = (target.root / "usr/sbin/asterisk").exists()
    p = pid(target)
    if p is not None and running(target):
        info["running"] = True
        info["pid"] = p
        info["version"] = rx(target, "core show version").stdout.strip()
        info["uptime"] = rx(target, "core show uptime seconds").stdout.strip()
        channels = rx(target, "core show channels count").stdout
        m = re.search(r"(\d+) active call", channels)
        info["active_calls"] = int(m.group(1)) if m else None
    return info
