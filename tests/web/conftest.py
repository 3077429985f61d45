"""Fixtures for the server tests: an app over the fake txt2img pack in a temporary root."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine.settings import Settings
from tests.web.fake_pack import make_fake_registry, txt2img_document
from web.app import create_app
from web.security import Limits, SecurityPolicy


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings.for_root(tmp_path)
    settings.workflows_dir.mkdir()
    (settings.workflows_dir / "txt2img.json").write_text(json.dumps({**txt2img_document(), "meta": {"title": "Text to image"}}))
    return settings


@pytest.fixture
def sampler_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()  # open unless a test closes it
    return gate


@pytest.fixture
def make_app(settings: Settings, sampler_gate: threading.Event):
    def factory(policy: SecurityPolicy | None = None, limits: Limits | None = None):
        return create_app(make_fake_registry(sampler_gate, settings.input_dir), settings, policy=policy, limits=limits)

    return factory
