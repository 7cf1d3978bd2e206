"""The chroot's Asterisk gets an id no other host account has; modules added later load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callrouter.provision.asterisk import (
    ProvisionError,
    choose_free_id,
    migrate_chroot_ids,
    modules_to_load,
    parse_ids,
    set_account_id,
)
from tests.conftest import missing_part

HOST_PASSWD = "root:x:0:0::/root:/bin/bash\npostgres:x:101:104::/var/lib/postgresql:/bin/bash\n"
CHROOT_PASSWD = "root:x:0:0::/root:/bin/bash\nasterisk:x:101:101:Asterisk PBX daemon:/var/lib/asterisk:/usr/sbin/nologin\n"
CHROOT_GROUP = "root:x:0:\ndialout:x:20:asterisk\nasterisk:x:101:\n"


def test_ids_are_read_from_passwd_and_group_texts() -> None:
    assert parse_ids(HOST_PASSWD) == {"root": 0, "postgres": 101}
    assert parse_ids(CHROOT_GROUP) == {"root": 0, "dialout": 20, "asterisk": 101}


def test_the_first_id_no_one_has_is_chosen() -> None:
    assert choose_free_id({500, 501, 503}) == 502
    with pytest.raises(ProvisionError):
        choose_free_id(set(range(500, 1000)))


def test_only_the_named_account_changes() -> None:
    text = set_account_id(CHROOT_PASSWD, "asterisk", 512, 512)
    assert "asterisk:x:512:512:Asterisk PBX daemon:" in text and text.startswith("root:x:0:0:")
    group = set_account_id(CHROOT_GROUP, "asterisk", 512)
    assert "asterisk:x:512:\n" in group and "dialout:x:20:asterisk" in group


def test_modules_to_load_are_read_in_order() -> None:
    conf = "[modules]\nautoload = no\nload = res_pjsip.so\n; load = commented.so\nnoload = res_hep.so\nload => cel_custom.so\n"
    assert modules_to_load(conf) == ["res_pjsip.so", "cel_custom.so"]


def test_a_chroot_is_moved_to_the_new_ids_with_what_its_asterisk_owned(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_part("root, for chown (the chroot is only ever provisioned as root)")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(CHROOT_PASSWD)
    (root / "etc/group").write_text(CHROOT_GROUP)
    logs = root / "var/log/asterisk"
    logs.mkdir(parents=True)
    owned, other = logs / "messages.log", root / "etc/hosts"
    owned.write_text("x")
    other.write_text("y")
    os.chown(logs, 101, 101)
    os.chown(owned, 101, 101)
    os.symlink("/nonexistent-target", logs / "link")  # a dangling link is changed, never followed
    os.lchown(logs / "link", 101, 101)
    assert migrate_chroot_ids(root, 612, 612) is True
    assert parse_ids((root / "etc/passwd").read_text())["asterisk"] == 612
    assert parse_ids((root / "etc/group").read_text())["asterisk"] == 612
    for path in (logs, owned, logs / "link"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (612, 612), path
    assert (other.stat().st_uid, other.stat().st_gid) == (0, 0)
    assert migrate_chroot_ids(root, 612, 612) is False  # nothing left to do
