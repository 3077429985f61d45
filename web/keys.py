"""Services stored on the aiohttp app (aiohttp-demos style: no module-level state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path

from aiohttp import web

from engine.queue import PromptQueue
from engine.registry import NodeRegistry
from engine.settings import Settings
from web.security import Limits, SecurityPolicy
from web.ws import WebSocketHub

if TYPE_CHECKING:
    from web.internal import LogBuffer

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", NodeRegistry)
QUEUE = web.AppKey("queue", PromptQueue)
HUB = web.AppKey("hub", WebSocketHub)
POLICY = web.AppKey("policy", SecurityPolicy)
LIMITS = web.AppKey("limits", Limits)
LOGS: web.AppKey["LogBuffer"] = web.AppKey("logs")
FRONTEND_DIR = web.AppKey("frontend_dir", Path)  # set by --frontend comfyui
