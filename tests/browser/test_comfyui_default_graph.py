"""``serve --frontend comfyui`` with our real nodes: ComfyUI's own frontend loads ComfyUI's
classic default graph (CheckpointLoaderSimple, two CLIPTextEncode, EmptyLatentImage, KSampler,
VAEDecode, SaveImage, ComfyUI's node ids), set to the embedded model; Queue runs it here and
the image appears in the SaveImage node (needs ``pip install -e .[comfyui]``).

The frontend pinned here (1.58) starts with a newer default graph, so the classic one is
given to it as a UI graph (``engine.comfyui_graph.prompt_to_ui_graph`` of the API prompt that
tests/workflows/test_comfy_nodes.py runs headlessly)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from engine.comfyui_graph import prompt_to_ui_graph
from engine.settings import Settings
from tests.browser.conftest import screenshot
from tests.browser.editor import wait_until
from tests.browser.server import ServerThread
from tests.workflows.test_comfy_nodes import default_graph_prompt
from web.app import create_app

pytest.importorskip("comfyui_frontend_package",
                    reason="the optional ComfyUI frontend is not installed (pip install -e '.[comfyui]')")

DEFAULT_GRAPH_TYPES = sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "VAEDecode", "SaveImage"])


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/checkpoints/tiny-shapes.safetensors: the embedded model, or its random stand-in."""
    from tests.workflows.model_files import EMBEDDED, write_tiny_shapes_standin

    root = tmp_path_factory.mktemp("comfyui-default-graph")
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    if EMBEDDED.is_file():
        (checkpoints / EMBEDDED.name).symlink_to(EMBEDDED)
    else:
        write_tiny_shapes_standin(checkpoints / EMBEDDED.name)
    return root


@pytest.fixture
def comfy_real_server(installation: Path, tmp_path: Path) -> Iterator[ServerThread]:
    import main

    settings = Settings.for_root(installation, output_dir=tmp_path / "output")
    user = installation / "user" / "comfyui"
    user.mkdir(parents=True, exist_ok=True)
    # A returning user: no first-run template browser or missing-model dialog over the canvas.
    (user / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True,
                                                          "Comfy.Workflow.ShowMissingModelsWarning": False}))
    registry = main.build_registry(custom_nodes=None, entry_points=False, settings=settings)
    assert not registry.failures, [f.message for f in registry.failures]
    with ServerThread(create_app(registry, settings, frontend="comfyui")) as running:
        running.settings = settings  # type: ignore[attr-defined]
        yield running


def test_comfyui_default_graph_on_the_embedded_model(browser, comfy_real_server):
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(comfy_real_server.url)
        wait_until(page, "() => !!(window.app && window.app.graph && window.LiteGraph)", timeout=60)
        page.keyboard.press("Escape")
        with urllib.request.urlopen(f"{comfy_real_server.url}/api/object_info") as response:
            info = json.load(response)
        graph = prompt_to_ui_graph(default_graph_prompt("tiny-shapes.safetensors"), info)
        page.evaluate("async (g) => { await window.app.loadGraphData(g); }", graph)
        types = page.evaluate("() => window.app.graph.nodes.map((n) => n.type).sort()")
        assert types == DEFAULT_GRAPH_TYPES
        # Every node is known: no red "missing" nodes, every widget where ComfyUI has it.
        unknown = page.evaluate("() => window.app.graph.nodes.filter((n) => n.has_errors || "
                                "!window.LiteGraph.registered_node_types[n.type]).map((n) => n.type)")
        assert unknown == []
        widgets = page.evaluate("""() => Object.fromEntries(window.app.graph.nodes.map(
            (n) => [n.type + ':' + n.id, (n.widgets || []).map((w) => w.value)]))""")
        assert widgets["CheckpointLoaderSimple:4"] == ["tiny-shapes.safetensors"]
        assert widgets["EmptyLatentImage:5"] == [64, 64, 1]
        assert widgets["KSampler:3"][:3] == [156680208700286, "fixed", 4]  # seed, control_after_generate, steps
        page.click("button:has-text('Run')")
        deadline = time.monotonic() + 60
        history: dict = {}
        while not history and time.monotonic() < deadline:
            with urllib.request.urlopen(f"{comfy_real_server.url}/api/history") as response:
                history = json.load(response)
            time.sleep(0.2)
        (entry,) = history.values()
        assert entry["status"]["status_str"] == "success", entry["status"]
        save_id = page.evaluate("() => String(window.app.graph.nodes.find((n) => n.type === 'SaveImage').id)")
        (image,) = entry["outputs"][save_id]["images"]
        path = comfy_real_server.settings.output_dir / image["subfolder"] / image["filename"]
        assert image["filename"] == "ComfyUI_00001_.png"
        with Image.open(path) as saved:
            assert saved.size == (64, 64)
            prompt, workflow = json.loads(saved.text["prompt"]), json.loads(saved.text["workflow"])
        assert prompt[save_id]["class_type"] == "SaveImage"
        assert sorted(n["type"] for n in workflow["nodes"]) == DEFAULT_GRAPH_TYPES  # the frontend's UI graph
        # The frontend received the output and shows the image (loaded from /api/view).
        page.mouse.click(700, 600)  # focus the canvas, then fit the whole graph into view
        page.keyboard.press(".")
        wait_until(page, """([id, name]) => {
            const outputs = (window.app.nodeOutputs || {})[id];
            const shown = [...document.querySelectorAll('img')].some(
                (img) => img.src.includes('/api/view?filename=' + name) && img.complete && img.naturalWidth === 64);
            return !!(outputs && outputs.images[0].filename === name && shown);
        }""", [save_id, image["filename"]], timeout=30)
        screenshot(page, "comfyui-default-graph")
        assert not errors, errors
    finally:
        context.close()
