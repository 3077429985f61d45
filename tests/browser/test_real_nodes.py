"""The built-in nodes in the browser: build txt2img from an empty canvas with the mouse, queue it
and watch the real (tiny) model's image appear in SaveImage."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from engine.settings import Settings
from tests.browser.conftest import screenshot
from tests.browser.editor import (
    wait_until,
    TXT2IMG_LAYOUT, TXT2IMG_LINKS, add_node, autosaved, drag_link, link_count, new_canvas, open_editor, wait_for_image,
    wait_for_node_count,
)
from tests.browser.server import ServerThread
from web.app import create_app

# The editor tests' txt2img with our one-node sampler (the fake pack calls it KSampler; our
# KSampler is ComfyUI's, whose latent input is latent_image).
REAL_LAYOUT = [("SampleLatent" if node_type == "KSampler" else node_type, x, y) for node_type, x, y in TXT2IMG_LAYOUT]


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/checkpoints/tiny-shapes.safetensors: the embedded model, or its random stand-in."""
    from tests.workflows.model_files import EMBEDDED, write_tiny_shapes_standin

    root = tmp_path_factory.mktemp("real-nodes")
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    if EMBEDDED.is_file():
        (checkpoints / EMBEDDED.name).symlink_to(EMBEDDED)
    else:
        write_tiny_shapes_standin(checkpoints / EMBEDDED.name)
    return root


@pytest.fixture
def real_server(installation: Path, tmp_path: Path) -> Iterator[ServerThread]:
    import main

    settings = Settings.for_root(installation, output_dir=tmp_path / "output",
                                 workflows_dir=main.ROOT / "workflows")
    registry = main.build_registry(custom_nodes=main.ROOT / "custom_nodes", entry_points=False, settings=settings)
    assert not registry.failures, [f.message for f in registry.failures]
    with ServerThread(create_app(registry, settings)) as running:
        running.settings = settings  # type: ignore[attr-defined]
        yield running


def test_build_txt2img_with_the_builtin_nodes_and_see_the_image(page, real_server):
    open_editor(page, real_server.url)
    # first visit: the shipped workflows/txt2img.json
    assert page.inner_text('[data-node-id="2"] .node-title').startswith("Positive prompt")
    new_canvas(page)
    for expected_id, (node_type, x, y) in enumerate(REAL_LAYOUT, start=1):
        assert add_node(page, node_type, x, y) == str(expected_id)
    assert page.input_value('[data-node-id="1"] [data-widget="ckpt_name"] select') == "tiny-shapes.safetensors"
    for link in TXT2IMG_LINKS:
        drag_link(page, *link)
    assert link_count(page) == len(TXT2IMG_LINKS)
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "a small red circle on a blue background")
    for node_id, name, value in (("4", "width", "64"), ("4", "height", "64"), ("5", "steps", "2"),
                                 ("5", "cfg", "1")):
        page.fill(f'[data-node-id="{node_id}"] [data-widget="{name}"] input', value)
        page.keyboard.press("Tab")
    assert autosaved(page)["nodes"]["5"]["inputs"]["steps"] == 2

    page.click("#queue-button")
    assert wait_for_image(page, '[data-node-id="7"] .node-images img', timeout=120) == [64, 64]
    screenshot(page, "txt2img-builtin-nodes")
    saved = list((real_server.settings.output_dir).glob("*.png"))
    assert len(saved) == 1 and saved[0].read_bytes().startswith(b"\x89PNG")


def test_every_shipped_workflow_opens_in_the_editor(page, real_server):
    import json

    import main

    open_editor(page, real_server.url)
    paths = sorted((main.ROOT / "workflows").glob("*.json"))
    assert paths
    for path in paths:
        document = json.loads(path.read_text())
        links = sum(1 for node in document["nodes"].values() for value in node.get("inputs", {}).values()
                    if isinstance(value, list) and len(value) == 2)
        page.select_option("#workflow-select", path.stem)
        wait_for_node_count(page, len(document["nodes"]))
        # the previous workflow may have as many nodes: wait for this one's ids and links
        expected = [sorted(document["nodes"]), links]
        wait_until(page, """([ids, n]) => {
                const got = [...document.querySelectorAll('.node')].map(e => e.dataset.nodeId).sort();
                return JSON.stringify(got) === JSON.stringify(ids)
                    && document.querySelectorAll('#links path.link:not(.temp)').length === n; }""",
                   expected, timeout=15)
        assert page.locator(".node.unknown").count() == 0, path.name
        assert link_count(page) == links, path.name
        # what the editor would save is the same graph (links by output name, same literals)
        saved = autosaved(page)["nodes"]
        for node_id, node in document["nodes"].items():
            assert saved[node_id]["type"] == node["type"], (path.name, node_id)
            for name, value in node.get("inputs", {}).items():
                if not (isinstance(value, list) and len(value) == 2):
                    assert saved[node_id]["inputs"][name] == value, (path.name, node_id, name)
