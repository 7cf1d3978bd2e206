"""`callrouter ...`: the one entry point for operators, testers and the demo.

Each subcommand is a few lines that call into the module owning the job; output meant
for machines is JSON on stdout, diagnostics go to stderr. Exit codes: 0 ok, 1 the
thing checked is wrong (invalid plan, failed calls), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from callrouter.config import ConfigError, Settings, load_settings
from callrouter.logs import setup_logging

if TYPE_CHECKING:
    from callrouter.tickets import TicketStore

Handler = Callable[[argparse.Namespace, Settings], int]


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=None if not sys.stdout.isatty() else 2)
    sys.stdout.write("\n")


# ------------------------------------------------------------------ asterisk
def cmd_asterisk(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.provision import asterisk

    if args.action == "up":
        report = asterisk.up(settings)
        _print_json({"mode": report.mode, "root": report.root, "started": report.started,
                     "built_chroot_s": report.built_chroot_s, "seconds": round(report.seconds, 3)})
    elif args.action == "down":
        target = asterisk.select_target(settings)
        was = asterisk.stop(target)
        _print_json({"stopped": was})
    elif args.action == "watch":
        # in the foreground until SIGTERM / Ctrl-C: what a service manager runs
        import signal
        import threading

        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        asterisk.up(settings)
        restarts = asterisk.watch(settings, stop)
        _print_json({"restarts": restarts})
    else:
        info = asterisk.status(settings)
        _print_json(info)
        return 0 if info["running"] else 1
    return 0


# ------------------------------------------------------------------ cluster
def cmd_cluster(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.provision import cluster

    if args.action == "up":
        report = cluster.up(settings, args.nodes)
        _print_json({"started": report.started, "kept": report.kept, "elsewhere": report.remote,
                     "built_chroot_s": report.built_chroot_s, "seconds": round(report.seconds, 3)})
    elif args.action == "down":
        _print_json({"stopped": cluster.down(settings, args.nodes)})
    else:
        info = cluster.status(settings, args.nodes)
        _print_json(info)
        return 0 if info["healthy"] else 1
    return 0


# ------------------------------------------------------------------ plan
def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.numberplan import PlanError, check_plan, load_plan

    path = Path(args.file) if args.file else settings.numberplan_path
    if args.action == "reload":
        status, result = _api(settings, "POST", "/api/plan/reload")
        _print_json(result)
        return 0 if status == 200 else 1
    if args.action == "check":
        problems = check_plan(path)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{path}: ok, {len(load_plan(path).entries)} numbers")
        return 1 if problems else 0
    try:
        plan = load_plan(path)
    except PlanError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.action == "list":
        entries = plan.to_json_list()
        if args.json:
            _print_json(entries)
        else:
            for e in entries:
                print(f"{e['number']:>12}  {e['line']:>5}  p{e['priority']}  {e['category']:<24} {e['department']}")
        return 0
    route = plan.route(args.number)
    _print_json({"dialled": route.dialled, "number": route.number, "line": route.line,
                 "category": route.category, "department": route.department,
                 "priority": route.priority, "description": route.description, "listed": route.listed})
    return 0


# ------------------------------------------------------------------ tickets
def cmd_tickets(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.tickets import TicketStore

    if args.action == "consume":
        return _tickets_consume(args, settings)
    store = TicketStore(settings.database_url)
    try:
        store.create_schema()
        if args.action == "callbacks":
            rows = store.callbacks(pending_only=not args.all)
        elif args.action == "callback-done":
            return _tickets_callback_done(store, args)
        else:
            rows = store.list(limit=args.limit, line=args.line)
    finally:
        store.close()
    if args.json:
        _print_json(rows)
    elif args.action == "callbacks":
        for r in rows:
            print(f"{r['id']}  {r['line']:>5}  {r['caller'] or '-':<14} requested {r['callback_requested_at']}  "
                  f"attempts {r['callback_attempts']}  last {r['callback_outcome'] or '-'}")
    else:
        for r in rows:
            print(f"{r['id']}  {r['line']:>5}  {r['category']:<22} {r['dialled']:<14} {r['caller'] or '-':<14} "
                  f"{r['arrived_at']}  {r['outcome'] or 'open'}")
    return 0


def _tickets_callback_done(store: TicketStore, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from callrouter.tickets import RecordCallback

    if store.get(args.ticket) is None:
        print(f"callrouter: no ticket {args.ticket}", file=sys.stderr)
        return 1
    store.apply([RecordCallback(args.ticket, datetime.now(UTC), args.seat, args.outcome)])
    _print_json(store.get(args.ticket))
    return 0


def _tickets_consume(args: argparse.Namespace, settings: Settings) -> int:
    import os
    import socket

    from redis.asyncio import Redis

    from callrouter.tickets.consumer import GroupConsumer, StreamEvent
    from callrouter.tickets.relay import stream_name

    def show(event: StreamEvent) -> None:
        sys.stdout.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        sys.stdout.flush()  # printed before it is acknowledged

    async def consume() -> int:
        redis = Redis.from_url(settings.redis_url, decode_responses=True,
                               socket_timeout=args.block_ms / 1000 + 10, socket_connect_timeout=5)
        try:
            consumer = GroupConsumer(redis, args.stream or stream_name(settings.redis_prefix), args.group,
                                     args.consumer or f"{socket.gethostname()}-{os.getpid()}",
                                     count=args.count, block_ms=args.block_ms, idle_claim_ms=args.idle_claim_ms,
                                     max_deliveries=args.max_deliveries)
            try:
                return await consumer.run(show, max_events=args.max_events)
            finally:
                if consumer.behind:
                    # the log line said it when it happened; repeat it where a script looks
                    sys.stderr.write(f"warning: group {args.group} fell behind the stream's trim point "
                                     f"{len(consumer.behind)} time(s) and missed {consumer.missed} event(s)\n")
        finally:
            await redis.aclose()

    asyncio.run(consume())
    return 0


# ------------------------------------------------------------------ recordings
def cmd_recordings(args: argparse.Namespace, settings: Settings) -> int:
    import os
    from datetime import UTC, datetime

    from callrouter.recordings import purge_recordings
    from callrouter.tickets import SetLegalHold, TicketStore

    store = TicketStore(settings.database_url)
    try:
        store.create_schema()
        if args.action == "purge":
            report = purge_recordings(store, settings.recordings_path, dry_run=args.dry_run)
            _print_json(report.to_json())
            return 1 if report.failed else 0
        if store.get(args.ticket) is None:
            print(f"callrouter: no ticket {args.ticket}", file=sys.stderr)
            return 1
        by = f"cli:{os.environ.get('SUDO_USER') or os.environ.get('USER') or os.getuid()}"
        store.apply([SetLegalHold(id=args.ticket, held=args.action == "hold", by=by, reason=args.reason,
                                  at=datetime.now(UTC))])
        row = store.get(args.ticket) or {}
        _print_json({"ticket": args.ticket, "legal_hold": row.get("legal_hold"), "recording": row.get("recording")})
        return 0
    finally:
        store.close()


# ------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.engine import run_engine
    from callrouter.shutdown import run_bounded

    # not asyncio.run: its exit waits without limit for worker threads (a hung database call)
    run_bounded(run_engine(settings))
    return 0


# ------------------------------------------------------------------ serve, image
def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.serve import serve

    return serve(settings)


def cmd_image(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.provision import image

    try:
        report = image.build(settings, Path(args.context).resolve(), tag=args.tag)
    except image.ImageError as exc:
        print(f"callrouter image: {exc}", file=sys.stderr)
        return 1
    _print_json(report.to_json())
    return 0


# ------------------------------------------------------------------ sim
def cmd_sim(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.sim import trunk

    if args.action == "seats":
        from callrouter.sim import seats

        return seats.seats_main(args, settings)
    if args.action == "call":
        report = trunk.run_calls(settings, [trunk.CallSpec(args.number, args.caller, args.hold)],
                                 rate=1.0)
    else:
        report = trunk.storm(settings, rate=args.rate, count=args.count, hold=args.hold, seed=args.seed)
    _print_json(report.to_json())
    return 0 if report.failed == 0 else 1


# ------------------------------------------------------------------ staffing
def cmd_staffing(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.capacity.cli import staffing_main

    return staffing_main(args, settings)


# ------------------------------------------------------------------ engine control
def _api(settings: Settings, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, object]:
    """A request to the running engine's API (loopback, token from the secrets file)."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{settings.api_url}{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {settings.secret('api_token')}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError as exc:
        raise EngineUnreachable(f"the engine's API at {settings.api_url} did not answer ({exc}): is `callrouter run` up?") from exc


class EngineUnreachable(Exception):
    pass


def cmd_seats(args: argparse.Namespace, settings: Settings) -> int:
    status, result = _api(settings, "POST", f"/api/seats/{args.seat}/{args.action}",
                          {"reason": args.reason} if args.reason else {})
    _print_json(result)
    return 0 if status == 200 else 1


def cmd_lines(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "reload":
        status, result = _api(settings, "POST", "/api/lines/reload")
    elif args.line is None or args.seat is None:
        print(f"callrouter lines {args.action} LINE SEAT: both are needed", file=sys.stderr)
        return 2
    elif args.action == "add-seat":
        status, result = _api(settings, "POST", f"/api/lines/{args.line}/seats", {"seat": args.seat})
    else:
        status, result = _api(settings, "DELETE", f"/api/lines/{args.line}/seats/{args.seat}")
    _print_json(result)
    return 0 if status == 200 else 1


def cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.api.tokens import TokenError, TokenStore

    store = TokenStore(settings.home / "tokens.json", settings.secret("api_token"))
    if args.role == "unit" and args.unit and settings.units_path.exists():
        from callrouter.dispatch.units import UnitsError, load_units
        from callrouter.numberplan import PlanError, load_plan

        try:
            units = load_units(settings.units_path, load_plan(settings.numberplan_path))
        except (UnitsError, PlanError) as exc:
            print(f"callrouter tokens: {exc}", file=sys.stderr)
            return 2
        if units.unit(args.unit) is None:
            print(f"callrouter tokens: no unit {args.unit!r} in {settings.units_path} (the [[unit]] ids there)",
                  file=sys.stderr)
            return 2
    try:
        token = store.create(args.role, args.seat, args.name, unit=args.unit)
    except TokenError as exc:
        print(f"callrouter tokens: {exc}", file=sys.stderr)
        return 2
    _print_json({"token": token, "role": args.role, "seat": args.seat,
                 **({"unit": args.unit} if args.unit else {}), "note": "shown once; only its SHA-256 is kept"})
    return 0


def cmd_calls(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        status, result = _api(settings, "GET", "/api/calls")
    elif args.action == "consult":
        status, result = _api(settings, "POST", f"/api/calls/{args.call}/consult", {"line": args.line})
    elif args.action == "transfer":
        status, result = _api(settings, "POST", f"/api/calls/{args.call}/transfer",
                              {"to": args.to, "reason": args.reason})
    else:
        status, result = _api(settings, "DELETE", f"/api/calls/{args.call}")
    _print_json(result)
    return 0 if status == 200 else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """From Redis (what supervisors' tools read) or the state file; else from the engine."""
    from callrouter.api import status_summary
    from callrouter.calls.snapshot import read_state

    saved = asyncio.run(read_state(settings.redis_url, settings.state_path, settings.redis_prefix))
    summary = status_summary(saved, now=time.time()) if saved else None
    if summary is None:
        _, live = _api(settings, "GET", "/api/status")
        summary = live if isinstance(live, dict) else {}
    if args.json:
        _print_json(summary)
    else:
        for line_id, line in summary.get("lines", {}).items():
            seats = ", ".join(f"{k} {v}" for k, v in (line.get("seats") or {}).items() if v)
            print(f"{line_id:>5}  waiting {line['waiting']:>3}  longest {line['longest_wait_s']:>6.1f} s  "
                  f"overflow {'ON ' if line['overflow_active'] else 'off'}  SL {line['service_level']}  seats: {seats}")
    return 0


# ------------------------------------------------------------------ dispatch
def cmd_dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.acd.errors import ConfigFileError
    from callrouter.dispatch import dispatcher, report
    from callrouter.numberplan import PlanError, load_plan

    try:
        if args.action == "run":
            done = asyncio.run(dispatcher.serve(settings, name=args.name, idle_claim_ms=args.claim_idle_ms))
            _print_json(done.status())
            return 0
        if args.action == "report":
            from callrouter.dispatch.store import month_bounds

            month_bounds(args.month)  # a bad month is a usage error before any database is opened
            store = dispatcher.open_store(settings)
            try:
                rows = store.monthly_report(args.month)
            finally:
                store.tickets.close()
            if args.json:
                _print_json(rows)
            else:
                sys.stdout.write(report.to_csv(rows) if args.csv else report.to_text(rows))
            return 0
        from callrouter.dispatch.units import load_units

        path = Path(args.file) if getattr(args, "file", None) else settings.units_path
        units = load_units(path, load_plan(settings.numberplan_path))
        if args.action == "secret":
            unit = units.unit(args.unit)
            if unit is None:
                print(f"callrouter: no unit {args.unit!r} in {path}", file=sys.stderr)
                return 1
            if unit.webhook is None:
                print(f"callrouter: note: unit {unit.id} has no webhook (notify.webhook) in {path}", file=sys.stderr)
            print(dispatcher.unit_secret(settings, unit.id))
            return 0
        print(f"{path}: ok, {len(units.towns)} towns, {len(units.units)} units")
        return 0
    except (ConfigFileError, PlanError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ValueError as exc:  # a month that is not YYYY-MM
        print(f"callrouter: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from callrouter.demo import run_demo

    return run_demo(settings, calls=args.calls, rate=args.rate, keep_running=args.keep_running)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callrouter",
                                description="Unified hotline call routing on Asterisk (110 / 96345).")
    p.add_argument("--config", help="TOML settings file (else $CALLROUTER_CONFIG); env CALLROUTER_* overrides")
    p.add_argument("--log-level", default=None)
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("asterisk", help="provision and control the real Asterisk")
    a.add_argument("action", choices=["up", "down", "status", "watch"],
                   help="watch: bring Asterisk up and start it again whenever it dies (foreground)")
    a.set_defaults(func=cmd_asterisk)

    cl = sub.add_parser("cluster", help="Kamailio in front of several Asterisk nodes (issue 11)")
    cl.add_argument("action", choices=["up", "down", "status"],
                    help="up: start Kamailio and the nodes on this machine; down: stop them; status: JSON")
    cl.add_argument("--nodes", type=int, default=None,
                    help="how many Asterisk nodes (default: cluster_size, 2; or as many as cluster_nodes)")
    cl.set_defaults(func=cmd_cluster)

    pl = sub.add_parser("plan", help="the legacy number plan")
    psub = pl.add_subparsers(dest="action", required=True)
    c = psub.add_parser("check", help="validate; exit 1 with file:line errors")
    c.add_argument("file", nargs="?")
    ls = psub.add_parser("list", help="every entry")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--file")
    rl = psub.add_parser("reload", help="the running engine validates and loads the plan again")
    rl.add_argument("--file", help=argparse.SUPPRESS)
    r = psub.add_parser("route", help="where a dialled number goes")
    r.add_argument("number")
    r.add_argument("--file")
    pl.set_defaults(func=cmd_plan)

    t = sub.add_parser("tickets", help="call tickets")
    tsub = t.add_subparsers(dest="action", required=True)
    tl = tsub.add_parser("list")
    tl.add_argument("--json", action="store_true")
    tl.add_argument("--limit", type=int, default=50)
    tl.add_argument("--line", choices=["110", "96345"])
    tc = tsub.add_parser("callbacks", help="tickets flagged for a call back (abandoned 110 calls)")
    tc.add_argument("--json", action="store_true")
    tc.add_argument("--all", action="store_true", help="also those already reached")
    td = tsub.add_parser("callback-done", help="record a call back attempt")
    td.add_argument("ticket")
    td.add_argument("--seat", required=True)
    td.add_argument("--outcome", required=True, choices=["reached", "no_answer"])
    tk = tsub.add_parser("consume", help="read the dispatch stream with a consumer group; one JSON line per event")
    tk.add_argument("--group", required=True)
    tk.add_argument("--consumer", help="consumer name (default host-pid; reuse it to resume its pending events)")
    tk.add_argument("--count", type=int, default=100, help="events per read")
    tk.add_argument("--idle-claim-ms", type=int, default=30_000,
                    help="claim events another consumer left pending this long (XAUTOCLAIM)")
    tk.add_argument("--max-deliveries", type=int, default=5,
                    help="an event delivered more often goes to the dead-letter stream <stream>:dead")
    tk.add_argument("--block-ms", type=int, default=1000, help=argparse.SUPPRESS)
    tk.add_argument("--max-events", type=int, default=None, help="exit after this many events")
    tk.add_argument("--stream", help="default <redis_prefix>:tickets")
    t.set_defaults(func=cmd_tickets)

    rc = sub.add_parser("recordings", help="call recordings: purge past retention, legal hold")
    rcsub = rc.add_subparsers(dest="action", required=True)
    rp = rcsub.add_parser("purge", help="delete recordings past their line's retention, unless on legal hold; "
                                        "each deletion is written to its ticket's events")
    rp.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    for action, what in (("hold", "put a ticket on legal hold: its recording is never purged"),
                         ("release", "release a ticket's legal hold")):
        rh = rcsub.add_parser(action, help=what)
        rh.add_argument("ticket")
        rh.add_argument("--reason", required=True, help="e.g. the case or order number")
    rc.set_defaults(func=cmd_recordings)

    ru = sub.add_parser("run", help="run the engine (ARI) until SIGTERM")
    ru.set_defaults(func=cmd_run)

    sv = sub.add_parser("serve", help="Asterisk and the engine in the foreground until SIGTERM (what the "
                                      "container image runs)")
    sv.set_defaults(func=cmd_serve)

    im = sub.add_parser("image", help="build the container image with podman (no Docker engine, no registry "
                                      "needed)")
    imsub = im.add_subparsers(dest="action", required=True)
    ib = imsub.add_parser("build", help="the Dockerfile on a debootstrap'd Debian sid base, pip configured "
                                        "as on this host")
    ib.add_argument("--context", default=".", help="the directory holding the Dockerfile (a checkout)")
    ib.add_argument("--tag", default="localhost/callrouter:latest")
    im.set_defaults(func=cmd_image)

    s = sub.add_parser("sim", help="simulated carrier trunk (SIPp)")
    ssub = s.add_subparsers(dest="action", required=True)
    sc = ssub.add_parser("call", help="one call to NUMBER")
    sc.add_argument("number")
    sc.add_argument("--from", dest="caller", default="13800000000")
    sc.add_argument("--hold", type=float, default=3.0, help="seconds before the caller hangs up")
    ss = ssub.add_parser("storm", help="many calls to numbers drawn from the plan")
    ss.add_argument("--rate", type=float, default=10.0, help="calls per second")
    ss.add_argument("--count", type=int, default=50)
    ss.add_argument("--hold", type=float, default=3.0)
    ss.add_argument("--seed", type=int, default=1)
    sx = ssub.add_parser("seats", help="simulated seat softphones: register, answer, talk (SIPp)")
    from callrouter.sim.seats import add_seats_arguments

    add_seats_arguments(sx)
    s.set_defaults(func=cmd_sim)

    st = sub.add_parser("status", help="per line: waiting, longest wait, seats by state, overflow")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    se = sub.add_parser("seats", help="log a seat in or out, pause or resume it (running engine)")
    se.add_argument("action", choices=["login", "logout", "pause", "resume"])
    se.add_argument("seat")
    se.add_argument("--reason", default="")
    se.set_defaults(func=cmd_seats)

    li = sub.add_parser("lines", help="add or remove seats of a line at runtime (running engine)")
    li.add_argument("action", choices=["add-seat", "remove-seat", "reload"])
    li.add_argument("line", nargs="?", choices=["110", "96345"])
    li.add_argument("seat", nargs="?")
    li.set_defaults(func=cmd_lines)

    tk = sub.add_parser("tokens", help="API tokens with roles (stored hashed)")
    tksub = tk.add_subparsers(dest="action", required=True)
    tc = tksub.add_parser("create", help="print a new token once")
    tc.add_argument("--role", required=True, choices=["agent", "supervisor", "admin", "unit", "intake"])
    tc.add_argument("--seat", help="the seat an agent token acts on")
    tc.add_argument("--unit", help="the unit (id in queues/units.toml) a unit token acts for")
    tc.add_argument("--name", default="", help="who holds it (for the record; an intake token: the channel system)")
    tk.set_defaults(func=cmd_tokens)

    ca = sub.add_parser("calls", help="live calls of the running engine: list, transfer, hang up")
    csub = ca.add_subparsers(dest="action", required=True)
    csub.add_parser("list")
    ct = csub.add_parser("transfer", help="hand a talking caller to the other line")
    ct.add_argument("call")
    ct.add_argument("--to", required=True, choices=["110", "96345"])
    ct.add_argument("--reason", default="")
    cc = csub.add_parser("consult", help="bring a seat of the other line into the call (three-way)")
    cc.add_argument("call")
    cc.add_argument("--line", required=True, choices=["110", "96345"])
    ch = csub.add_parser("hangup")
    ch.add_argument("call")
    ca.set_defaults(func=cmd_calls)

    # `callrouter simulate SCENARIO ...` is dispatched in main() before this parser
    sub.add_parser("simulate", help="capacity simulator on the ACD core: callrouter simulate --help")

    sf = sub.add_parser("staffing", help="seats per hour per line and the overflow pool that meet the targets; "
                                         "what-if (simulated on the ACD core)")
    from callrouter.capacity.cli import add_arguments as add_staffing_arguments

    add_staffing_arguments(sf)
    sf.set_defaults(func=cmd_staffing)

    dp = sub.add_parser("dispatch", help="dispatch orders to the units: the dispatcher, the monthly report, "
                                         "webhook secrets, the units file")
    dpsub = dp.add_subparsers(dest="action", required=True)
    dr = dpsub.add_parser("run", help="run a dispatcher until SIGTERM (several may run at once)")
    dr.add_argument("--name", help="consumer name in the stream group (default host-pid); a restarted "
                                   "dispatcher with the same name takes up its unacknowledged events at once")
    dr.add_argument("--claim-idle-ms", type=int, default=30_000,
                    help="take over events another dispatcher left unacknowledged this long (default 30000)")
    drep = dpsub.add_parser("report", help="per unit: orders, acknowledged in time, overdue, median times, "
                                           "follow-ups done")
    drep.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    fmt = drep.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    dsec = dpsub.add_parser("secret", help="print a unit's webhook signing secret (generated on first use)")
    dsec.add_argument("unit")
    dun = dpsub.add_parser("units", help="the units file")
    dun.add_argument("units_action", choices=["check"])
    dun.add_argument("--file", help="default: the setting units (queues/units.toml)")
    dp.set_defaults(func=cmd_dispatch)

    d = sub.add_parser("demo", help="bring everything up, run simulated calls and (with Redis) dispatch to "
                                    "simulated units, summarise, stop")
    d.add_argument("--calls", type=int, default=60)
    d.add_argument("--rate", type=float, default=10.0)
    d.add_argument("--keep-running", action="store_true", help="leave Asterisk and the engine running")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        # the simulator parses its own options (SCENARIO --compare --json ...)
        from callrouter.simulate import simulate_main

        return simulate_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"callrouter: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level or settings.log_level)
    handler: Handler = args.func
    try:
        return handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: known errors print, not a traceback
        from callrouter.provision.asterisk import ProvisionError

        if isinstance(exc, ProvisionError | ConfigError | EngineUnreachable):
            print(f"callrouter: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
