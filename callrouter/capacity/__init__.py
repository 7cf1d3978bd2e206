"""Capacity planning on the ACD core: the staffing planner (issue 13).

``staffing``: the fewest seats per hour per line, and the overflow pool, that meet each
line's target, found by running the real ACD core in the simulator over a whole day;
the what-if mode. ``history``: a day's traffic learned from the ticket store.
``report``: the plan as a table (text, CSV, JSON) and an SVG chart for the wallboard.
``cli``: ``callrouter staffing``. (The simulator and its scenarios still live in
``callrouter.acd``; DESIGN.md plans to move them here.)
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
