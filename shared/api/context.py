"""Typed keys for what the API handlers find on the aiohttp application."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from zonemesh.shared.resources.manager import ResourceManager

MANAGER = web.AppKey("manager", ResourceManager)
# The effective configuration, as served by GET /config (secrets already removed).
CONFIG_VIEW = web.AppKey("config_view", dict[str, Any])
# Identity of this control plane instance, shown by GET /.
INDEX = web.AppKey("index", dict[str, Any])
