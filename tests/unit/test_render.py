"""Rendering asterisk-conf/ templates: placeholders, errors, and the shipped templates' properties."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from callrouter.config import Settings
from callrouter.provision.render import AsteriskPaths, RenderError, render_config, render_text

TEMPLATES = Path(__file__).resolve().parents[2] / "asterisk-conf"
SEATS = ["s110-01", "s110-02", "s96345-01"]

MakeSettings = Callable[..., Settings]
Render = Callable[..., dict[str, str]]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    def make(**overrides: Any) -> Settings:
        # home in tmp_path: generated secrets land there, never in the user's state
        return Settings(home=tmp_path / "state", data_dir=TEMPLATES.parent, **overrides)

    return make


@pytest.fixture
def render(tmp_path: Path, make_settings: MakeSettings) -> Render:
    """Render the shipped templates; returns {file name: text}."""

    def run(dest: Path | None = None, seats: list[str] | None = None, **overrides: Any) -> dict[str, str]:
        dest = dest or tmp_path / "etc-asterisk"
        written = render_config(make_settings(**overrides), dest, AsteriskPaths(),
                                SEATS if seats is None else seats)
        assert all(p.parent == dest for p in written)
        return {p.name: p.read_text() for p in written}

    return run


def section(text: str, name: str) -> list[str]:
    """The non-blank, non-comment lines of ``[name]`` (up to the next section header)."""
    lines: list[str] = []
    inside = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped.split("]")[0] == f"[{name}"
            continue
        if inside and stripped and not stripped.startswith(";"):
            lines.append(stripped)
    return lines


# --- render_text ---------------------------------------------------------------------
def test_render_text_substitutes() -> None:
    assert render_text("bind = {{host}}:{{port}}\n", {"host": "127.0.0.1", "port": "5060"}, "t") == \
        "bind = 127.0.0.1:5060\n"


def test_missing_placeholder_names_file_and_line() -> None:
    text = "[general]\nbind = {{host}}\nport = {{port}}\nagain = {{host}} {{known}}\n"
    with pytest.raises(RenderError) as info:
        render_text(text, {"known": "x"}, "/tmp/asterisk-conf/http.conf")
    assert str(info.value).splitlines() == [
        "/tmp/asterisk-conf/http.conf:2: no value for {{host}}",
        "/tmp/asterisk-conf/http.conf:3: no value for {{port}}",
        "/tmp/asterisk-conf/http.conf:4: no value for {{host}}",
    ]


def test_asterisk_syntax_is_untouched() -> None:
    text = ("exten => _X!,1,Set(CR_DIALLED=${EXTEN})\n"
            " same => n,GotoIf($[\"${STASISSTATUS}\" = \"FAILED\"]?held)\n"
            " same => n,Set(CR_HELD=$[0${CR_HELD} + 1])\n"
            " same => n,Stasis(${CR_APP},${CR_DIALLED}) ; {{app}}\n"
            "${{{app}}}\n")
    out = render_text(text, {"app": "callrouter"}, "extensions.conf")
    assert out == text.replace("{{app}}", "callrouter")
    assert "${EXTEN}" in out and "$[0${CR_HELD} + 1]" in out


# --- render_config over the shipped templates ----------------------------------------
def test_every_template_rendered_and_complete(render: Render, tmp_path: Path) -> None:
    out = render()
    assert sorted(out) == sorted(p.name for p in TEMPLATES.glob("*.conf"))
    for name, text in out.items():
        assert "{{" not in text and "}}" not in text, name
    for path in (tmp_path / "etc-asterisk").iterdir():
        # secrets inside: owner and group only
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name


def test_settings_reach_the_files(render: Render, make_settings: MakeSettings) -> None:
    out = render(sip_bind="192.0.2.1", sip_port=5070, http_port=8090, ari_user="cr", rtp_start=12000)
    assert "bind = 192.0.2.1:5070" in out["pjsip.conf"]
    assert "media_address = 192.0.2.1" in out["pjsip.conf"]
    assert "bindport = 8090" in out["http.conf"]
    assert "rtpstart = 12000" in out["rtp.conf"]
    ari = section(out["ari.conf"], "cr")
    assert f"password = {make_settings().ari_password}" in ari


def test_seats_have_distinct_generated_passwords(render: Render, make_settings: MakeSettings,
                                                 tmp_path: Path) -> None:
    pjsip = render()["pjsip.conf"]
    settings = make_settings()
    passwords = []
    for seat in SEATS:
        assert f"[{seat}](seat-endpoint)" in pjsip
        assert f"[{seat}](seat-aor)" in pjsip
        auth = section(pjsip.replace(f"[{seat}](seat-auth)", f"[auth:{seat}]"), f"auth:{seat}")
        assert f"username = {seat}" in auth
        (password,) = [line.split("=", 1)[1].strip() for line in auth if line.startswith("password")]
        assert password == settings.secret(f"seat:{seat}")
        passwords.append(password)
    assert len(set(passwords)) == len(SEATS)
    assert len(set(passwords) | {settings.ari_password}) == len(SEATS) + 1
    assert settings.secrets_path.parent == tmp_path / "state"
    # rendering again keeps every password: phones stay registered
    assert render()["pjsip.conf"] == pjsip


def test_stale_conf_files_are_removed(render: Render, tmp_path: Path) -> None:
    dest = tmp_path / "etc-asterisk"
    dest.mkdir()
    (dest / "sip.conf").write_text("[general]\n")  # chan_sip leftovers must not be read
    (dest / "pjsip.conf").write_text("old\n")
    (dest / "keys").mkdir()  # directories are left alone
    out = render(dest)
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == sorted(out)
    assert not (dest / "sip.conf").exists()
    assert (dest / "pjsip.conf").read_text() != "old\n"
    assert (dest / "keys").is_dir()


def test_trunk_identify_matches_trunk_ips(render: Render) -> None:
    pjsip = render(trunk_ips=("192.0.2.10", "198.51.100.7"))["pjsip.conf"]
    identify = section(pjsip, "trunk-identify")
    assert "endpoint = trunk" in identify
    assert "match = 192.0.2.10,198.51.100.7" in identify


def test_bench_trunk_only_when_configured(render: Render) -> None:
    plain = render()
    assert "bench" not in plain["pjsip.conf"]
    assert "bench" not in plain["extensions.conf"]

    bench = render(bench_trunk_ip="127.0.0.2")
    identify = section(bench["pjsip.conf"], "bench-trunk-identify")
    assert "endpoint = bench-trunk" in identify
    assert "match = 127.0.0.2" in identify
    assert "context = bench-plain" in section(bench["pjsip.conf"], "bench-trunk")
    assert "exten => _X!,1,Answer()" in section(bench["extensions.conf"], "bench-plain")
    # the carrier trunk is unchanged by the bench trunk
    assert section(bench["pjsip.conf"], "trunk") == section(plain["pjsip.conf"], "trunk")


def test_bench_greeting_per_line_answers_as_the_engine_context(render: Render) -> None:
    """bench_answer's plain path: 'G' + line answers without waiting for the caller's audio
    (as [callrouter-engine]) and plays that line's greeting, the engine's prompt."""
    out = render(bench_trunk_ip="127.0.0.2")["extensions.conf"]
    plain = section(out, "bench-plain")
    assert "Answer(,i)" in "\n".join(section(out, "callrouter-engine"))
    for line in ("110", "96345"):
        at = plain.index(f"exten => G{line},1,Answer(,i)")
        assert plain[at + 1] == f"same => n,Playback(callrouter/greeting-{line})"
    # one extension per line: what the caller dials never names the prompt
    assert not [x for x in plain if "Playback(" in x and "${" in x]


_DIALPLAN_LINE = re.compile(r"^(?:exten\s*=>\s*[^,]+,|same\s*=>\s*)[^,]+,(\w+)\((.*)\)$")


@pytest.mark.parametrize("bench_trunk_ip", ["", "127.0.0.2"])
def test_trunk_context_reaches_only_the_engine(render: Render, bench_trunk_ip: str) -> None:
    """Security: whatever the trunk dials, it can only Set a variable and go to the engine."""
    out = render(bench_trunk_ip=bench_trunk_ip)
    assert "context = from-trunk" in section(out["pjsip.conf"], "trunk")
    extensions = out["extensions.conf"]
    lines = section(extensions, "from-trunk")
    assert lines, "no [from-trunk] context"
    assert "Dial(" not in "\n".join(lines)
    for line in lines:
        m = _DIALPLAN_LINE.match(line)
        assert m, f"not a plain dialplan step (include, switch, ...?): {line}"
        app, data = m.groups()
        assert app in ("Set", "Goto"), line
        if app == "Goto":
            assert data.startswith("callrouter-engine,"), line
    # the engine context itself dials nothing and leaves only to its own labels
    engine = "\n".join(section(extensions, "callrouter-engine"))
    assert engine
    assert "Dial(" not in engine and "include" not in engine
    assert re.findall(r"\bGoto\(([^)]*)\)", engine) == ["enter"]


def test_one_engine_gets_plain_stasis_several_get_the_broadcast(render: Render) -> None:
    plain = render()["extensions.conf"]
    assert "same => n(enter),Stasis(${CR_APP},${CR_DIALLED})" in plain and "StasisBroadcast(" not in plain
    ha = render(ha_app_filter="^callrouter-", ha_claim_timeout_ms=700)["extensions.conf"]
    assert "same => n(enter),StasisBroadcast(700,^callrouter-)" in ha
    assert "StasisBroadcast(700,^callrouter-,recording)" in ha
    assert "StasisBroadcast(700,^callrouter-,feature:${EXTEN})" in ha
    assert "Stasis(${CR_APP}" not in ha
    # an unclaimed call (TIMEOUT) falls into the hold like an engine that is away (FAILED)
    assert ha.count('"${STASISSTATUS}" = "TIMEOUT"') == 3
    assert "stasis_broadcast" not in render()["modules.conf"], "one engine loads nothing of the broadcast"
    modules = render(ha_app_filter="^callrouter-")["modules.conf"]
    assert "load = app_stasis_broadcast.so" in modules and "load = res_stasis_broadcast.so" in modules


def test_a_filter_the_dialplan_would_split_is_refused(render: Render) -> None:
    for bad in ("^a,b", "^a;b", "^${X}", "^a\nb"):
        with pytest.raises(RenderError, match="ha_app_filter"):
            render(ha_app_filter=bad)
