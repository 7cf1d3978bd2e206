"""The container image, built and run with podman where Docker's engine does not run.

- podman: rootful, with runc, cgroupfs, the vfs storage driver and the host's network
  (what works on these machines; crun fails on their cgroups). Its storage and
  configuration live under ``<home>/podman``, not in the machine's global configuration.
- base: no image registry is reachable, so the base is a Debian sid tree made with
  debootstrap (the Asterisk chroot's code) holding the Dockerfile's Debian packages
  (``ARG DEBIAN_PACKAGES``), loaded with ``podman import``; kept and reused until it is
  older than ``BASE_MAX_AGE_S`` or the package list changes. The Dockerfile then skips apt.
- build: the repository's Dockerfile with ``FROM`` that base (build arg ``BASE``). pip
  inside the build uses the host's index configuration (``pip config list``, PIP_*
  variables), given as the build secret ``pip.conf`` with the local directories it
  names mounted read-only: never in the repository, never in a layer of the image.

These are provisioning commands run by an operator or a test, not the call path:
blocking subprocess calls are fine here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from callrouter.config import Settings
from callrouter.provision.asterisk import debootstrap

log = logging.getLogger("callrouter.provision")

IMAGE = "localhost/callrouter:latest"
BASE_REPO = "localhost/callrouter-base"
# Debian sid moves daily: a base older than this is made again
BASE_MAX_AGE_S = 7 * 86400
# where the host's pip directories and files appear inside a build step
PIP_MOUNTS = "/run/callrouter-pip"
# pip options whose values may name local files or directories (space-separated lists)
_INDEX_OPTIONS = ("index-url", "extra-index-url")
_PATH_OPTIONS = ("find-links", "constraint", "requirement", "cert", "client-cert")


class ImageError(Exception):
    pass


@dataclass(frozen=True)
class Podman:
    """podman with this project's storage and configuration (rootful)."""

    home: Path

    @property
    def storage(self) -> Path:
        return self.home / "storage"

    @property
    def runroot(self) -> Path:
        # runtime state belongs on /run (emptied at boot); one per home
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        return Path("/run/callrouter-podman") / digest

    @property
    def tmp(self) -> Path:
        # image imports and build caches are large: on disk beside the storage, not /tmp
        return self.home / "tmp"

    def configure(self) -> None:
        """Write podman's configuration files (idempotent)."""
        for d in (self.home, self.storage, self.runroot, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        (self.home / "containers.conf").write_text(
            "# written by callrouter.provision.image: podman as it runs on this kind of machine\n"
            "[containers]\n"
            "default_ulimits = []\n"
            'log_driver = "k8s-file"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'runtime = "runc"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{self.runroot / "libpod"}"\n')
        (self.home / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.storage}"\n'
            f'runroot = "{self.runroot / "storage"}"\n')
        # no registry is reachable: only fully named local images are used
        (self.home / "registries.conf").write_text("unqualified-search-registries = []\n")

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.home / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.home / "registries.conf"),
                "TMPDIR": str(self.tmp)}

    def command(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.storage), "--runroot", str(self.runroot / "storage"),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc", *args]

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True, check=False,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise ImageError(f"podman {' '.join(args[:3])} failed ({proc.returncode}): "
                             f"{(proc.stderr or proc.stdout)[-3000:]}")
        return proc

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "exists", tag, check=False).returncode == 0

    def image_size(self, tag: str) -> int:
        out = self.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
        return int(out)


def podman_for(settings: Settings) -> Podman:
    return Podman(settings.home / "podman")


def podman_missing() -> list[str]:
    """The commands podman needs here that are not installed (Debian's podman, runc)."""
    return [name for name in ("podman", "runc") if shutil.which(name) is None]


# ---------------------------------------------------------------------------------------
def dockerfile_packages(text: str) -> list[str]:
    """The Debian packages of the Dockerfile's ``ARG DEBIAN_PACKAGES="..."``."""
    m = re.search(r'(?m)^ARG\s+DEBIAN_PACKAGES="([^"]+)"', text)
    if not m:
        raise ImageError('Dockerfile: no ARG DEBIAN_PACKAGES="..." line')
    return m.group(1).split()


def base_tag(packages: list[str]) -> str:
    digest = hashlib.sha256(" ".join(sorted(packages)).encode()).hexdigest()[:12]
    return f"{BASE_REPO}:sid-{digest}"


def ensure_base(settings: Settings, podman: Podman, dockerfile: Path,
                max_age_s: float = BASE_MAX_AGE_S) -> tuple[str, float | None]:
    """The base image's tag, made (debootstrap + podman import) when missing or too old;
    with the seconds that took, None when reused."""
    packages = dockerfile_packages(dockerfile.read_text())
    tag = base_tag(packages)
    stamp = podman.home / "base.json"
    try:
        made = json.loads(stamp.read_text()).get(tag, 0.0)
    except (OSError, ValueError):
        made = 0.0
    if podman.image_exists(tag) and time.time() - made < max_age_s:
        return tag, None
    started = time.monotonic()
    root = podman.home / "base-root"
    log.info("making the image's base (Debian sid + %d packages) with debootstrap; a minute or two", len(packages))
    debootstrap(settings, root, packages)
    try:
        # debootstrap keeps the packages it installed: not in the image
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        hosts = root / "etc/hosts"
        if not hosts.exists():
            hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
        tarball = podman.tmp / "base.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], check=True,
                       capture_output=True, timeout=600)
        try:
            podman.run("import", "--change", 'CMD ["/bin/bash"]', str(tarball), tag, timeout=900)
        finally:
            tarball.unlink(missing_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # older bases of this home go: vfs keeps every layer as a full copy
    for line in podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPO).stdout.split():
        if line != tag:
            podman.run("rmi", line, check=False)
    stamps = {tag: time.time()}
    stamp.write_text(json.dumps(stamps))
    return tag, time.monotonic() - started


# ---------------------------------------------------------------------------------------
def parse_pip_config(text: str) -> dict[str, str]:
    """``pip config list`` output -> option -> value, as pip install sees them: [global],
    then [install], then the PIP_* environment (``:env:``) win in that order."""
    ranks = {"global": 0, "install": 1, ":env:": 2}
    found: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        m = re.match(r"^([^.=\s]+)\.([\w-]+)=(.*)$", line.strip())
        if not m or m.group(1) not in ranks:
            continue
        try:
            value = ast.literal_eval(m.group(3))
        except (ValueError, SyntaxError):
            value = m.group(3)
        found.append((ranks[m.group(1)], m.group(2), str(value)))
    return {key: value for _, key, value in sorted(found, key=lambda f: f[0])}


def host_pip_config(python: str = sys.executable) -> dict[str, str]:
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False,
                          timeout=60)
    return parse_pip_config(proc.stdout) if proc.returncode == 0 else {}


def _local_path(token: str) -> Path | None:
    if token.startswith("file:"):
        return Path(unquote(urlparse(token).path))
    return Path(token) if token.startswith("/") else None


def build_pip_config(options: dict[str, str]) -> tuple[str, dict[Path, str]]:
    """A pip.conf for inside the build and the host paths to mount read-only (host path ->
    where it appears in the build step). Local paths are rewritten under PIP_MOUNTS; an
    index's parent directory is mounted (its pages link to ../../files); paths that do not
    exist on the host are left out."""
    mounts: dict[Path, str] = {}
    lines = ["[global]"]
    for key, value in options.items():
        if key not in _INDEX_OPTIONS and key not in _PATH_OPTIONS:
            lines.append(f"{key} = {value}")
            continue
        kept = []
        for token in value.split():
            path = _local_path(token)
            if path is None:
                kept.append(token)
                continue
            if not path.exists():
                log.warning("pip %s %s: not on this host, left out of the build's pip configuration", key, token)
                continue
            mount = path.parent if key in _INDEX_OPTIONS else path
            mounts[mount] = f"{PIP_MOUNTS}{mount}"
            inside = f"{PIP_MOUNTS}{path}"
            kept.append(f"file://{inside}" if token.startswith("file:") else inside)
        if kept:
            lines.append(f"{key} = {' '.join(kept)}")
    return "\n".join(lines) + "\n", mounts


@dataclass
class BuildReport:
    base: str
    base_made_s: float | None
    image: str
    build_s: float
    size_bytes: int

    def to_json(self) -> dict[str, object]:
        return {"base": self.base, "base_made_s": None if self.base_made_s is None else round(self.base_made_s, 1),
                "image": self.image, "build_s": round(self.build_s, 1),
                "size_mb": round(self.size_bytes / 1e6)}


def build(settings: Settings, context: Path, tag: str = IMAGE, podman: Podman | None = None,
          log_path: Path | None = None) -> BuildReport:
    """Build ``context``'s Dockerfile on the debootstrap base with the host's pip configuration."""
    podman = podman or podman_for(settings)
    missing = podman_missing()
    if missing:
        raise ImageError(f"missing commands {missing}: install Debian's podman and runc")
    podman.configure()
    dockerfile = context / "Dockerfile"
    base, base_s = ensure_base(settings, podman, dockerfile)
    started = time.monotonic()
    conf, mounts = build_pip_config(host_pip_config())
    with tempfile.TemporaryDirectory(dir=podman.tmp) as tmp:
        pip_conf = Path(tmp) / "pip.conf"
        pip_conf.write_text(conf)
        pip_conf.chmod(0o600)
        volumes = [arg for host, inside in mounts.items() for arg in ("--volume", f"{host}:{inside}:ro")]
        # --no-cache: buildah keys a step's cache by its text, not by the files of a bind
        # mount, so the step that builds the wheel from the context would be reused stale
        args = ["build", "--no-cache", "--network", "host", "--build-arg", f"BASE={base}",
                "--secret", f"id=pip.conf,src={pip_conf}", *volumes, "--tag", tag,
                "--file", str(dockerfile), str(context)]
        proc = podman.run(*args, timeout=1800, check=False)
    if log_path is not None:
        log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ImageError(f"podman build failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    built_s = time.monotonic() - started
    # the layers of earlier builds (vfs: each a full copy of the tree) go
    podman.run("image", "prune", "--force", check=False, timeout=300)
    return BuildReport(base, base_s, tag, built_s, podman.image_size(tag))
