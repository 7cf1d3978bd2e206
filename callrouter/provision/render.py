"""Render asterisk-conf/ templates into the directory Asterisk reads.

Templates use ``{{name}}`` placeholders, which cannot collide with Asterisk's own
``${VAR}`` and ``$[expr]`` syntax. A placeholder without a value is an error naming the
template file and line, so a half-rendered configuration never reaches Asterisk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from callrouter.config import Settings

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


class RenderError(Exception):
    pass


@dataclass(frozen=True)
class AsteriskPaths:
    """Where Asterisk finds things, as seen by the Asterisk process (inside a chroot)."""

    etc_dir: str = "/etc/asterisk"
    mod_dir: str = "/usr/lib/x86_64-linux-gnu/asterisk/modules"
    varlib_dir: str = "/var/lib/asterisk"
    data_dir: str = "/usr/share/asterisk"
    spool_dir: str = "/var/spool/asterisk"
    run_dir: str = "/run/asterisk"
    log_dir: str = "/var/log/asterisk"

    @property
    def moh_dir(self) -> str:
        return f"{self.data_dir}/moh/callrouter"

    @property
    def sounds_dir(self) -> str:
        return f"{self.data_dir}/sounds/callrouter"

    @property
    def recording_dir(self) -> str:
        """Where MixMonitor writes a call's recording until the engine keeps it."""
        return f"{self.spool_dir}/callrouter-recording"


def render_text(text: str, values: dict[str, str], source: str) -> str:
    missing: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for name in _PLACEHOLDER.findall(line):
            if name not in values:
                missing.append(f"{source}:{lineno}: no value for {{{{{name}}}}}")
    if missing:
        raise RenderError("\n".join(missing))
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def seat_sections(seats: list[str], settings: Settings) -> str:
    out: list[str] = []
    for seat in seats:
        password = settings.secret(f"seat:{seat}")
        out.append(
            f"[{seat}](seat-endpoint)\nauth = {seat}\naors = {seat}\n"
            f"transport = transport-udp\ncallerid = \"{seat}\" <{seat}>\n\n"
            f"[{seat}](seat-auth)\nusername = {seat}\npassword = {password}\n\n"
            f"[{seat}](seat-aor)\n"
        )
    return "\n".join(out)


def bench_queue_dialplan(settings: Settings) -> str:
    """Benchmark baseline (bench_trunk_ip only): the engine's routing done by app_queue.

    Each listed number goes to its line's queue (the number plan, as the engine routes
    it); anything else to 96345, as the engine does with unlisted numbers. Arrival time
    and the answering member are written to queue_log (BENCHANSWER) with milliseconds.
    """
    from callrouter.numberplan import load_plan

    plan = load_plan(settings.numberplan_path)
    out = ["", "; Benchmark baseline: the engine's two lines as app_queue queues.", "[bench-queue]"]
    for entry in plan.entries:
        if entry.number.isdigit():
            out.append(f"exten => {entry.number},1,Set(__BQ_LINE={entry.line})\n"
                       " same => n,Goto(bench-queue-hold,${EXTEN},1)")
    out += ["exten => _X!,1,Set(__BQ_LINE=96345)", " same => n,Goto(bench-queue-hold,${EXTEN},1)", "",
            "[bench-queue-hold]",
            "exten => _X!,1,Set(__BQ_T0=${STRFTIME(,,%s.%3q)})",
            " same => n,Set(__BQ_UID=${UNIQUEID})",
            " same => n,Answer()",
            " same => n,Queue(bench-${BQ_LINE},,,,,,bench-queue-answered)",
            " same => n,Hangup()", "",
            "; runs on the member's channel once it answered, before the bridge",
            "[bench-queue-answered]",
            ("exten => s,1,QueueLog(bench-${BQ_LINE},${BQ_UID},${CHANNEL(name)},BENCHANSWER,"
            "${BQ_T0}|${STRFTIME(,,%s.%3q)})"),
            " same => n,Return()", ""]
    return "\n".join(out)


def bench_greeting_dialplan(settings: Settings) -> str:
    """Benchmark baseline (bench_trunk_ip only), in [bench-plain]: 'G' + a line id answers
    as [callrouter-engine] does (Answer's i: no wait for the caller's first audio), then
    plays that line's greeting, the prompt the engine plays over ARI (scripts/bench_answer.py:
    200 OK -> first greeting audio, the same work without the engine). One extension per
    line of the lines file: nothing the caller dials reaches the prompt's name."""
    from callrouter.acd import load_lines

    out = ["; 'G' + line id: answered here at once, then the line's greeting (as the engine plays it)"]
    for line in load_lines(settings.lines_path).lines:
        out += [f"exten => G{line.id},1,Answer(,i)", f" same => n,Playback(callrouter/greeting-{line.id})",
                " same => n,MusicOnHold(default)", " same => n,Hangup()"]
    return "\n".join(out) + "\n"


def bench_queue_sections(settings: Settings) -> str:
    """queues.conf for the baseline: one queue per line with the line's own seats
    (penalty 0) and the overflow seats allowed on it (penalty 1: rung only when no
    own seat is free), ring timeout and wrap-up from the lines file, leastrecent."""
    from callrouter.acd import load_lines

    cfg = load_lines(settings.lines_path)
    out = ["", "; Benchmark baseline only (bench_trunk_ip): the lines as app_queue queues."]
    for line in cfg.lines:
        out += [f"[bench-{line.id}]", "strategy = leastrecent", f"timeout = {max(1, round(line.ring_timeout_s))}",
                "retry = 1", f"wrapuptime = {round(line.wrap_up_s)}", "ringinuse = no", "autofill = yes",
                "joinempty = yes", "leavewhenempty = no", "announce-frequency = 0", "announce-holdtime = no",
                "periodic-announce-frequency = 0", "musicclass = default"]
        out += [f"member => PJSIP/{s.endpoint},0,{s.id}" for s in line.seats]
        out += [f"member => PJSIP/{p.endpoint},1,{p.id}" for p in cfg.pool if line.id in p.lines]
        out.append("")
    return "\n".join(out)


def stasis_entries(settings: Settings) -> dict[str, str]:
    """How the dialplan hands a channel to the engine: ``Stasis(${CR_APP},...)`` with one
    engine; with several (``ha_app_filter``), ``StasisBroadcast`` to every engine whose
    application name matches, the lease holder claiming it (callrouter.ha). Broadcast
    arguments are colon-delimited: the dialled number stays out of them (it may hold any
    character) and the engine reads it from CR_DIALLED."""
    app_filter = settings.ha_app_filter
    if not app_filter:
        # nothing of the broadcast is loaded: the one-engine path stays as it was
        return {"enter_engine": "Stasis(${CR_APP},${CR_DIALLED})",
                "enter_record": "Stasis(${CR_APP},recording)",
                "enter_feature": "Stasis(${CR_APP},feature,${EXTEN})", "ha_modules": ""}
    if any(c in app_filter for c in ",;\n\r") or "${" in app_filter or "$[" in app_filter:
        raise RenderError(f"ha_app_filter {app_filter!r}: no comma, semicolon, line break, '${{' or '$[' "
                          "(the dialplan would split or expand it; write [,] for a comma)")
    timeout = max(0, min(60000, settings.ha_claim_timeout_ms))
    return {"enter_engine": f"StasisBroadcast({timeout},{app_filter})",
            "enter_record": f"StasisBroadcast({timeout},{app_filter},recording)",
            "enter_feature": f"StasisBroadcast({timeout},{app_filter},feature:${{EXTEN}})",
            "ha_modules": ("; several engines (ha_app_filter): StasisBroadcast and POST /events/claim\n"
                           "load = res_stasis_broadcast.so\nload = app_stasis_broadcast.so\n")}


def template_values(settings: Settings, paths: AsteriskPaths, seats: list[str]) -> dict[str, str]:
    media = ""
    if settings.sip_bind not in ("0.0.0.0", "::", ""):
        # RTP sockets on the same address as SIP: nothing listens beyond it.
        media = f"media_address = {settings.sip_bind}\nbind_rtp_to_media_address = yes"
    bench_trunk = bench_context = bench_queues = bench_modules = ""
    if settings.bench_trunk_ip:
        # Latency baseline only: a second trunk whose context answers in plain dialplan.
        bench_trunk = (
            "\n[bench-trunk](media-common)\ntransport = transport-udp\n"
            "context = bench-plain\nidentify_by = ip\n\n"
            f"[bench-trunk-identify]\ntype = identify\nendpoint = bench-trunk\n"
            f"match = {settings.bench_trunk_ip}\n"
        )
        bench_context = (
            "\n; Benchmark baseline: answer in plain dialplan, then hold.\n[bench-plain]\n"
            "exten => _X!,1,Answer()\n same => n,MusicOnHold(default)\n same => n,Hangup()\n"
            "exten => _+!,1,Answer()\n same => n,MusicOnHold(default)\n same => n,Hangup()\n"
            "; 'Q' + number: the same caller through Asterisk's own app_queue instead\n"
            "exten => _Q.,1,Goto(bench-queue,${EXTEN:1},1)\n"
        ) + bench_greeting_dialplan(settings) + bench_queue_dialplan(settings)
        bench_queues = bench_queue_sections(settings)
        bench_modules = "\n; benchmark baseline only: Gosub on the answering queue member\nload = app_stack.so\n"
    return {
        **{k: getattr(paths, k) for k in ("etc_dir", "mod_dir", "varlib_dir", "data_dir",
                                          "spool_dir", "run_dir", "log_dir")},
        "moh_dir": paths.moh_dir,
        "recording_dir": paths.recording_dir,
        "sip_bind": settings.sip_bind,
        "sip_port": str(settings.sip_port),
        "http_bind": settings.http_bind,
        "http_port": str(settings.http_port),
        "rtp_start": str(settings.rtp_start),
        "rtp_end": str(settings.rtp_end),
        "ari_app": settings.ari_app,
        "ari_user": settings.ari_user,
        "ari_password": settings.ari_password,
        "trunk_ips": ",".join(settings.trunk_ips),
        "fallback_hold_s": str(settings.fallback_hold_s),
        "media_lines": media,
        "bench_trunk": bench_trunk,
        "bench_context": bench_context,
        "bench_queues": bench_queues,
        "bench_modules": bench_modules,
        "seats": seat_sections(seats, settings),
        **stasis_entries(settings),
        # a cluster node's name (callrouter.provision.cluster): prefixes its channel ids
        "system_name_line": "",
    }


def render_config(settings: Settings, dest: Path, paths: AsteriskPaths, seats: list[str],
                  extra: dict[str, str] | None = None) -> list[Path]:
    """Render every template into ``dest`` (emptied of other .conf files first);
    ``extra`` replaces computed template values.

    Stale configuration left in ``dest`` would be read by Asterisk's modules, so the
    directory ends up holding exactly what asterisk-conf/ holds.
    """
    src = settings.data_dir / "asterisk-conf"
    values = {**template_values(settings, paths, seats), **(extra or {})}
    rendered = {t.name: render_text(t.read_text(), values, str(t)) for t in sorted(src.glob("*.conf"))}
    if not rendered:
        raise RenderError(f"{src}: no *.conf templates found")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_file() and old.suffix == ".conf" and old.name not in rendered:
            old.unlink()
    written = []
    for name, text in rendered.items():
        target = dest / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        # secrets inside: readable by root and the asterisk group only
        tmp.chmod(0o640)
        tmp.replace(target)
        written.append(target)
    return written
