"""The engine's HTTP API (aiohttp), on loopback by default, token required."""

from callrouter.api.app import build_app
from callrouter.api.common import status_summary

__all__ = ["build_app", "status_summary"]
