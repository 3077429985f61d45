"""A first run as a new user makes it, at 1280x720 with the built-in nodes: every shipped
workflow fits the window, its nodes do not overlap, Queue shows the image without scrolling,
the seed really randomizes, and the node library lists ComfyUI's names apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from engine.settings import Settings
from tests.browser.conftest import screenshot
from tests.browser.editor import open_editor, wait_for_image, wait_for_node_count, wait_until
from tests.browser.server import ServerThread
from web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
MODEL_WORKFLOWS = sorted(p for p in (ROOT / "workflows").glob("*.json") if p.name != "example_math.json")
VIEWPORT = {"width": 1280, "height": 720}


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoints of every family (the SDXL workflow's too), LoRAs and input/example.png."""
    from tests.workflows.model_files import make_installation

    root = make_installation(tmp_path_factory.mktemp("first-run"))
    for picture in (ROOT / "input").glob("*.png"):  # the shipped workflows' input images
        (root / "input" / picture.name).write_bytes(picture.read_bytes())
    # the shipped model files the stand-ins do not cover (e.g. an upscale model a workflow names)
    for shipped in (ROOT / "models").glob("*/*.safetensors"):
        target = root / "models" / shipped.parent.name / shipped.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(shipped)
    return root


@pytest.fixture
def real_server(installation: Path, tmp_path: Path) -> Iterator[ServerThread]:
    import main

    settings = Settings.for_root(installation, output_dir=tmp_path / "output", workflows_dir=ROOT / "workflows")
    registry = main.build_registry(custom_nodes=ROOT / "custom_nodes", entry_points=False, settings=settings)
    with ServerThread(create_app(registry, settings)) as running:
        running.settings = settings  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def small_page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(20000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def node_boxes(page) -> dict[str, dict[str, float]]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.node')].map(e => {
        const r = e.getBoundingClientRect();
        return [e.dataset.nodeId, {x: r.left, y: r.top, right: r.right, bottom: r.bottom}]; }))""")


def inside(box: dict[str, float], area: dict[str, float]) -> bool:
    return (box["x"] >= area["x"] - 1 and box["y"] >= area["y"] - 1 and box["right"] <= area["right"] + 1
            and box["bottom"] <= area["bottom"] + 1)


def canvas_box(page) -> dict[str, float]:
    return page.evaluate("""() => { const r = document.querySelector('#canvas').getBoundingClientRect();
        return {x: r.left, y: r.top, right: r.right, bottom: r.bottom}; }""")


def load_shipped(page, name: str) -> dict:
    document = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    page.select_option("#workflow-select", name)
    wait_until(page, """ids => JSON.stringify([...document.querySelectorAll('.node')].map(e => e.dataset.nodeId).sort())
                       === JSON.stringify(ids)""", sorted(document["nodes"]))
    return document


def make_fast(page, document: dict) -> None:
    """2 steps at 64 px (what the user sees is the same layout; the run takes a second)."""
    page.evaluate("""doc => { const g = window.latentflow.graph;
        for (const [id, node] of Object.entries(doc.nodes)) {
            if (node.type === 'SampleLatent') g.setValue(id, 'steps', 2);
            if (node.type === 'EmptyLatent') { g.setValue(id, 'width', 64); g.setValue(id, 'height', 64); }
            if (node.type === 'ScaleLatent') { g.setValue(id, 'width', 96); g.setValue(id, 'height', 96); }
        } }""", document)


@pytest.mark.parametrize("path", MODEL_WORKFLOWS, ids=[p.stem for p in MODEL_WORKFLOWS])
def test_shipped_workflow_fits_without_overlaps_and_its_image_shows_without_scrolling(small_page, real_server, path):
    page = small_page
    open_editor(page, real_server.url)
    document = load_shipped(page, path.stem)
    boxes, area = node_boxes(page), canvas_box(page)
    for node_id, box in boxes.items():
        assert inside(box, area), f"{path.name}: node {node_id} is outside the view: {box} not in {area}"
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            one, two = boxes[a], boxes[b]
            overlap = min(one["right"], two["right"]) > max(one["x"], two["x"]) and \
                min(one["bottom"], two["bottom"]) > max(one["y"], two["y"])
            assert not overlap, f"{path.name}: nodes {a} and {b} overlap"
    make_fast(page, document)
    page.click("#queue-button")
    save = next(i for i, n in document["nodes"].items() if n["type"] == "SaveImage")
    selector = f'[data-node-id="{save}"] .node-images img'
    wait_for_image(page, selector, timeout=120)
    image = page.locator(selector).first.bounding_box()
    image_box = {"x": image["x"], "y": image["y"], "right": image["x"] + image["width"],
                 "bottom": image["y"] + image["height"]}
    assert inside(image_box, canvas_box(page)), f"{path.name}: the image {image_box} is not all in view"
    assert image["width"] >= 96, f"{path.name}: the image shows at {image['width']} px"
    if path.stem == "txt2img":
        screenshot(page, "first-run-txt2img-done")


def test_randomized_seed_makes_a_new_image_on_the_second_queue(small_page, real_server):
    page = small_page
    open_editor(page, real_server.url)
    document = load_shipped(page, "txt2img")
    make_fast(page, document)
    seed = page.evaluate("() => window.latentflow.graph.nodes.get('5').inputs.seed")
    assert page.input_value('[data-node-id="5"] .seed-control') == "randomize"
    page.click("#queue-button")
    wait_for_image(page, '[data-node-id="7"] .node-images img', timeout=120)
    first = page.get_attribute('[data-node-id="7"] .node-images img', "src")
    after = page.evaluate("() => window.latentflow.graph.nodes.get('5').inputs.seed")
    assert after != seed
    assert page.input_value('[data-node-id="5"] [data-widget="seed"] input') == str(after)
    page.click("#queue-button")
    wait_until(page, """first => { const img = document.querySelector('[data-node-id="7"] .node-images img');
        return img && img.getAttribute('src') !== first && img.complete && img.naturalWidth > 0; }""", first, timeout=120)
    # the sampler ran again (only the loader, prompts and empty latent were cached)
    wait_until(page, "() => document.querySelector('#run-progress-text').textContent.startsWith('done')")
    assert page.inner_text('[data-node-id="5"] .node-time') not in ("", "cached")
    assert page.inner_text('[data-node-id="1"] .node-time') == "cached"
    assert len(list(real_server.settings.output_dir.glob("*.png"))) == 2


def test_node_library_lists_comfyui_nodes_apart(small_page, real_server):
    page = small_page
    open_editor(page, real_server.url)
    page.click("#library-button")
    ours = page.locator('#library [data-group="latentflow"] .library-node')
    comfy = page.locator('#library [data-group="ComfyUI"] .library-node')
    our_types = set(ours.evaluate_all("items => items.map(i => i.dataset.type)"))
    comfy_types = set(comfy.evaluate_all("items => items.map(i => i.dataset.type)"))
    assert {"SampleLatent", "LoadCheckpoint", "SaveImage"} <= our_types
    assert {"KSampler", "CheckpointLoaderSimple"} <= comfy_types and "KSampler" not in our_types
    page.fill("#library-search", "sample")
    wait_until(page, "() => document.querySelectorAll('#library .library-node[data-type=\"SampleLatent\"]').length === 1")
    before = page.locator(".node").count()
    page.click('#library .library-node[data-type="SampleLatent"]')
    wait_for_node_count(page, before + 1)
    assert page.locator(".node").last.get_attribute("data-node-type") == "SampleLatent"
