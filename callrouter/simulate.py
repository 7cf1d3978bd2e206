"""``callrouter simulate``: the capacity simulator (the ACD core on a virtual clock).

The CLI calls :func:`simulate_main`; code that wants the figures calls
:func:`run_simulation` with a scenario from :func:`load_scenario`.
"""

from callrouter.capacity.scenario import Scenario, load_scenario
from callrouter.capacity.simreport import format_json, format_text, simulate_main
from callrouter.capacity.simulator import LineReport, SimResult, run_simulation

__all__ = [
    "LineReport",
    "Scenario",
    "SimResult",
    "format_json",
    "format_text",
    "load_scenario",
    "run_simulation",
    "simulate_main",
]
