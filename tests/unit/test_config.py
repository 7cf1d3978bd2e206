"""Settings: defaults <- TOML file <- CALLROUTER_* environment, and generated secrets."""

from __future__ import annotations

import ast
import json
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from callrouter.config import DATA_DIRS, ConfigError, Settings, load_settings

WriteConfig = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "callrouter.toml"
        path.write_text(text)
        return path

    return write


def test_defaults_listen_on_loopback_only() -> None:
    s = load_settings(env={})
    assert s == Settings(home=s.home, data_dir=s.data_dir)
    assert (s.sip_bind, s.http_bind, s.api_bind) == ("127.0.0.1", "127.0.0.1", "127.0.0.1")
    assert (s.sip_port, s.http_port, s.api_port) == (5060, 8088, 8080)
    assert s.trunk_ips == ("127.0.0.1",)
    assert s.bench_trunk_ip == ""
    assert s.asterisk_mode == "auto"


def test_a_checkout_reads_its_top_level_data_and_a_setting_overrides_it(tmp_path: Path) -> None:
    # an installed wheel's lookup (callrouter/data/ inside the package) is tested by
    # tests/e2e/test_wheel.py on a real install
    checkout = Path(__file__).resolve().parents[2]
    assert load_settings(env={}).data_dir == checkout
    assert all((checkout / name).is_dir() for name in DATA_DIRS)
    assert load_settings(env={"CALLROUTER_DATA_DIR": str(tmp_path)}).data_dir == tmp_path


def test_the_build_ships_the_data_directories_the_lookup_expects() -> None:
    # setup.py cannot import the package: its list is kept in step by this test
    checkout = Path(__file__).resolve().parents[2]
    setup = ast.parse((checkout / "setup.py").read_text())
    (built,) = [ast.literal_eval(node.value) for node in setup.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "DATA_DIRS" for t in node.targets)]
    assert tuple(built) == DATA_DIRS
    grafts = re.findall(r"(?m)^graft (\S+)$", (checkout / "MANIFEST.in").read_text())
    assert sorted(grafts) == sorted(DATA_DIRS)


def test_derived_paths_follow_home_and_data_dir(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "state", data_dir=tmp_path / "data")
    assert s.chroot == tmp_path / "state" / "asterisk-root"
    assert s.numberplan_path == tmp_path / "data" / "queues" / "numberplan.csv"
    assert s.database_url == f"sqlite:///{tmp_path / 'state' / 'tickets.sqlite3'}"
    assert s.secrets_path == tmp_path / "state" / "secrets.json"
    assert s.ari_url == "http://127.0.0.1:8088/ari"


def test_file_overrides_defaults(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(
        'sip_port = 5070\nsip_bind = "192.0.2.1"\ntrunk_ips = ["192.0.2.10", "192.0.2.11"]\n'
        f'home = "{tmp_path / "state"}"\nasterisk_root = "/srv/ast"\n'
    )
    s = load_settings(path, env={})
    assert s.sip_port == 5070
    assert s.sip_bind == "192.0.2.1"
    assert s.trunk_ips == ("192.0.2.10", "192.0.2.11")
    assert s.home == tmp_path / "state"
    assert s.asterisk_root == Path("/srv/ast")
    assert s.chroot == Path("/srv/ast")
    assert s.http_port == 8088  # untouched settings keep their defaults


def test_config_file_can_come_from_the_environment(write_config: WriteConfig) -> None:
    path = write_config("http_port = 8090\n")
    assert load_settings(env={"CALLROUTER_CONFIG": str(path)}).http_port == 8090


def test_env_overrides_file(write_config: WriteConfig) -> None:
    path = write_config('sip_port = 5070\nlog_level = "DEBUG"\n')
    s = load_settings(path, env={"CALLROUTER_SIP_PORT": "5080"})
    assert s.sip_port == 5080
    assert s.log_level == "DEBUG"  # not in the environment: the file's value stands


def test_ticket_commit_gap_defaults_to_200_ms_and_is_set_from_the_environment() -> None:
    assert load_settings(env={}).ticket_commit_gap_ms == 200
    assert load_settings(env={"CALLROUTER_TICKET_COMMIT_GAP_MS": "30"}).ticket_commit_gap_ms == 30


def test_env_tuple_is_comma_separated() -> None:
    s = load_settings(env={"CALLROUTER_TRUNK_IPS": "192.0.2.10, 198.51.100.7,,"})
    assert s.trunk_ips == ("192.0.2.10", "198.51.100.7")
    assert load_settings(env={"CALLROUTER_TRUNK_IPS": "a,b"}).trunk_ips == ("a", "b")


def test_unknown_key_names_the_file_and_the_known_keys(write_config: WriteConfig) -> None:
    path = write_config("sip_prot = 5070\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "'sip_prot'" in message
    assert "sip_port" in message  # the fix: the known names are listed


def test_bad_int_in_file_names_the_file_and_setting(write_config: WriteConfig) -> None:
    path = write_config('sip_port = "five"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value).startswith(f"{path}: setting 'sip_port'")
    assert "'five'" in str(info.value)


def test_bad_int_in_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^\$CALLROUTER_HTTP_PORT: setting 'http_port'"):
        load_settings(env={"CALLROUTER_HTTP_PORT": "80a"})


def test_missing_and_malformed_files_name_the_file(write_config: WriteConfig, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_settings(missing, env={})
    assert str(info.value).startswith(str(missing))
    broken = write_config("sip_port = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(broken, env={})
    assert str(info.value).startswith(f"{broken}: ")


# --- secrets -------------------------------------------------------------------------
def test_secrets_reads_without_creating(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "state")
    assert s.secrets() == {}
    assert not s.secrets_path.exists()


def test_secret_generated_once_and_stable(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "state")
    first = s.secret("seat:s110-01")
    assert len(first) >= 24
    assert s.secret("seat:s110-01") == first
    # a new process (new Settings) reads the same file
    again = Settings(home=tmp_path / "state")
    assert again.secret("seat:s110-01") == first
    other = again.secret("seat:s110-02")
    assert other != first
    assert json.loads(s.secrets_path.read_text()) == {"seat:s110-01": first, "seat:s110-02": other}
    assert s.ari_password == s.secret("ari_password") == s.secrets()["ari_password"]


def test_secrets_file_is_private(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "state")
    s.secret("ari_password")
    assert stat.S_IMODE(s.secrets_path.stat().st_mode) == 0o600
    s.secret("seat:s110-01")  # rewritten: still private
    assert stat.S_IMODE(s.secrets_path.stat().st_mode) == 0o600
    assert [p.name for p in s.secrets_path.parent.iterdir()] == ["secrets.json"]  # no temp file left
