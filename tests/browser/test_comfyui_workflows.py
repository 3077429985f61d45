"""ComfyUI UI-format workflows in our editor: dropped, opened from a PNG, and saved back out."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

import pytest

from engine.comfyui_graph import prompt_to_ui_graph, ui_graph_to_prompt
from tests.browser.conftest import screenshot
from tests.browser.editor import autosaved, link_count, new_canvas, open_editor, wait_for_node_count, wait_until
from tests.browser.server import ServerThread
from tests.web.fake_pack import make_fake_registry, png_bytes, txt2img_document
from web.app import create_app


def object_info(server) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/api/object_info") as response:
        return json.load(response)


def comfyui_graph(server) -> dict[str, Any]:
    """txt2img as the ComfyUI frontend would save it, with a Reroute on the VAE link and a
    PrimitiveNode feeding the positive prompt (a widget converted to an input)."""
    graph = prompt_to_ui_graph(txt2img_document(), object_info(server))
    nodes = {n["id"]: n for n in graph["nodes"]}
    nodes[5]["widgets_values"][:2] = [4242, "randomize"]
    nodes[5]["pos"] = [700, 90]
    vae_link = next(link for link in graph["links"] if link[1] == 1 and link[3] == 6)
    graph["nodes"].append({"id": 8, "type": "Reroute", "pos": [900, 400], "size": [75, 26], "mode": 0,
                           "inputs": [{"name": "", "type": "*", "link": 10}],
                           "outputs": [{"name": "", "type": "VAE", "links": [vae_link[0]]}], "properties": {}})
    graph["links"].append([10, 1, 2, 8, 0, "VAE"])
    vae_link[1:3] = [8, 0]
    text_input = next(i for i in nodes[2]["inputs"] if i["name"] == "text")
    text_input["link"] = 11
    graph["nodes"].append({"id": 9, "type": "PrimitiveNode", "pos": [60, 700], "mode": 0, "inputs": [],
                           "outputs": [{"name": "STRING", "type": "STRING", "links": [11],
                                        "widget": {"name": "text"}}],
                           "properties": {"Run widget replace on values": False},
                           "widgets_values": ["a primitive prompt"]})
    graph["links"].append([11, 9, 0, 2, 1, "STRING"])
    graph["last_node_id"], graph["last_link_id"] = 9, 11
    return graph


def drop_file(page, name: str, data: bytes, mime: str) -> None:
    """Drop a file on the canvas as the desktop does (a DragEvent carrying a DataTransfer)."""
    page.evaluate("""([name, b64, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: mime }));
        document.querySelector("#canvas").dispatchEvent(
            new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", [name, base64.b64encode(data).decode(), mime])


def test_dropping_a_comfyui_workflow_brings_nodes_links_and_widget_values(page, server):
    open_editor(page, server.url)
    new_canvas(page)
    drop_file(page, "ui.json", json.dumps(comfyui_graph(server)).encode(), "application/json")
    wait_for_node_count(page, 8)  # the Reroute stays (the editor's own); the PrimitiveNode becomes a value
    assert link_count(page) == 10
    assert page.input_value('[data-node-id="5"] [data-widget="seed"] input') == "4242"
    assert page.input_value('[data-node-id="2"] [data-widget="text"] textarea') == "a primitive prompt"
    document = autosaved(page)
    assert document["nodes"]["6"]["inputs"]["vae"] == ["8", "output"]  # through the Reroute, kept
    assert document["nodes"]["5"]["ui"]["pos"] == [700, 90]
    assert document["nodes"]["5"]["ui"]["controls"] == {"seed": "randomize"}
    assert page.locator(".toast", has_text="opened ComfyUI workflow ui.json: 8 nodes, 10 links").count() == 1
    screenshot(page, "comfyui-ui-workflow-dropped")


def test_what_could_not_be_mapped_is_said_on_screen(page, server):
    open_editor(page, server.url)
    new_canvas(page)
    graph = comfyui_graph(server)
    graph["nodes"].append({"id": 20, "type": "FancyUpscaler", "pos": [1300, 60], "mode": 0, "inputs": [],
                           "outputs": [], "widgets_values": [2.0, "lanczos"]})
    drop_file(page, "custom.json", json.dumps(graph).encode(), "application/json")
    report = page.wait_for_selector(".conversion-report")
    text = report.inner_text()
    assert "node 20 (FancyUpscaler): node type 'FancyUpscaler' is not in the node catalogue" in text
    assert "[2, 'lanczos']" in text or "[2.0, 'lanczos']" in text
    assert "install the node pack" in text
    wait_for_node_count(page, 9)


def test_a_comfyui_png_opens_its_ui_workflow(page, server, tmp_path):
    open_editor(page, server.url)
    new_canvas(page)
    prompt = {"1": {"class_type": "LoadCheckpoint", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}}}
    path = tmp_path / "ComfyUI_00001_.png"
    path.write_bytes(png_bytes(8, 8, (1, 2, 3), {"prompt": json.dumps(prompt),
                                                  "workflow": json.dumps(comfyui_graph(server))}))
    page.set_input_files("#file-input", str(path))
    wait_for_node_count(page, 8)  # the UI graph (with positions), not the one-node prompt
    assert page.input_value('[data-node-id="5"] [data-widget="seed"] input') == "4242"
    assert autosaved(page)["nodes"]["5"]["ui"]["pos"] == [700, 90]


def test_save_as_comfyui_workflow_writes_a_ui_graph(page, server):
    open_editor(page, server.url)  # the default txt2img workflow
    page.fill('[data-node-id="2"] [data-widget="text"] textarea', "saved for ComfyUI")
    page.keyboard.press("Tab")
    wait_until(page, "() => JSON.parse(localStorage.getItem('latentflow.workflow')).nodes['2'].inputs.text "
                     "=== 'saved for ComfyUI'")
    with page.expect_download() as download:
        page.click("#save-comfyui-button")
    graph = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert download.value.suggested_filename.endswith(".comfyui.json")
    assert graph["version"] == 0.4 and len(graph["nodes"]) == 7 and len(graph["links"]) == 9
    sampler = next(n for n in graph["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"][1] in ("fixed", "increment", "decrement", "randomize")
    prompt, problems = ui_graph_to_prompt(graph, object_info(server))
    assert problems == []
    assert prompt["2"]["inputs"] == {"text": "saved for ComfyUI", "clip": ["1", 1]}
    assert prompt["5"]["inputs"]["latent"] == ["4", 0]


def test_comfyui_frontend_opens_our_export_and_agrees_with_our_conversion(browser, settings):
    """Ours -> UI file -> ComfyUI's own frontend -> its graph-to-prompt and our conversion of
    the graph it saves: both must give the prompt we started from."""
    pytest.importorskip("comfyui_frontend_package", reason="the optional ComfyUI frontend is not installed")
    user = settings.root / "user" / "comfyui"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    app = create_app(make_fake_registry(None, settings.input_dir), settings, frontend="comfyui")
    with ServerThread(app) as server:
        info = object_info(server)
        document = txt2img_document(seed=77, text="through the frontend")
        expected, _ = ui_graph_to_prompt(prompt_to_ui_graph(document, info), info)
        context = browser.new_context(viewport={"width": 1500, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(server.url)
            wait_until(page, "() => !!(window.app && window.app.graph && window.LiteGraph)", timeout=60)
            page.keyboard.press("Escape")
            page.evaluate("g => window.app.loadGraphData(g)", prompt_to_ui_graph(document, info))
            result = page.evaluate("""async () => {
                const { output, workflow } = await window.app.graphToPrompt();
                return { output, workflow: JSON.parse(JSON.stringify(workflow)) };
            }""")
            screenshot(page, "comfyui-frontend-opened-our-export")
            # Their rules for bypassed (mode 4) and muted (mode 2) nodes against ours.
            modes = page.evaluate("""async () => {
                const results = [];
                for (const [id, mode] of [[3, 4], [6, 4], [5, 2]]) {
                    window.app.graph.getNodeById(id).mode = mode;
                    const { output, workflow } = await window.app.graphToPrompt();
                    results.push({ output, workflow: JSON.parse(JSON.stringify(workflow)) });
                }
                return results;
            }""")
        finally:
            context.close()
    assert not errors, errors
    theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in result["output"].items()}
    assert theirs == expected
    ours, problems = ui_graph_to_prompt(result["workflow"], info)  # the graph as their frontend saves it
    assert problems == []
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in ours.items()} == expected
    for case in modes:
        theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in case["output"].items()}
        ours, _ = ui_graph_to_prompt(case["workflow"], info)
        stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in ours.items()}
        # The frontend sends what fed only left-out nodes too (ComfyUI never runs it); we leave it out.
        assert stripped == {k: v for k, v in theirs.items() if k in stripped}
        assert set(stripped) <= set(theirs)


def test_save_as_comfyui_keeps_modes_flags_and_colours(page, server):
    """Muted, bypassed, collapsed, pinned and coloured nodes go out as the ComfyUI frontend
    keeps them (mode 2 / 4, flags, color / bgcolor), and come back into our document."""
    from engine.comfyui_graph import ui_graph_to_document

    open_editor(page, server.url)
    document = txt2img_document()
    document["nodes"]["2"]["ui"]["mode"] = "bypassed"
    document["nodes"]["3"]["ui"].update(collapsed=True, pinned=True, color="red")
    document["nodes"]["8"] = {"type": "SaveImage", "inputs": {"images": ["6", "image"], "filename_prefix": "muted"},
                              "ui": {"pos": [1300, 260], "mode": "muted"}}
    page.evaluate("doc => window.latentflow.load(doc, 'modes')", document)
    wait_for_node_count(page, 8)
    page.wait_for_selector('[data-node-id="8"].mode-muted')
    with page.expect_download() as download:
        page.click("#save-comfyui-button")
    graph = json.loads(open(download.value.path(), encoding="utf-8").read())
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert {i: (n["mode"], n["flags"]) for i, n in nodes.items()} == {
        1: (0, {}), 2: (4, {}), 3: (0, {"collapsed": True, "pinned": True}), 4: (0, {}), 5: (0, {}), 6: (0, {}),
        7: (0, {}), 8: (2, {})}
    assert (nodes[3]["color"], nodes[3]["bgcolor"]) == ("#322", "#533")
    assert all("color" not in n for i, n in nodes.items() if i != 3)
    info = object_info(server)
    prompt, _ = ui_graph_to_prompt(graph, info)
    assert set(prompt) == {"1", "3", "4", "5", "6", "7"}  # muted 8 left out, bypassed 2 too
    assert "positive" not in prompt["5"]["inputs"]  # a TextEncode has no CONDITIONING input to hand on
    back, problems = ui_graph_to_document(graph, info, editor=True)
    assert problems == []
    assert {i: n.get("ui", {}).get("mode") for i, n in back["nodes"].items()} == {
        "1": None, "2": "bypassed", "3": None, "4": None, "5": None, "6": None, "7": None, "8": "muted"}
    assert {k: back["nodes"]["3"]["ui"][k] for k in ("collapsed", "pinned", "color")} == {
        "collapsed": True, "pinned": True, "color": "red"}


def test_comfyui_frontend_reads_our_modes_flags_colours_and_reroutes(browser, settings):
    """Our export with a Reroute, a muted, a bypassed and a collapsed pinned red node, opened by
    ComfyUI's own frontend: it sees the same node state, queues what we would, and the graph
    it saves converts back to the editor's document we started from."""
    pytest.importorskip("comfyui_frontend_package", reason="the optional ComfyUI frontend is not installed")
    from engine.comfyui_graph import ui_graph_to_document

    user = settings.root / "user" / "comfyui"
    user.mkdir(parents=True)
    (user / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    document = txt2img_document(seed=5)
    document["nodes"]["8"] = {"type": "Reroute", "inputs": {"input": ["1", "vae"]}, "ui": {"pos": [800, 400]}}
    document["nodes"]["6"]["inputs"]["vae"] = ["8", "output"]
    document["nodes"]["3"]["ui"].update(collapsed=True, pinned=True, color="red")
    document["nodes"]["2"]["ui"]["mode"] = "bypassed"
    document["nodes"]["9"] = {"type": "SaveImage", "inputs": {"images": ["6", "image"], "filename_prefix": "m"},
                              "ui": {"pos": [1300, 300], "mode": "muted"}}
    app = create_app(make_fake_registry(None, settings.input_dir), settings, frontend="comfyui")
    with ServerThread(app) as server:
        info = object_info(server)
        graph = prompt_to_ui_graph(document, info)
        context = browser.new_context(viewport={"width": 1500, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(server.url)
            wait_until(page, "() => !!(window.app && window.app.graph && window.LiteGraph)", timeout=60)
            page.keyboard.press("Escape")
            page.evaluate("g => window.app.loadGraphData(g)", graph)
            result = page.evaluate("""async () => {
                const state = window.app.graph._nodes.map((n) => ({ id: n.id, type: n.type, mode: n.mode,
                    flags: { ...n.flags }, color: n.color ?? null, bgcolor: n.bgcolor ?? null }));
                const { output, workflow } = await window.app.graphToPrompt();
                return { state, output, workflow: JSON.parse(JSON.stringify(workflow)) };
            }""")
            screenshot(page, "comfyui-frontend-opened-our-modes")
        finally:
            context.close()
    assert not errors, errors
    state = {int(s["id"]): s for s in result["state"]}  # (this frontend keeps ids as strings)
    assert state[8]["type"] == "Reroute"
    assert {i: s["mode"] for i, s in state.items()} == {1: 0, 2: 4, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0, 9: 2}
    assert state[3]["flags"].get("collapsed") is True and state[3]["flags"].get("pinned") is True
    assert (state[3]["color"], state[3]["bgcolor"]) == ("#322", "#533")
    ours, _ = ui_graph_to_prompt(graph, info)
    theirs = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in result["output"].items()}
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in ours.items()}
    assert stripped == {k: v for k, v in theirs.items() if k in stripped}
    assert set(stripped) == {"1", "3", "4", "5", "6", "7"} and stripped["6"]["inputs"]["vae"] == ["1", 2]
    back, problems = ui_graph_to_document(result["workflow"], info, editor=True)
    assert problems == []
    assert {i: (n["type"], n.get("ui", {}).get("mode")) for i, n in back["nodes"].items()} == {
        i: (n["type"], n["ui"].get("mode")) for i, n in document["nodes"].items()}
    assert back["nodes"]["6"]["inputs"]["vae"] == ["8", 0] and back["nodes"]["8"]["inputs"]["input"] == ["1", 2]
    assert {k: back["nodes"]["3"]["ui"].get(k) for k in ("collapsed", "pinned", "color")} == {
        "collapsed": True, "pinned": True, "color": "red"}
