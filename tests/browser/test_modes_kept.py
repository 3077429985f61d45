"""Muted and bypassed nodes survive a run: the editor sends its whole document beside the
prompt (extra_data.extra_pnginfo.latentflow_editor), history keeps it and the real SaveImage
writes it into the PNG; loading the history entry, the PNG file or the image from the
lightbox gives back the muted and bypassed nodes, while what ran (and what `main.py run
image.png` runs) is still the prompt without them."""

from __future__ import annotations

import json
import urllib.request

from tests.browser.conftest import screenshot
from tests.browser.editor import new_canvas, open_editor, wait_for_image, wait_for_node_count, wait_until
from tests.browser.test_real_nodes import installation, real_server  # noqa: F401  (fixtures)

EDITOR_KEY = "latentflow_editor"


def workflow_with_modes() -> dict:
    """workflows/txt2img.json at 2 steps, with a bypassed ImageInvert between Decode and
    SaveImage and a muted PreviewImage beside it."""
    import main

    document = json.loads((main.ROOT / "workflows" / "txt2img.json").read_text())
    document["nodes"]["5"]["inputs"]["steps"] = 2
    document["nodes"]["8"] = {"type": "ImageInvert", "inputs": {"image": ["6", "image"]},
                              "ui": {"pos": [770, 320], "mode": "bypassed"}}
    document["nodes"]["9"] = {"type": "PreviewImage", "inputs": {"images": ["6", "image"]},
                              "ui": {"pos": [1020, 320], "mode": "muted"}}
    document["nodes"]["7"]["inputs"]["images"] = ["8", "image"]
    return document


def assert_modes_restored(page) -> None:
    wait_for_node_count(page, 9)
    page.wait_for_selector('[data-node-id="8"].mode-bypassed')
    page.wait_for_selector('[data-node-id="9"].mode-muted')
    saved = json.loads(page.evaluate("localStorage.getItem('latentflow.workflow')"))["nodes"]
    assert saved["8"]["ui"]["mode"] == "bypassed" and saved["9"]["ui"]["mode"] == "muted"
    assert saved["7"]["inputs"]["images"] == ["8", "image"]  # the link through the bypassed node


def png_chunks(path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as image:
        return dict(image.text)


def test_muted_and_bypassed_nodes_come_back_from_history_and_from_the_png(page, real_server):
    from engine.workflow import read_workflow_file

    open_editor(page, real_server.url)
    page.evaluate("doc => window.latentflow.load(doc, 'test')", workflow_with_modes())
    assert_modes_restored(page)
    page.click("#queue-button")
    wait_for_image(page, '[data-node-id="7"] .node-images img', timeout=120)

    # history: the prompt as it ran lacks 8 and 9; the editor's document beside it has them
    with urllib.request.urlopen(f"{real_server.url}/api/history") as response:
        (entry,) = json.loads(response.read()).values()
    ran = entry["prompt"][2]["nodes"]
    assert "8" not in ran and "9" not in ran and ran["7"]["inputs"]["images"] == ["6", "image"]
    kept = entry["prompt"][3]["extra_pnginfo"][EDITOR_KEY]["workflow"]["nodes"]
    assert kept["8"]["ui"]["mode"] == "bypassed" and kept["9"]["ui"]["mode"] == "muted"

    # the PNG: the editor's chunk has the modes; the runnable chunks and `main.py run` do not
    (png,) = list(real_server.settings.output_dir.glob("*.png"))
    chunks = png_chunks(png)
    in_png = json.loads(chunks[EDITOR_KEY])["workflow"]["nodes"]
    assert in_png["8"]["ui"]["mode"] == "bypassed" and in_png["9"]["ui"]["mode"] == "muted"
    assert set(json.loads(chunks["latentflow"])["nodes"]) == {"1", "2", "3", "4", "5", "6", "7"}
    assert set(json.loads(chunks["prompt"])) == {"1", "2", "3", "4", "5", "6", "7"}
    runnable = read_workflow_file(png)
    assert set(runnable["nodes"]) == {"1", "2", "3", "4", "5", "6", "7"}

    # 1. the history entry's "load" button
    new_canvas(page)
    page.click('[data-tab="history"]')
    page.click(f'.history-item[data-prompt-id="{entry["prompt"][1]}"] button:text("load")')
    assert_modes_restored(page)

    # 2. the PNG opened as a file
    new_canvas(page)
    page.set_input_files("#file-input", str(png))
    assert_modes_restored(page)

    # 3. the image in the lightbox: "load its workflow"
    new_canvas(page)
    page.click('[data-tab="gallery"]')
    page.click(".gallery-item img")
    page.wait_for_selector("#lightbox:not([hidden]) .lightbox-load")
    page.click(".lightbox-load")
    assert_modes_restored(page)
    wait_until(page, "() => document.querySelector('#lightbox').hidden")
    screenshot(page, "modes-kept-after-reload")
