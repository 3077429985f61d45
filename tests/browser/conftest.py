"""Browser tests: the real server in a thread, Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest

from engine.settings import Settings
from tests.browser.server import ServerThread
from tests.web.fake_pack import make_fake_registry, txt2img_document
from web.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if not CHROMIUM.exists():
                item.add_marker(pytest.mark.skip(reason=f"{CHROMIUM} is not installed (apt-get install chromium)"))


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module. (Module scope, not session: the sync Playwright API runs
    an event loop on the main thread while it is open, which pytest-asyncio tests in other
    folders could not run beside.)"""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]  # uncaught script errors fail the test below
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def sampler_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings.for_root(tmp_path)
    settings.workflows_dir.mkdir()
    document = {**txt2img_document(), "meta": {"title": "Text to image"}}
    (settings.workflows_dir / "txt2img.json").write_text(json.dumps(document))
    return settings


@pytest.fixture
def server(settings: Settings, sampler_gate: threading.Event) -> Iterator[ServerThread]:
    app = create_app(make_fake_registry(sampler_gate, settings.input_dir), settings)
    with ServerThread(app) as running:
        yield running


def screenshot(page, name: str) -> Path:
    """Keep a screenshot under tests/artifacts/ (uploaded by CI as a test artifact)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def has_chromium() -> bool:
    return CHROMIUM.exists() and shutil.which(str(CHROMIUM)) is not None
