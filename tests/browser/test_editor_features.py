"""Editor features a ComfyUI user expects (fake txt2img pack): bypass / mute change the prompt
sent, link-drop-to-search, collapse and colours saved in `ui`, batch count and Queue Front,
the lightbox, run feedback (percentage, ETA, node times) and tabs that hide what they hide."""

from __future__ import annotations

import json

from tests.browser.conftest import screenshot
from tests.browser.editor import (
    autosaved, center, drag, empty_point, open_editor, socket, wait_for_image, wait_for_node_count, wait_until,
)
from tests.web.fake_pack import txt2img_document


def capture_prompts(page) -> list[dict]:
    """The bodies of every POST /api/prompt the page sends, in order."""
    sent: list[dict] = []
    page.on("request", lambda request: sent.append(json.loads(request.post_data))
            if request.url.endswith("/api/prompt") and request.method == "POST" else None)
    return sent


def select(page, node_id: str) -> None:
    page.click(f'[data-node-id="{node_id}"] .node-title')


def test_mute_leaves_a_node_out_and_bypass_passes_its_input_through(page, server):
    open_editor(page, server.url)
    document = txt2img_document()
    document["nodes"]["8"] = {"type": "Fail", "inputs": {"image": ["6", "image"], "message": "bypass me"},
                              "ui": {"pos": [700, 460]}}
    document["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    page.evaluate("doc => window.latentflow.load(doc, 'test')", document)
    sent = capture_prompts(page)

    select(page, "8")
    page.keyboard.press("Control+b")
    page.wait_for_selector('[data-node-id="8"].mode-bypassed')
    assert autosaved(page)["nodes"]["8"]["ui"]["mode"] == "bypassed"
    page.click("#queue-button")
    wait_for_image(page, '[data-node-id="7"] .node-images img')  # the failing node did not run
    prompt = sent[-1]["prompt"]["nodes"]
    assert "8" not in prompt and prompt["7"]["inputs"]["images"] == ["6", "image"]

    select(page, "7")
    page.keyboard.press("Control+m")
    page.wait_for_selector('[data-node-id="7"].mode-muted')
    page.click("#queue-button")
    for _ in range(100):
        if len(sent) == 2:
            break
        page.wait_for_timeout(50)
    assert len(sent) == 2
    assert set(sent[-1]["prompt"]["nodes"]) == {"1", "2", "3", "4", "5", "6"}  # 7 muted, 8 bypassed
    screenshot(page, "bypass-and-mute")

    page.keyboard.press("Control+z")  # undo the mute
    page.wait_for_selector('[data-node-id="7"]:not(.mode-muted)')
    assert "mode" not in autosaved(page)["nodes"]["7"]["ui"]


def test_a_link_dropped_on_the_canvas_searches_nodes_that_take_it(page, server):
    open_editor(page, server.url)
    before = page.locator(".node").count()
    start = center(page, socket("6", "out", "image"))
    end = empty_point(page, (start[0] + 150, start[1] + 200))
    drag(page, start, end)
    page.wait_for_selector("#search:not([hidden])")
    offered = page.locator(".search-item").evaluate_all("items => items.map(i => i.dataset.type)")
    assert "SaveImage" in offered and "KSampler" not in offered  # only nodes with an IMAGE input
    page.fill("#search-input", "save")
    page.wait_for_selector('.search-item.active[data-type="SaveImage"]')
    page.keyboard.press("Enter")
    wait_for_node_count(page, before + 1)
    new_id = page.locator(".node").last.get_attribute("data-node-id")
    assert autosaved(page)["nodes"][new_id]["inputs"]["images"] == ["6", "image"]


def test_collapse_and_colour_are_saved_in_ui_and_undoable(page, server):
    open_editor(page, server.url)
    select(page, "5")
    height = page.locator('[data-node-id="5"]').bounding_box()["height"]
    page.keyboard.press("Alt+c")
    page.wait_for_selector('[data-node-id="5"].collapsed')
    assert page.locator('[data-node-id="5"]').bounding_box()["height"] < height / 3
    assert autosaved(page)["nodes"]["5"]["ui"]["collapsed"] is True
    page.click('[data-node-id="4"] .node-title', button="right")
    page.click('.menu-action[data-action="color"]')
    page.click('.menu-action[data-action="color-green"]')
    page.wait_for_selector('[data-node-id="4"][data-color="green"]')
    assert autosaved(page)["nodes"]["4"]["ui"]["color"] == "green"
    page.keyboard.press("Control+z")
    page.wait_for_selector('[data-node-id="4"]:not([data-color])')
    page.keyboard.press("Control+z")
    page.wait_for_selector('[data-node-id="5"]:not(.collapsed)')


def test_batch_count_queues_several_with_new_seeds_and_queue_front_runs_next(page, server, sampler_gate):
    sampler_gate.clear()
    open_editor(page, server.url)
    sent = capture_prompts(page)
    page.fill("#batch-count", "3")
    page.click("#queue-button")
    wait_until(page, "() => document.querySelectorAll('.queue-item').length === 3")
    assert len(sent) == 3
    seeds = [body["prompt"]["nodes"]["5"]["inputs"]["seed"] for body in sent]
    assert len(set(seeds)) == 3, seeds
    page.fill("#batch-count", "1")
    page.click("#queue-front-button")
    wait_until(page, "() => document.querySelectorAll('.queue-item').length === 4")
    assert sent[-1].get("front") is True
    # the front one is the first pending (right after the running one)
    ids = page.locator(".queue-item.pending").evaluate_all("items => items.map(i => i.dataset.promptId)")
    response = page.evaluate("() => fetch('/api/queue').then(r => r.json())")
    last_id = response["queue_pending"][0][1]
    assert ids[0] == last_id
    sampler_gate.set()


def test_progress_shows_percentage_and_eta_then_node_times(page, server):
    open_editor(page, server.url)
    editor = "window.latentflow"
    page.evaluate(f"() => {{ {editor}.onMessage('execution_start', {{prompt_id: 'p'}});"
                  f" {editor}.onMessage('execution_cached', {{nodes: ['1', '2']}});"
                  f" {editor}.onMessage('executing', {{node: '5'}});"
                  f" {editor}.onMessage('progress', {{node: '5', value: 1, max: 10}}); }}")
    page.wait_for_timeout(200)
    page.evaluate(f"() => {editor}.onMessage('progress', {{node: '5', value: 3, max: 10}})")
    text = page.inner_text("#run-progress-text")
    assert "3/10" in text and "30%" in text and "ETA" in text, text
    assert page.get_attribute("#run-progress", "data-percent") == "30"
    screenshot(page, "progress-running")
    page.evaluate(f"() => {{ {editor}.onMessage('executing', {{node: '6'}});"
                  f" {editor}.onMessage('executing', {{node: null}}); }}")
    assert page.inner_text("#run-progress-text").startswith("done in")
    assert page.inner_text('[data-node-id="1"] .node-time') == "cached"
    assert page.inner_text('[data-node-id="5"] .node-time').endswith("ms")
    assert page.inner_text('[data-node-id="7"] .node-time') == ""


def test_gallery_images_stay_in_the_gallery_tab_and_open_in_the_lightbox(page, server):
    open_editor(page, server.url)
    page.click("#queue-button")
    wait_for_image(page, '[data-node-id="7"] .node-images img')
    page.wait_for_selector("#gallery img", state="attached")
    assert not page.is_visible("#gallery img")  # the Queue tab is showing
    page.click('[data-tab="history"]')
    page.wait_for_selector(".history-item")
    assert not page.is_visible("#gallery img")
    page.click('[data-tab="gallery"]')
    assert page.is_visible("#gallery img")
    page.click('[data-node-id="7"] .node-images img')
    page.wait_for_selector("#lightbox:not([hidden]) img")
    box = page.locator("#lightbox img").bounding_box()
    assert box["width"] >= 400
    page.keyboard.press("Escape")
    page.wait_for_selector("#lightbox", state="hidden")
    page.click("#gallery a")
    page.wait_for_selector("#lightbox:not([hidden]) img")


def test_a_workflow_without_a_saved_view_is_fitted_into_the_window(page, server):
    open_editor(page, server.url)
    document = txt2img_document()
    for node in document["nodes"].values():
        node["ui"]["pos"] = [node["ui"]["pos"][0] * 3 + 2000, node["ui"]["pos"][1] * 3]
    page.evaluate("doc => window.latentflow.load(doc, 'test')", document)
    canvas = page.locator("#canvas").bounding_box()
    for element in page.locator(".node").all():
        box = element.bounding_box()
        assert box["x"] >= canvas["x"] and box["x"] + box["width"] <= canvas["x"] + canvas["width"] + 1
        assert box["y"] >= canvas["y"] and box["y"] + box["height"] <= canvas["y"] + canvas["height"] + 1
