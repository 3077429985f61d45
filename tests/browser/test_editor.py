"""The editor in headless Chromium against the real server (fake txt2img pack, no model)."""

from __future__ import annotations

import json
import urllib.request

from tests.browser.conftest import screenshot
from tests.web.fake_pack import png_bytes, txt2img_document
from tests.browser.editor import (
    TXT2IMG_LAYOUT, TXT2IMG_LINKS, add_node, autosaved, center, drag, drag_link, empty_point, link_count, new_canvas,
    open_editor, socket, wait_for_image, wait_for_node_count, wait_until,
)


def history(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/api/history") as response:
        return json.load(response)


def test_first_visit_loads_the_default_workflow(page, server):
    open_editor(page, server.url)
    assert page.locator(".node").count() == 7
    assert page.locator('[data-node-id="5"]').get_attribute("data-node-type") == "KSampler"
    assert link_count(page) == 9
    screenshot(page, "default-workflow")


def test_build_txt2img_from_empty_canvas_queue_and_see_the_image(page, server, settings):
    open_editor(page, server.url)
    new_canvas(page)
    for expected_id, (node_type, x, y) in enumerate(TXT2IMG_LAYOUT, start=1):
        assert add_node(page, node_type, x, y) == str(expected_id)
    for link in TXT2IMG_LINKS:
        drag_link(page, *link)
    assert link_count(page) == len(TXT2IMG_LINKS)
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "a red square")
    for name in ("width", "height"):
        page.fill(f'[data-node-id="4"] [data-widget="{name}"] input', "64")
        page.keyboard.press("Tab")
    page.fill('[data-node-id="5"] [data-widget="steps"] input', "3")
    page.keyboard.press("Tab")
    seed_before = page.input_value('[data-node-id="5"] [data-widget="seed"] input')

    document = autosaved(page)
    assert document["nodes"]["5"]["inputs"]["latent"] == ["4", "latent"]
    assert document["nodes"]["2"]["inputs"]["text"] == "a red square"
    assert document["nodes"]["4"]["inputs"]["width"] == 64

    page.click("#queue-button")
    assert wait_for_image(page, '[data-node-id="7"] .node-images img') == [8, 8]  # 64 px / 8
    assert page.locator('.node.running').count() == 0
    assert page.locator('[data-node-id="5"] .node-progress-bar').get_attribute("style") == "width: 100%;"
    page.click('[data-tab="gallery"]')
    page.wait_for_selector('.gallery-item[data-filename="latentflow_00001.png"] img')
    assert page.input_value('[data-node-id="5"] [data-widget="seed"] input') != seed_before  # randomized
    screenshot(page, "txt2img-built-and-run")

    (entry,) = history(server).values()
    assert entry["status"]["status_str"] == "success"
    assert entry["prompt"][2]["nodes"]["2"]["inputs"]["text"] == "a red square"
    assert (settings.output_dir / "latentflow_00001.png").read_bytes().startswith(b"\x89PNG")


def test_wrong_type_link_is_refused(page, server):
    open_editor(page, server.url)
    new_canvas(page)
    add_node(page, "LoadCheckpoint", 80, 150)
    add_node(page, "Decode", 600, 150)
    start = center(page, socket("1", "out", "clip"))
    end = center(page, socket("2", "in", "vae"))
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    assert page.locator("#links path.temp.refused").count() == 1  # shown red while hovering
    screenshot(page, "wrong-type-link-hover")
    page.mouse.up()
    page.wait_for_selector(".toast-error")
    assert "vae expects VAE, not CLIP" in page.inner_text(".toast-error")
    assert link_count(page) == 0
    assert "vae" not in autosaved(page)["nodes"]["2"]["inputs"]
    drag_link(page, "1", "vae", "2", "vae")
    assert link_count(page) == 1
    assert autosaved(page)["nodes"]["2"]["inputs"]["vae"] == ["1", "vae"]


def test_validation_error_is_shown_on_its_node(page, server):
    open_editor(page, server.url)
    page.click('[data-node-id="4"] .node-title')  # select EmptyLatent and delete it
    page.keyboard.press("Delete")
    assert page.locator(".node").count() == 6
    page.click("#queue-button")
    page.wait_for_selector('[data-node-id="5"].has-error')
    message = page.inner_text('[data-node-id="5"] .node-errors')
    assert "required input 'latent' is missing" in message
    assert page.locator('[data-node-id="5"] .socket-row.input-error[data-input="latent"]').count() == 1
    assert page.locator(".node.has-error").count() == 1
    assert history(server) == {}  # nothing ran
    screenshot(page, "validation-error")


def test_reload_restores_the_workflow_and_undo_redo(page, server):
    open_editor(page, server.url)
    title = '[data-node-id="7"] .node-title'
    before = page.locator('[data-node-id="7"]').bounding_box()
    start = center(page, title)
    drag(page, start, (start[0] - 200, start[1] + 250))
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "a blue circle")
    moved = autosaved(page)["nodes"]["7"]["ui"]["pos"]
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    after = page.locator('[data-node-id="7"]').bounding_box()
    assert abs(after["x"] - (before["x"] - 200)) < 2 and abs(after["y"] - (before["y"] + 250)) < 2
    assert autosaved(page)["nodes"]["7"]["ui"]["pos"] == moved
    assert page.input_value('[data-node-id="2"] [data-widget="text"] textarea') == "a blue circle"

    page.click('[data-node-id="3"] .node-title')
    page.keyboard.press("Delete")
    assert page.locator(".node").count() == 6
    page.keyboard.press("Control+z")
    assert page.locator(".node").count() == 7 and link_count(page) == 9
    page.keyboard.press("Control+y")
    assert page.locator(".node").count() == 6


def test_multi_select_copy_paste_keeps_inner_links(page, server):
    open_editor(page, server.url)
    new_canvas(page)
    add_node(page, "EmptyLatent", 100, 400)
    add_node(page, "LoadCheckpoint", 100, 120)
    add_node(page, "Decode", 450, 200)
    drag_link(page, "2", "vae", "3", "vae")
    page.keyboard.down("Shift")  # rubber-band select Load Checkpoint and Decode
    drag(page, (80, 100), (800, 330))
    page.keyboard.up("Shift")
    assert page.locator(".node.selected").count() == 2
    page.keyboard.press("Control+c")
    page.mouse.move(700, 500)
    page.keyboard.press("Control+v")
    assert page.locator(".node").count() == 5
    document = autosaved(page)
    assert document["nodes"]["4"]["type"] == "LoadCheckpoint"  # pasted in id order
    assert document["nodes"]["5"]["type"] == "Decode" and document["nodes"]["5"]["inputs"]["vae"] == ["4", "vae"]
    assert link_count(page) == 2


def test_category_menu_adds_a_node(page, server):
    open_editor(page, server.url)
    new_canvas(page)
    page.mouse.click(500, 400, button="right")
    page.hover('.menu-category[data-category="sampling"] > span')
    page.click('.menu-node[data-type="KSampler"]')
    assert page.locator('.node[data-node-type="KSampler"]').count() == 1
    seed = page.locator('[data-node-type="KSampler"] [data-widget="seed"]')
    assert seed.locator("select.seed-control").input_value() == "randomize"
    assert seed.locator("input").get_attribute("max") == str(2**32 - 1)


def test_upload_an_image_into_a_load_image_node(page, server, settings):
    open_editor(page, server.url)
    new_canvas(page)
    add_node(page, "LoadImage", 200, 200)
    widget = '[data-node-id="1"] [data-widget="image"]'
    page.set_input_files(f"{widget} input[type=file]", files=[
        {"name": "cat.png", "mimeType": "image/png", "buffer": png_bytes(4, 4, (200, 10, 10))}])
    wait_until(page, "s => document.querySelector(s).value === 'cat.png'", f"{widget} select")
    assert autosaved(page)["nodes"]["1"]["inputs"]["image"] == "cat.png"
    assert (settings.input_dir / "cat.png").read_bytes() == png_bytes(4, 4, (200, 10, 10))
    page.set_input_files(f"{widget} input[type=file]", files=[
        {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
    page.wait_for_selector(".toast-error >> text=only PNG, JPEG and WebP")


def test_zoom_and_pan_are_kept_in_the_workflow(page, server):
    open_editor(page, server.url)
    before = page.locator('[data-node-id="1"]').bounding_box()
    page.mouse.move(*empty_point(page, (400, 300)))  # not over a text field, which scrolls instead
    page.mouse.wheel(0, -400)  # zoom in around the pointer
    wait_until(page, "() => JSON.parse(localStorage.getItem('latentflow.workflow')).ui.view.scale > 1.5")
    zoomed = page.locator('[data-node-id="1"]').bounding_box()
    assert zoomed["width"] > before["width"] * 1.5
    x, y = empty_point(page, (700, 700))
    drag(page, (x, y), (x - 100, y - 50))  # pan on the empty canvas
    view = autosaved(page)["ui"]["view"]
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert autosaved(page)["ui"]["view"] == view
    restored = page.locator('[data-node-id="1"]').bounding_box()
    assert abs(restored["x"] - (zoomed["x"] - 100)) < 2 and abs(restored["width"] - zoomed["width"]) < 1


def test_save_to_server_and_open_it_again(page, server, settings):
    open_editor(page, server.url)
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "saved on the server")
    page.once("dialog", lambda dialog: dialog.accept("my-flow"))
    page.click("#save-server-button")
    page.wait_for_selector('#workflow-select option[value="my-flow"]', state="attached")
    saved = json.loads((settings.root / "user" / "workflows" / "my-flow.json").read_text())
    assert saved["nodes"]["2"]["inputs"]["text"] == "saved on the server"
    new_canvas(page)
    page.select_option("#workflow-select", "my-flow")
    wait_for_node_count(page, 7)
    assert page.input_value('[data-node-id="2"] [data-widget="text"] textarea') == "saved on the server"


def test_open_a_workflow_file(page, server, tmp_path):
    open_editor(page, server.url)
    new_canvas(page)
    path = tmp_path / "flow.json"
    path.write_text(json.dumps(txt2img_document(text="from a file")))
    page.set_input_files("#file-input", str(path))
    wait_for_node_count(page, 7)
    assert page.input_value('[data-node-id="2"] [data-widget="text"] textarea') == "from a file"


def test_number_widgets_clamp_to_their_limits(page, server):
    open_editor(page, server.url)
    steps = '[data-node-id="5"] [data-widget="steps"] input'
    for typed, kept in (("100000", "200"), ("0", "1"), ("7.6", "8")):
        page.fill(steps, typed)
        page.keyboard.press("Tab")
        assert page.input_value(steps) == kept
        assert autosaved(page)["nodes"]["5"]["inputs"]["steps"] == int(kept)
    cfg = '[data-node-id="5"] [data-widget="cfg"] input'
    page.fill(cfg, "2.5")
    page.keyboard.press("Tab")
    assert autosaved(page)["nodes"]["5"]["inputs"]["cfg"] == 2.5
    page.select_option('[data-node-id="5"] [data-widget="sampler_name"] select', "dpmpp_2m")
    assert autosaved(page)["nodes"]["5"]["inputs"]["sampler_name"] == "dpmpp_2m"


def test_integers_beyond_exact_javascript_numbers_are_clamped_to_exact_ones(page, server):
    open_editor(page, server.url)
    parsed = page.evaluate("""async () => {
        const { parseNumber } = await import("/static/js/widgets.js");
        const seed = { kind: "seed", min: 0, max: 18446744073709551615 };
        return [parseNumber("18446744073709551615", seed), parseNumber("123", seed),
                parseNumber("-5", { kind: "int", min: -(2 ** 60) }), parseNumber("2.5e300", { kind: "float" })];
    }""")
    assert parsed == [2**53 - 1, 123, -5, 2.5e300]


def test_node_menu_renames_duplicates_and_deletes(page, server):
    open_editor(page, server.url)
    page.click('[data-node-id="4"] .node-title', button="right")
    page.once("dialog", lambda dialog: dialog.accept("Canvas size"))
    page.click('.menu-action[data-action="rename"]')
    assert page.inner_text('[data-node-id="4"] .node-title').startswith("Canvas size")
    assert autosaved(page)["nodes"]["4"]["ui"]["title"] == "Canvas size"
    page.click('[data-node-id="4"] .node-title', button="right")
    page.click('.menu-action[data-action="duplicate"]')
    assert page.locator(".node").count() == 8
    assert autosaved(page)["nodes"]["8"]["inputs"] == autosaved(page)["nodes"]["4"]["inputs"]
    page.click('[data-node-id="8"] .node-title', button="right")
    page.click('.menu-action[data-action="delete"]')
    assert page.locator(".node").count() == 7


def test_typing_into_a_widget_is_one_undo_step(page, server):
    open_editor(page, server.url)
    field = '[data-node-id="2"] [data-widget="text"] textarea'
    page.click(field)
    page.keyboard.press("Control+a")
    page.keyboard.type("a tiny blue star")
    page.click('[data-node-id="2"] .node-title')  # leave the field: shortcuts go to the editor
    page.keyboard.press("Control+z")
    assert page.input_value(field) == "a red square"
    page.keyboard.press("Control+y")
    assert page.input_value(field) == "a tiny blue star"
