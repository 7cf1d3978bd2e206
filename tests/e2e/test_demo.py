"""The demo command end to end, with dispatch: `callrouter demo` places real calls, its
dispatcher opens an order for every answered call's ticket, the simulated units
acknowledge and report over the orders API with their unit tokens, the 96345 seats make
the follow-up calls, and the summary says so (about 25 s)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import redis

from callrouter.categories import load_categories
from callrouter.dispatch.store import DispatchStore
from callrouter.numberplan import load_plan
from callrouter.tickets import TicketStore
from tests.conftest import missing_part, wait_for
from tests.e2e.conftest import Engine, EngineFactory, asterisk_leftovers


def test_demo_dispatches_every_answered_call_and_the_units_and_seats_finish(engines: EngineFactory) -> None:
    settings = engines.settings
    try:
        redis.Redis.from_url(settings.redis_url).ping()
    except redis.RedisError as exc:
        missing_part(f"Redis at {settings.redis_url}: {exc}")
    out_path, err_path = engines.tmp / "demo.out", engines.tmp / "demo.log"
    # --keep-running: the session's Asterisk stays up for the tests after this one
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "callrouter.cli", "demo", "--calls", "12", "--keep-running"],
                                stdout=out, stderr=err, env={**os.environ, **engines.env})
    demo = Engine(proc, err_path, engines.db_url)
    engines.started.append(demo)  # stopped by the fixture whatever happens

    def log() -> str:
        return Path(err_path).read_text(errors="replace")
    wait_for(lambda: "kept running" in log() or proc.poll() is not None, 90, "the demo's summary")
    assert proc.poll() is None, log()[-3000:]
    assert "dispatch: units and follow-up calls done" in log(), log()[-3000:]
    assert not asterisk_leftovers(engines)
    assert demo.stop(signal.SIGTERM) == 0, log()[-3000:]

    summary = out_path.read_text()
    got = re.search(r"^dispatch: (\d+) of (\d+) answered calls' tickets got an order$", summary, re.MULTILINE)
    assert got and got[1] == got[2] and int(got[1]) > 0, summary
    answered = int(got[2])
    assert re.search(rf"^  orders {answered}: acknowledged in time {answered}, reported {answered}, escalated 0, "
                     r"still open 0$", summary, re.MULTILINE), summary
    assert f"  tickets solved {answered} of {answered} " in summary, summary
    # categories by their Chinese label, never the slug
    labels = load_categories(settings.categories_path, load_plan(settings.numberplan_path))
    table = summary.split("line    calls  category\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table and all(row.split(None, 2)[2] in labels.values() for row in table), table

    # what the records say: each order acknowledged by its unit through the API, 96345
    # tickets solved after a seat's follow-up call
    store = TicketStore(engines.db_url)
    try:
        tickets = [t for t in store.list(1000) if t.get("seat_answered_at")]
        orders = DispatchStore(store).orders(open_only=False, limit=1000)
    finally:
        store.close()
    assert len(tickets) == answered
    by_ticket = {o["ticket_id"]: o for o in orders}
    assert set(by_ticket) == {t["id"] for t in tickets}
    for order in orders:
        assert order["state"] == "reported" and order["solved"] is True, order
        assert order["acknowledged_by"] == f"unit:{order['unit']}:模拟值班员", order
    follow_ups = [t for t in tickets if t["line"] == "96345"]
    assert all(t["follow_up"] == "done" and t["solved_at"] for t in follow_ups), follow_ups
    assert f"  follow-up calls (回访) done {len(follow_ups)}" in summary, summary
