"""Runs seen from the browser: running highlight, interrupt from the queue panel, execution
errors on their node, PNG drop, and a page on another origin that must not reach the server."""

from __future__ import annotations

import base64
import json
import urllib.request

import pytest
from aiohttp import web

from tests.browser.conftest import screenshot
from tests.browser.editor import open_editor, wait_for_image, wait_for_node_count
from tests.browser.server import ServerThread
from tests.web.fake_pack import txt2img_document


def history(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/api/history") as response:
        return json.load(response)


def test_running_node_is_highlighted_and_the_queue_panel_interrupts_it(page, server, sampler_gate):
    sampler_gate.clear()  # KSampler blocks until the test lets it go (or it is interrupted)
    open_editor(page, server.url)
    page.click("#queue-button")
    page.wait_for_selector('[data-node-id="5"].running')
    assert page.locator(".node.running").count() == 1
    page.wait_for_selector(".queue-item.running")
    screenshot(page, "running-node")
    page.click(".queue-item.running .cancel")
    page.wait_for_selector(".node.running", state="detached")
    page.wait_for_selector(".toast >> text=interrupted")
    (entry,) = history(server).values()
    assert entry["status"]["interrupted"] is True
    page.click('[data-tab="history"]')
    page.wait_for_selector(".history-item.interrupted")
    import re

    row = page.locator(".history-item.interrupted").first.inner_text()
    assert re.match(r"#\d+ interrupted \d+\.\ds", row), row  # number and duration from the entry


def test_execution_error_is_shown_on_the_failing_node(page, server):
    open_editor(page, server.url)
    document = txt2img_document()
    document["nodes"]["8"] = {"type": "Fail", "inputs": {"image": ["6", "image"], "message": "out of paint"},
                              "ui": {"pos": [700, 420]}}
    document["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    page.evaluate("doc => window.latentflow.load(doc, 'test')", document)
    page.click("#queue-button")
    page.wait_for_selector('[data-node-id="8"].has-error')
    assert page.inner_text('[data-node-id="8"] .node-errors') == "RuntimeError: out of paint"
    assert page.locator(".node.running").count() == 0
    assert "node 8 failed" in page.inner_text(".toast-error")
    screenshot(page, "execution-error")


def test_dropping_a_saved_png_loads_its_workflow(page, server, settings):
    open_editor(page, server.url)
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "a green triangle")
    page.click("#queue-button")
    page.wait_for_selector('[data-node-id="7"] .node-images img')
    png = (settings.output_dir / "test_00001.png").read_bytes()
    page.click("#new-button")
    assert page.locator(".node").count() == 0
    page.evaluate("""async (data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "test_00001.png", { type: "image/png" }));
        document.querySelector("#canvas").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
    }""", base64.b64encode(png).decode())
    wait_for_node_count(page, 7)
    assert page.input_value('[data-node-id="2"] [data-widget="text"] textarea') == "a green triangle"


EVIL_PAGE = """<!doctype html><title>evil</title><script>
window.attack = async (target) => {
  const result = {};
  try {  // a "simple" request: no preflight, the classic CSRF shape
    const response = await fetch(target + "/api/prompt", {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify(window.prompt_body)});
    result.post = response.type;
  } catch (error) { result.post = "error: " + error.message; }
  try {  // a CORS request: the browser must not be allowed to read the answer either
    const response = await fetch(target + "/api/prompt", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(window.prompt_body)});
    result.cors = response.status;
  } catch (error) { result.cors = "blocked"; }
  result.ws = await new Promise((resolve) => {
    const socket = new WebSocket(target.replace("http", "ws") + "/ws?clientId=evil");
    socket.onopen = () => resolve("open");
    socket.onerror = () => resolve("refused");
  });
  return result;
};
</script>"""


@pytest.fixture
def evil_site():
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=EVIL_PAGE, content_type="text/html")

    app.router.add_get("/", index)
    with ServerThread(app) as running:
        yield running


def test_a_page_on_another_origin_cannot_queue_or_listen(page, server, evil_site):
    page.goto(evil_site.url)
    page.evaluate("body => { window.prompt_body = body; }", {"prompt": txt2img_document(), "client_id": "evil"})
    result = page.evaluate("target => window.attack(target)", server.url)
    assert result == {"post": "opaque", "cors": "blocked", "ws": "refused"}
    assert history(server) == {}
    with urllib.request.urlopen(f"{server.url}/api/queue") as response:
        assert json.load(response) == {"queue_running": [], "queue_pending": []}
    # and the same request from the editor's own origin does queue work
    open_editor(page, server.url)
    status = page.evaluate("""async (body) => (await fetch('/api/prompt', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)})).status""",
                           {"prompt": txt2img_document()})
    assert status == 200


@pytest.fixture
def token_server(settings, sampler_gate):
    from tests.web.fake_pack import make_fake_registry
    from web.app import create_app
    from web.security import SecurityPolicy

    policy = SecurityPolicy.for_bind("0.0.0.0", token="let-me-in")  # as with --listen --auth-token
    with ServerThread(create_app(make_fake_registry(sampler_gate, settings.input_dir), settings,
                                 policy=policy)) as running:
        yield running


def test_token_protected_server_works_from_a_token_link_only(page, token_server):
    page.goto(token_server.url)  # no token: the page loads but the API refuses it
    page.wait_for_selector("body[data-ready=true]")
    assert "requires its auth token" in page.inner_text(".toast-error")
    assert page.locator(".node").count() == 0
    open_editor(page, f"{token_server.url}/?token=let-me-in")
    assert page.locator(".node").count() == 7
    page.click("#queue-button")
    wait_for_image(page, '[data-node-id="7"] .node-images img')


def test_preview_frames_show_in_the_running_node(page, server):
    open_editor(page, server.url)
    page.evaluate("""() => {
        window.previewsSeen = [];
        const node = document.querySelector('#world');
        new MutationObserver(() => {
            for (const img of document.querySelectorAll('[data-node-id="5"] .node-images img')) {
                if (img.src.startsWith('blob:') && !window.previewsSeen.includes(img.src)) window.previewsSeen.push(img.src);
            }
        }).observe(node, { subtree: true, childList: true, attributes: true });
    }""")
    page.click("#queue-button")
    page.wait_for_selector('[data-node-id="7"] .node-images img')
    # each sampler step sent a binary preview frame; the running node showed it as a blob: image
    assert len(page.evaluate("() => window.previewsSeen")) >= 1
    assert page.locator('[data-node-id="5"] .node-images img').count() == 0  # gone once it finished
    assert page.locator('[data-node-id="5"] .node-progress-bar').get_attribute("style") == "width: 100%;"
