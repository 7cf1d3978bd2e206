"""Pure helpers of callrouter.provision.asterisk: the host's apt mirror and chroot paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callrouter.provision.asterisk import Target, parse_mirror
from callrouter.provision.render import AsteriskPaths

DEB822 = """\
Types: deb
URIs: http://mirrors.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

SECURITY_FIRST = """\
Types: deb
URIs: http://mirrors.example.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: https://deb.example.net/debian/
Suites: bookworm
Components: main contrib
"""

ONE_LINE = """\
# deb http://commented.example.org/debian bookworm main
deb-src http://src.example.org/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.example.org/debian bookworm main
deb http://ftp2.example.org/debian bookworm main
"""


def test_deb822_sources() -> None:
    assert parse_mirror([("debian.sources", DEB822)]) == "http://mirrors.example.org/debian"


def test_deb822_skips_security_suites() -> None:
    assert parse_mirror([("debian.sources", SECURITY_FIRST)]) == "https://deb.example.net/debian/"


def test_one_line_format_with_options_skipping_comments_sources_and_security() -> None:
    assert parse_mirror([("sources.list", ONE_LINE)]) == "http://ftp.example.org/debian"


def test_one_line_format_in_a_list_file() -> None:
    assert parse_mirror([("mirror.list", "deb http://ftp2.example.org/debian sid main\n")]) == \
        "http://ftp2.example.org/debian"


def test_security_only_or_non_debian_sources_give_nothing() -> None:
    security_only = "deb http://security.debian.org/debian-security bookworm-security main\n"
    ubuntu = "deb http://archive.ubuntu.com/ubuntu noble main\n"
    ubuntu822 = "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu\nSuites: noble\nComponents: main\n"
    assert parse_mirror([("sources.list", security_only), ("sources.list", ubuntu),
                         ("ubuntu.sources", ubuntu822)]) == ""
    assert parse_mirror([]) == ""


def test_first_file_with_a_mirror_wins() -> None:
    # /etc/apt/sources.list (emptied on a deb822 system) first, then sources.list.d/ in order
    files = [
        ("sources.list", "# see sources.list.d/debian.sources\n"),
        ("debian.sources", DEB822),
        ("other.list", "deb http://ftp2.example.org/debian bookworm main\n"),
    ]
    assert parse_mirror(files) == "http://mirrors.example.org/debian"


def test_sources_format_chosen_by_file_name() -> None:
    # deb822 text in a file apt reads as one-line format is not a mirror, and vice versa
    assert parse_mirror([("debian.list", DEB822)]) == ""
    assert parse_mirror([("debian.sources", ONE_LINE)]) == ""


# --- Target ----------------------------------------------------------------------------
@pytest.fixture
def chroot(tmp_path: Path) -> Target:
    root = tmp_path / "asterisk-root"
    (root / "run" / "asterisk").mkdir(parents=True)
    (root / "var").mkdir()
    # as in a Debian chroot: an absolute link, which would resolve on the host's side
    os.symlink("/run", root / "var" / "run")
    return Target("chroot", root, AsteriskPaths())


def test_chroot_paths_are_under_the_root(chroot: Target) -> None:
    assert chroot.host_path("/etc/asterisk") == chroot.root / "etc" / "asterisk"
    assert chroot.host_path(chroot.paths.run_dir) == chroot.root / "run" / "asterisk"


@pytest.mark.parametrize("inner", ["/var/run/asterisk/asterisk.pid", "/var/run/asterisk/asterisk.ctl",
                                   "/var/run/x"])
def test_chroot_path_never_goes_through_var_run(chroot: Target, inner: str) -> None:
    path = chroot.host_path(inner)
    assert path == chroot.root / inner.removeprefix("/var/")
    assert "var" not in path.relative_to(chroot.root).parts
    assert path.resolve().is_relative_to(chroot.root.resolve())


def test_host_paths_are_themselves_without_var_run() -> None:
    host = Target("host", Path("/"), AsteriskPaths(etc_dir="/home/op/.local/state/callrouter/asterisk-etc"))
    assert host.host_path("/home/op/.local/state/callrouter/asterisk-etc") == \
        Path("/home/op/.local/state/callrouter/asterisk-etc")
    assert host.host_path("/var/run/asterisk/asterisk.pid") == Path("/run/asterisk/asterisk.pid")


def test_commands(chroot: Target) -> None:
    assert chroot.command("-rx", "core show version") == \
        ["chroot", str(chroot.root), "/usr/sbin/asterisk", "-rx", "core show version"]
    host = Target("host", Path("/"), AsteriskPaths(etc_dir="/srv/etc"))
    assert host.command("-rx", "core reload") == \
        ["/usr/sbin/asterisk", "-C", "/srv/etc/asterisk.conf", "-rx", "core reload"]


def _fake_chroot(tmp_path: Path) -> Target:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(f"asterisk:x:{os.getuid()}:{os.getgid()}::/var/lib/asterisk:/bin/false\n")
    return Target("chroot", tmp_path, AsteriskPaths())


def test_a_crash_core_is_kept_from_the_next_crash_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    from callrouter.provision.asterisk import KEEP_CORES, _prepare_cores, cores_dir, newest_core

    target = _fake_chroot(tmp_path)
    cores = target.host_path(cores_dir(target))
    cores.mkdir(parents=True)
    for i, name in enumerate(["core-20261101T000000", "core-20261102T000000", "core-20261103T000000", "core"]):
        (cores / name).write_bytes(b"x")
        os.utime(cores / name, (1_000_000 + i * 100, 1_000_000 + i * 100))
    _prepare_cores(target)
    kept = sorted(p.name for p in cores.iterdir())
    assert len(kept) == KEEP_CORES == 2
    assert "core" not in kept, "the kernel's fixed name is freed for the next crash"
    assert kept == ["core-19700112T135140", "core-20261103T000000"], kept
    assert cores.stat().st_mode & 0o777 == 0o700, "a core holds call data: owner only"
    newest = newest_core(target)
    assert newest is not None and newest.name == "core-19700112T135140"
    assert newest_core(target, since=2_000_000) is None


def test_asterisk_starts_with_core_dumps_in_a_directory_it_can_write(tmp_path: Path) -> None:
    from callrouter.provision.asterisk import _start_command

    cmd, cwd = _start_command(_fake_chroot(tmp_path), "-U", "asterisk")
    assert cmd[:2] == ["chroot", str(tmp_path)] and cwd is None
    assert "cd /var/lib/asterisk/cores && exec" in cmd[4]
    assert cmd[-4:] == ["/usr/sbin/asterisk", "-g", "-U", "asterisk"]
    host = Target("host", Path("/"), AsteriskPaths(varlib_dir=str(tmp_path / "lib")))
    cmd, cwd = _start_command(host)
    assert cwd == f"{tmp_path}/lib/cores" and cmd[-1] == "-g"
