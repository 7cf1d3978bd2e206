"""The staffing plan on the wallboard: what ``callrouter staffing ... --publish`` wrote.

The planner runs on the command line (it simulates days of traffic: seconds of CPU,
never on the engine's event loop) and writes ``<home>/staffing/plan.json`` and
``plan.svg``; the engine only serves those files, read-only, to supervisors:

* ``GET /api/staffing``: the plan's table (JSON, as ``--format json`` prints it);
* ``GET /api/staffing/chart.svg``: the chart (the wallboard shows it as an image).

Nothing published yet: 404 saying which command publishes one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from callrouter.api.common import error, require

STAFFING_DIR_KEY: web.AppKey[Path] = web.AppKey("staffing_dir", Path)
FILES = {"/api/staffing": ("plan.json", "application/json"),
         "/api/staffing/chart.svg": ("plan.svg", "image/svg+xml")}
MAX_BYTES = 4 * 1024 * 1024  # a week of quarter hours is far below this


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None


async def published(request: web.Request) -> web.Response:
    require(request, "supervisor")
    name, content_type = FILES[request.path]
    data = await asyncio.to_thread(_read, request.app[STAFFING_DIR_KEY] / name)
    if data is None:
        return error(404, "no_staffing_plan", "no staffing plan published yet: run `callrouter staffing plan "
                     "--scenario FILE --publish` (or --history) on the engine's machine")
    if len(data) > MAX_BYTES:
        return error(503, "staffing_plan_too_large", f"{name} is over {MAX_BYTES} bytes; publish it again")
    return web.Response(body=data, content_type=content_type, charset="utf-8")


def add_routes(app: web.Application, directory: Path) -> None:
    app[STAFFING_DIR_KEY] = directory
    for path in FILES:
        app.router.add_get(path, published)
