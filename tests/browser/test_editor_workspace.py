"""The editor's workspace (fake txt2img pack): templates open shipped workflows in new tabs,
tabs keep their edits, undo and results and survive a reload, settings persist and act (link
style, snap to grid, previews, minimap), the model library adds loaders, a pinned node stays
put, the minimap moves the view, groups move their nodes and round-trip through ComfyUI's
format, and reroutes are resolved before queueing."""

from __future__ import annotations

import json

from tests.browser.conftest import screenshot
from tests.browser.editor import (
    autosaved, center, drag, open_editor, wait_for_image, wait_for_node_count, wait_until,
)

TEXT = '[data-node-id="2"] [data-widget="text"] textarea'


def tab_titles(page) -> list[str]:
    return page.locator("#tabs .tab .tab-title").all_inner_texts()


def active_tab(page) -> str:
    return page.inner_text("#tabs .tab.active .tab-title")


def test_templates_open_in_new_tabs_that_keep_edits_undo_and_survive_a_reload(page, server, settings):
    small = {"version": 1, "meta": {"title": "Just a checkpoint", "description": "One loader, nothing else."},
             "nodes": {"1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": "other.safetensors"},
                             "ui": {"pos": [40, 40]}}}}
    (settings.workflows_dir / "small.json").write_text(json.dumps(small))
    open_editor(page, server.url)
    assert tab_titles(page) == ["Text to image"]
    page.fill(TEXT, "edited in the first tab")

    page.click("#templates-button")
    page.wait_for_selector('.template[data-template="small"]')
    assert page.locator(".template").count() == 2
    assert "One loader, nothing else." in page.inner_text('.template[data-template="small"]')
    assert "1 nodes" in page.inner_text('.template[data-template="small"]')
    screenshot(page, "templates")
    page.click('.template[data-template="small"]')
    wait_for_node_count(page, 1)
    assert page.locator("#templates").is_hidden()
    assert tab_titles(page) == ["Text to image", "Just a checkpoint"] and active_tab(page) == "Just a checkpoint"
    assert autosaved(page)["nodes"]["1"]["inputs"]["ckpt_name"] == "other.safetensors"

    page.click("#tabs .tab >> nth=0")  # back: the edit is still there, and still undoable
    wait_for_node_count(page, 7)
    assert page.input_value(TEXT) == "edited in the first tab"
    page.click('[data-node-id="4"] .node-title')
    page.keyboard.press("Control+z")
    wait_until(page, "s => document.querySelector(s).value === 'a red square'", TEXT)

    page.click("#new-tab-button")
    wait_for_node_count(page, 0)
    assert tab_titles(page) == ["Text to image", "Just a checkpoint", "Unsaved workflow"]
    page.click("#tabs .tab >> nth=1")
    wait_for_node_count(page, 1)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert tab_titles(page) == ["Text to image", "Just a checkpoint", "Unsaved workflow"]
    assert active_tab(page) == "Just a checkpoint"
    wait_for_node_count(page, 1)
    page.click("#tabs .tab >> nth=0")
    wait_for_node_count(page, 7)
    assert page.input_value(TEXT) == "a red square"  # the undone edit, as it was left
    screenshot(page, "workflow-tabs")

    page.click("#tabs .tab >> nth=1 >> .tab-close")  # closing another tab keeps this one
    assert tab_titles(page) == ["Text to image", "Unsaved workflow"] and active_tab(page) == "Text to image"
    page.click("#tabs .tab.active .tab-close")
    wait_for_node_count(page, 0)
    assert tab_titles(page) == ["Unsaved workflow"]


def link_paths(page) -> list[str]:
    return page.locator("#links path.link:not(.temp)").evaluate_all("paths => paths.map(p => p.getAttribute('d'))")


def test_settings_persist_and_change_links_snapping_previews_and_the_minimap(page, server):
    open_editor(page, server.url)
    assert all(" C " in d for d in link_paths(page))  # spline by default
    page.click("#settings-button")
    page.select_option('[data-setting="linkStyle"] select', "straight")
    assert all(" L " in d and " C " not in d for d in link_paths(page))
    page.select_option('[data-setting="linkStyle"] select', "orthogonal")
    assert all(" H " in d and " V " in d for d in link_paths(page))
    assert "Ctrl+B" in page.inner_text("#settings .shortcuts")
    screenshot(page, "settings")
    page.check('[data-setting="snapToGrid"] input')
    page.uncheck('[data-setting="previews"] input')
    page.wait_for_selector("#minimap:not([hidden])")
    page.uncheck('[data-setting="minimap"] input')
    page.wait_for_selector("#minimap", state="hidden")  # drawn on the next frame
    page.click("#settings .close")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    saved = json.loads(page.evaluate("localStorage.getItem('latentflow.settings')"))
    assert saved == {"previews": False, "snapToGrid": True, "linkStyle": "orthogonal", "minimap": False}
    wait_for_node_count(page, 7)
    assert all(" H " in d for d in link_paths(page))
    page.wait_for_timeout(100)  # a frame or more: the minimap stays hidden
    assert page.locator("#minimap").is_hidden()
    start = center(page, '[data-node-id="4"] .node-title')
    drag(page, start, (start[0] + 37, start[1] + 53))
    x, y = autosaved(page)["nodes"]["4"]["ui"]["pos"]
    assert x % 24 == 0 and y % 24 == 0 and (x, y) != (40, 300)
    # previews off: the sampler's preview frames (see test_runs) are not shown on the node
    page.evaluate("""() => {
        window.previewsSeen = 0;
        new MutationObserver(() => {
            window.previewsSeen += document.querySelectorAll('#world .node-images img[src^="blob:"]').length;
        }).observe(document.querySelector('#world'), { subtree: true, childList: true, attributes: true });
    }""")
    page.click("#queue-button")
    page.wait_for_selector('[data-node-id="7"] .node-images img')
    assert page.evaluate("() => window.previewsSeen") == 0


def test_model_library_adds_a_loader_with_the_file_by_click_and_by_drag(page, server, settings):
    folder = settings.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "other.safetensors").write_bytes(b"")
    open_editor(page, server.url)
    page.click("#models-button")
    item = '.model-file[data-file="other.safetensors"]'
    page.wait_for_selector(item)
    assert page.get_attribute(item, "data-loader") == "LoadCheckpoint"
    assert "checkpoints (1)" in page.inner_text('#models [data-folder="checkpoints"] summary')
    page.click(item)
    wait_for_node_count(page, 8)
    new_id = page.locator(".node").last.get_attribute("data-node-id")
    node = autosaved(page)["nodes"][new_id]
    assert node["type"] == "LoadCheckpoint" and node["inputs"]["ckpt_name"] == "other.safetensors"
    assert page.input_value(f'[data-node-id="{new_id}"] [data-widget="ckpt_name"] select') == "other.safetensors"

    screenshot(page, "model-library")
    page.fill("#models-search", "nothing-like-this")
    assert page.locator(".model-file").count() == 0
    page.fill("#models-search", "other")
    box = page.locator("#canvas").bounding_box()
    page.drag_and_drop(item, "#canvas", target_position={"x": box["width"] - 420, "y": box["height"] - 200})
    wait_for_node_count(page, 9)
    dropped = page.locator(".node").last
    assert autosaved(page)["nodes"][dropped.get_attribute("data-node-id")]["inputs"]["ckpt_name"] == "other.safetensors"
    landed = dropped.bounding_box()
    assert abs(landed["x"] - (box["x"] + box["width"] - 420)) < 3 and abs(landed["y"] - (box["y"] + box["height"] - 200)) < 3
    page.keyboard.press("Control+z")  # adding it was one undo step
    wait_for_node_count(page, 8)


def test_a_pinned_node_stays_put_and_the_minimap_moves_the_view(page, server):
    open_editor(page, server.url)
    title = '[data-node-id="4"] .node-title'
    page.click(title)
    page.keyboard.press("p")
    page.wait_for_selector('[data-node-id="4"].pinned .node-pin')
    assert autosaved(page)["nodes"]["4"]["ui"]["pinned"] is True
    before = autosaved(page)["nodes"]["4"]["ui"]["pos"]
    start = center(page, title)
    drag(page, start, (start[0] + 120, start[1] + 60))
    assert autosaved(page)["nodes"]["4"]["ui"]["pos"] == before
    page.click(title, button="right")
    assert "Unpin" in page.inner_text('.menu-action[data-action="pin"]')
    page.keyboard.press("Escape")
    page.click(title)
    page.keyboard.press("Control+z")  # unpinned again
    page.wait_for_selector('[data-node-id="4"]:not(.pinned)')
    start = center(page, title)
    drag(page, start, (start[0] + 120, start[1] + 60))
    assert autosaved(page)["nodes"]["4"]["ui"]["pos"] != before

    page.wait_for_selector("#minimap:not([hidden])")
    view = autosaved(page)["ui"]["view"]
    visible = page.get_attribute("#minimap", "data-visible")
    box = page.locator("#minimap").bounding_box()
    page.mouse.click(box["x"] + 4, box["y"] + 4)  # the top left corner of the map
    wait_until(page, "v => document.querySelector('#minimap').dataset.visible !== v", visible)
    moved = autosaved(page)["ui"]["view"]
    assert (moved["x"], moved["y"]) != (view["x"], view["y"]) and moved["scale"] == view["scale"]
    # the corner is up and left of everything: the view now shows less of the graph's right side
    assert moved["x"] > view["x"] and moved["y"] > view["y"]
    screenshot(page, "pin-and-minimap")


def test_a_prompt_shows_its_images_in_the_tab_that_queued_it(page, server, sampler_gate):
    image = '[data-node-id="7"] .node-images img'
    open_editor(page, server.url)
    sampler_gate.clear()  # the sampler waits: switch tabs while the prompt runs
    page.click("#queue-button")
    wait_until(page, "() => document.querySelector('#queue-list .queue-item.running')")
    page.click("#templates-button")
    page.click('.template[data-template="txt2img"]')  # the same node ids, in a second tab
    wait_until(page, "() => document.querySelectorAll('#tabs .tab').length === 2")
    sampler_gate.set()
    page.wait_for_selector(".gallery-item", state="attached")  # the run finished
    page.wait_for_timeout(300)
    assert page.locator(image).count() == 0  # not on the other tab's SaveImage
    page.click("#tabs .tab >> nth=0")
    wait_for_image(page, image)  # kept for the tab that queued it
    page.click("#tabs .tab >> nth=1")
    page.wait_for_selector(image, state="detached")


def test_groups_frame_the_selection_move_their_nodes_undo_and_round_trip_through_comfyui(page, server):
    open_editor(page, server.url)
    page.click('[data-node-id="2"] .node-title')
    page.click('[data-node-id="3"] .node-title', modifiers=["Shift"])
    page.keyboard.press("Control+g")
    page.wait_for_selector(".group .group-title")
    (group,) = autosaved(page)["ui"]["comfyui"]["groups"]
    x, y, width, height = group["bounding"]
    nodes = autosaved(page)["nodes"]
    for node_id in ("2", "3"):  # framed: both inside, with room for the title
        nx, ny = nodes[node_id]["ui"]["pos"]
        assert x < nx and y + 30 < ny and nx < x + width and ny < y + height
    before = {node_id: node["ui"]["pos"] for node_id, node in nodes.items()}

    start = center(page, ".group-title")
    drag(page, start, (start[0] + 90, start[1] + 60))
    after = autosaved(page)
    moved = after["ui"]["comfyui"]["groups"][0]["bounding"]
    dx, dy = moved[0] - x, moved[1] - y
    assert dx > 20 and dy > 10 and moved[2:] == [width, height]
    for node_id in ("2", "3"):  # its nodes moved with it, the others stayed
        assert after["nodes"][node_id]["ui"]["pos"] == [before[node_id][0] + dx, before[node_id][1] + dy]
    assert after["nodes"]["1"]["ui"]["pos"] == before["1"]
    page.click(".group-title", button="right")
    page.once("dialog", lambda dialog: dialog.accept("Prompts"))
    page.click('.menu-action[data-action="group-rename"]')
    page.wait_for_selector('.group-title:text("Prompts")')
    page.keyboard.press("Control+z")  # the rename, then the move: one step each
    page.wait_for_selector('.group-title:text("Group")')
    page.keyboard.press("Control+z")
    wait_until(page, "b => JSON.stringify(JSON.parse(localStorage.getItem('latentflow.workflow')).ui.comfyui.groups[0]"
               ".bounding) === JSON.stringify(b)", [x, y, width, height])
    assert autosaved(page)["nodes"]["2"]["ui"]["pos"] == before["2"]
    page.keyboard.press("Control+y")
    page.keyboard.press("Control+y")
    page.wait_for_selector('.group-title:text("Prompts")')

    # ComfyUI's UI format and back (what Save for ComfyUI writes and Open reads)
    exported = page.evaluate("async () => (await window.latentflow.api.convert('comfyui', "
                             "window.latentflow.graph.toDocument())).workflow")
    assert [(g["title"], g["bounding"]) for g in exported["groups"]] == [("Prompts", moved)]
    page.click("#new-button")
    wait_for_node_count(page, 0)
    page.evaluate("g => window.latentflow.loadComfyGraph(g, 'exported.json')", exported)
    wait_for_node_count(page, 7)
    page.wait_for_selector('.group-title:text("Prompts")')
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector('.group-title:text("Prompts")')
    page.click("#queue-button")  # a document with groups queues and runs
    wait_for_image(page, '[data-node-id="7"] .node-images img')
    screenshot(page, "groups")


def test_a_reroute_passes_its_link_on_and_is_resolved_before_queueing_and_export(page, server):
    from tests.browser.editor import add_node, drag_link, empty_point

    open_editor(page, server.url)
    sent = []
    page.on("request", lambda request: sent.append((request.url, json.loads(request.post_data)))
            if request.method == "POST" and request.url.endswith(("/api/prompt", "/api/convert")) else None)
    reroute = add_node(page, "Reroute", *empty_point(page, (900, 700)))
    page.wait_for_selector(f'[data-node-id="{reroute}"].reroute')
    drag_link(page, "6", "image", reroute, "input")
    drag_link(page, reroute, "output", "7", "images")
    saved = autosaved(page)["nodes"]
    assert saved[reroute]["inputs"]["input"] == ["6", "image"] and saved["7"]["inputs"]["images"] == [reroute, "output"]

    page.click("#queue-button")
    wait_for_image(page, '[data-node-id="7"] .node-images img')
    prompt = next(body for url, body in sent if url.endswith("/api/prompt"))["prompt"]["nodes"]
    assert reroute not in prompt and prompt["7"]["inputs"]["images"] == ["6", "image"]

    with page.expect_download():
        page.click("#save-comfyui-button")
    exported = next(body for url, body in sent if url.endswith("/api/convert"))["workflow"]["nodes"]
    # ComfyUI has Reroutes too: the export keeps it (engine.comfyui_graph_export writes ComfyUI's Reroute)
    assert exported[reroute]["type"] == "Reroute" and exported["7"]["inputs"]["images"] == [reroute, "output"]

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector(f'[data-node-id="{reroute}"].reroute')
    assert autosaved(page)["nodes"]["7"]["inputs"]["images"] == [reroute, "output"]
    screenshot(page, "reroute")
