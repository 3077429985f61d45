"""Services stored on the aiohttp app (aiohttp-demos style: no module-level state)."""

from __future__ import annotations

from aiohttp import web

from engine.queue import PromptQueue
from engine.registry import NodeRegistry
from engine.settings import Settings
from web.security import Limits, SecurityPolicy
from web.ws import WebSocketHub

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", NodeRegistry)
QUEUE = web.AppKey("queue", PromptQueue)
HUB = web.AppKey("hub", WebSocketHub)
POLICY = web.AppKey("policy", SecurityPolicy)
LIMITS = web.AppKey("limits", Limits)
