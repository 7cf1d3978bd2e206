"""Capacity planning on the ACD core: the staffing planner (issue 13).

``staffing``: the fewest seats per hour per line, and the overflow pool, that meet each
line's target, found by running the real ACD core in the simulator over a whole day;
the what-if mode. ``history``: a day's traffic learned from the ticket store.
``report``: the plan as a table (text, CSV, JSON) and an SVG chart for the wallboard.
``cli``: ``callrouter staffing``. ``simulator``: the real ACD core on a virtual clock;
``scenario``: its traffic files (``queues/scenarios/*.toml``); ``simreport``: ``callrouter
simulate``. They sit beside ``callrouter.acd``, which is only the core: the core imports
nothing from here.
"""

from callrouter.capacity.staffing import (
    Figures,
    Goal,
    PeriodRow,
    Staffing,
    StaffingReport,
    evaluate,
    plan_staffing,
    what_if,
)

__all__ = [
    "Figures",
    "Goal",
    "PeriodRow",
    "Staffing",
    "StaffingReport",
    "evaluate",
    "plan_staffing",
    "what_if",
]
