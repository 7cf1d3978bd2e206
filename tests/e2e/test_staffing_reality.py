"""The staffing planner against reality: a compressed day on the real Asterisk.

The planner plans the seats of a profile (four "hours" of a minute each on 96345, the
busiest needing most of the line's ten seats); SIPp callers arrive as a Poisson stream
at the profile's rates, SIPp seats are logged in and out of the engine at each boundary
as planned, and the tickets say how long every caller waited. Compared:

* the simulator fed exactly this run's callers and seat changes (:func:`replay`) with
  what the tickets measured: the model of the engine itself. Tolerance: 8 points over
  the day, 20 in an hour (15-40 callers an hour: one caller is 2.5-7 points). The run's
  waits differ from the model's by signalling (originate, 200 OK, bridge: 0.1-0.5 s,
  more on a loaded machine) and tick phase (the engine ends wrap-ups on its own 0.5 s
  tick); the measured day has been within 4 points of the replay in every run here.
* the planner's forecast for the plan (the average over 40 simulated days of the same
  profile and seats, other days than the search used) with the measured day: a single
  run differs from the average by chance. Tolerance: 3 standard deviations of the day's
  service level across those 40 days, plus the 8 points above.

Callers wait until the seat hangs up (no one gives up), so the measure is the share
answered within the line's target, shortened to 4 s to fit 8 s talk times.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from callrouter.acd.lines import load_lines
from callrouter.capacity.staffing import Figures, Goal, plan_staffing
from callrouter.sim.staffing_check import Profile, draw_arrivals, replay, run_real, seed_spread
from tests.e2e.conftest import EngineFactory

SEATS = tuple(f"s96345-{i:02d}" for i in range(1, 11))
PROFILE = Profile(line="96345", number="96345", priority=5, period_s=60.0, calls=(14.0, 28.0, 20.0, 8.0),
                  talk_s=8.0, answer_s=1.0)
TARGET_S = 4
DAY_TOLERANCE = 0.08
HOUR_TOLERANCE = 0.20


def _lines(engines: EngineFactory) -> Path:
    path = engines.use_lines(wrap_up_s=2, target_s=TARGET_S)
    # the test's own target for 96345: 80 % answered within 4 s (it plans for "connected")
    text = path.read_text()
    for old, new in (('staffing_measure = "connected"', 'staffing_measure = "within_target"'),
                     ("staffing_level = 0.95", "staffing_level = 0.80")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def _share(f: Figures) -> float:
    assert f.offered, "a period without callers"
    return f.in_target / f.offered


def test_the_planned_seats_give_the_predicted_service_level_on_asterisk(engines: EngineFactory) -> None:
    lines = load_lines(_lines(engines))
    goal = Goal.of(lines.line("96345"))
    assert (goal.measure, goal.level, goal.target_s) == ("within_target", 0.8, TARGET_S)
    plan = plan_staffing(PROFILE.scenario(lines), period_s=PROFILE.period_s, seeds=(1, 2, 3, 4), surge=0.0,
                         min_seats=1, max_seats=len(SEATS), jobs=1)
    counts = plan.staffing().seats["96345"]
    assert max(counts) > min(counts) and all(goal.met(r.predicted) for r in plan.rows["96345"]), counts
    spread = seed_spread(PROFILE, lines, plan.staffing(), range(100, 140))
    forecast = statistics.fmean(spread)

    engines.start()
    run = run_real(engines.settings, engines.api, engines.db_url, PROFILE, counts, draw_arrivals(PROFILE, 7),
                   SEATS, seed=7)
    assert run.trunk is not None and run.trunk.failed == 0, run.trunk.to_json() if run.trunk else None
    assert len(run.calls) == len(draw_arrivals(PROFILE, 7)) and all(c.seated_s is not None for c in run.calls)
    assert max(run.late_shifts_s) < 2.0, run.late_shifts_s  # the seat changes came on time
    # the callers came when they were drawn to (each waited its own time in SIPp)
    assert max(abs(c.arrived_s - c.planned_s) for c in run.calls) < 0.5, [(c.planned_s, c.arrived_s)
                                                                          for c in run.calls][:10]
    measured = run.figures(TARGET_S, PROFILE.period_s, len(counts))
    replayed = replay(PROFILE, lines, run)
    day_measured, day_replayed = sum(measured, Figures()), sum(replayed, Figures())
    table = "\n".join(f"  period {p}: seats {counts[p]}, callers {m.offered}, measured {_share(m):.3f}, "
                      f"replayed {_share(r):.3f}, plan's search {_share(x.predicted):.3f}"
                      for p, (m, r, x) in enumerate(zip(measured, replayed, plan.rows["96345"], strict=True)))
    report = (f"\n{table}\n  day: measured {_share(day_measured):.3f}, replayed {_share(day_replayed):.3f}, "
              f"forecast {forecast:.3f} (sd {statistics.stdev(spread):.3f} over {len(spread)} simulated days)")
    print(report)
    assert [m.offered for m in measured] == [r.offered for r in replayed], report
    assert abs(_share(day_measured) - _share(day_replayed)) <= DAY_TOLERANCE, report
    for m, r in zip(measured, replayed, strict=True):
        assert abs(_share(m) - _share(r)) <= HOUR_TOLERANCE, report
    allowed = 3 * statistics.stdev(spread) + DAY_TOLERANCE
    assert abs(_share(day_measured) - forecast) <= allowed, report
