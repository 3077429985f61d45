"""``serve --frontend comfyui``: the separately installed ComfyUI frontend shows our nodes and
queues a prompt that our server runs (needs ``pip install -e .[comfyui]``)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from engine.settings import Settings
from tests.browser.conftest import screenshot
from tests.browser.editor import wait_until
from tests.browser.server import ServerThread
from tests.web.fake_pack import make_fake_registry, txt2img_document
from web.app import create_app

pytest.importorskip("comfyui_frontend_package",
                    reason="the optional ComfyUI frontend is not installed (pip install -e '.[comfyui]')")

OUTPUT_INDEX = {"model": 0, "clip": 1, "vae": 2, "conditioning": 0, "latent": 0, "image": 0}


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


def collect_console_errors(page: Any) -> list[str]:
    """The page's uncaught errors and console errors, except failed requests to the internet
    (the frontend asks for fonts, release notes and templates online; the test machine is
    offline). A failed request to our own server is kept: it is ours to fix."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))

    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        text = message.text
        failed_request = text.startswith("Failed to load resource") or "net::ERR_" in text
        if failed_request and url and not is_local(url):
            return
        errors.append(f"console.error: {text} (at {url or '?'})")

    page.on("console", on_console)
    return errors


def comfyui_api_prompt(document: dict) -> dict:
    """Our document as ComfyUI's API prompt (links by output index)."""
    return {node_id: {"class_type": node["type"],
                      "inputs": {k: [v[0], OUTPUT_INDEX[v[1]]] if isinstance(v, list) else v
                                 for k, v in node["inputs"].items()}}
            for node_id, node in document["nodes"].items()}


@pytest.fixture
def comfy_server(settings: Settings) -> Iterator[ServerThread]:
    # A returning user: no first-run template browser over the canvas.
    user = settings.root / "user" / "comfyui"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    app = create_app(make_fake_registry(None, settings.input_dir), settings, frontend="comfyui")
    with ServerThread(app) as running:
        yield running


def test_comfyui_frontend_shows_our_nodes_and_queues_a_prompt(browser, comfy_server, settings: Settings):
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    errors = collect_console_errors(page)
    try:
        page.goto(comfy_server.url)
        wait_until(page, "() => !!(window.app && window.app.graph && window.LiteGraph)", timeout=60)
        registered = page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
        assert {"LoadCheckpoint", "TextEncode", "KSampler", "Decode", "SaveImage"} <= set(registered)
        page.keyboard.press("Escape")
        page.evaluate("p => window.app.loadApiJson(p, 'txt2img')", comfyui_api_prompt(txt2img_document(seed=4)))
        types = page.evaluate("() => window.app.graph.nodes.map((n) => n.type).sort()")
        assert types == sorted(["LoadCheckpoint", "TextEncode", "TextEncode", "EmptyLatent", "KSampler",
                                "Decode", "SaveImage"])
        screenshot(page, "comfyui-frontend")
        page.click("button:has-text('Run')")
        deadline = time.monotonic() + 30
        history: dict = {}
        while not history and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{comfy_server.url}/api/history") as response:
                history = json.load(response)
            time.sleep(0.1)
        (entry,) = history.values()
        assert entry["status"]["status_str"] == "success", entry["status"]
        (image,) = entry["outputs"]["7"]["images"]
        assert (settings.output_dir / image["filename"]).read_bytes().startswith(b"\x89PNG")
        # the frontend's own view of the finished job, through /api/jobs
        wait_until(page, """async () => {
            const r = await fetch('/api/jobs?status=completed');
            return (await r.json()).jobs.length === 1; }""")
        page.wait_for_timeout(500)  # late errors from the finished job's UI updates
        assert errors == [], "\n".join(errors)
    finally:
        context.close()
