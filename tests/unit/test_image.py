"""The container image's pure parts: pip's configuration for inside the build, the
Dockerfile's Debian packages (the base image's contents)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.provision.image import (
    PIP_MOUNTS,
    ImageError,
    base_tag,
    build_pip_config,
    dockerfile_packages,
    parse_pip_config,
)

REPO = Path(__file__).resolve().parents[2]


def test_pip_config_list_is_read_with_the_environment_winning() -> None:
    text = ("global.find-links='/opt/wheels'\n"
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'\n"
            "install.timeout='60'\n"
            ":env:.find-links='/srv/wheels'\n"
            "freeze.all='1'\n"
            "global.timeout='15'\n")
    assert parse_pip_config(text) == {"find-links": "/srv/wheels", "timeout": "60",
                                      "extra-index-url": "file:///opt/pypi/simple file:///opt/more/simple"}


def test_local_paths_are_mounted_and_rewritten_remote_ones_kept(tmp_path: Path) -> None:
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "c.txt").write_text("torch<=2\n")
    conf, mounts = build_pip_config({
        "extra-index-url": f"file://{tmp_path}/pypi/simple https://mirror.example/simple",
        "find-links": f"{tmp_path}/wheels {tmp_path}/gone",
        "constraint": f"{tmp_path}/c.txt",
        "default-timeout": "180",
    })
    # an index's pages link to ../../files: its parent directory is mounted
    assert mounts == {tmp_path / "pypi": f"{PIP_MOUNTS}{tmp_path}/pypi", tmp_path / "wheels": f"{PIP_MOUNTS}{tmp_path}/wheels",
                      tmp_path / "c.txt": f"{PIP_MOUNTS}{tmp_path}/c.txt"}
    assert conf.splitlines() == [
        "[global]",
        f"extra-index-url = file://{PIP_MOUNTS}{tmp_path}/pypi/simple https://mirror.example/simple",
        f"find-links = {PIP_MOUNTS}{tmp_path}/wheels",
        f"constraint = {PIP_MOUNTS}{tmp_path}/c.txt",
        "default-timeout = 180",
    ]


def test_the_dockerfile_names_the_base_images_packages() -> None:
    packages = dockerfile_packages((REPO / "Dockerfile").read_text())
    assert {"asterisk", "python3", "python3-venv", "tini", "espeak-ng"} <= set(packages)
    assert base_tag(packages) == base_tag(list(reversed(packages)))
    assert base_tag(packages) != base_tag([*packages, "gdb"])
    with pytest.raises(ImageError):
        dockerfile_packages("FROM debian:sid\n")
