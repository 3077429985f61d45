"""Node modes, flags, colours, groups and Reroutes through ComfyUI's UI format and our document
(the editor's "open ComfyUI workflow" and "Save for ComfyUI"), against ComfyUI 0.3.64's /object_info."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine.comfyui_graph import prompt_to_ui_graph, ui_graph_to_document, ui_graph_to_prompt
from engine.comfyui_node_state import PALETTE, comfy_fields_from_ui, node_ui_from_comfy, palette_name
from tests.engine.test_comfyui_graph import DEFAULT_PROMPT, REFERENCE, default_graph, object_info  # noqa: F401

pytestmark = pytest.mark.skipif(not REFERENCE.exists(), reason=f"{REFERENCE} is missing")

GROUP = {"title": "Prompts", "bounding": [40, 100, 520, 400], "color": "#3f789e", "font_size": 24, "flags": {}}
ODD_COLOURS = {"color": "#123456", "bgcolor": "#654321"}  # not in litegraph's palette


def stateful_graph() -> dict[str, Any]:
    """The default graph as the frontend saves it after: a LatentUpscale (10) put between the
    empty latent and the sampler and bypassed, a PreviewImage (11) on the decoded image and muted,
    the negative prompt (7) collapsed, pinned and red, the positive (6) in colours of its own,
    a Reroute (20) on the VAE link, and a group."""
    g = default_graph()
    g.node(10, "LatentUpscale", ["bicubic", 1024, 768, "center"], inputs=(("samples", "LATENT"),),
           outputs=("LATENT",), mode=4)
    g.unlink(5, 3)
    g.link(5, 0, 10, "samples")
    g.link(10, 0, 3, "latent_image")
    g.node(11, "PreviewImage", inputs=(("images", "IMAGE"),), mode=2)
    g.link(8, 0, 11, "images")
    g.nodes[7].update(flags={"collapsed": True, "pinned": True}, color="#322", bgcolor="#533")
    g.nodes[6].update(ODD_COLOURS)
    reroute = g.node(20, "Reroute", inputs=(("", "*"),), outputs=("VAE",), properties={"showOutputText": False,
                                                                                        "horizontal": False})
    reroute["outputs"][0]["name"] = ""
    g.unlink(4, 8)
    g.link(4, 2, 20, "")
    g.link(20, 0, 8, "vae")
    graph = g.to_json()
    graph["groups"] = [copy.deepcopy(GROUP)]
    return graph


def stripped(prompt: dict[str, Any]) -> dict[str, Any]:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_the_editor_document_keeps_muted_bypassed_reroute_and_node_state(object_info) -> None:
    document, problems = ui_graph_to_document(stateful_graph(), object_info, editor=True)
    assert problems == []
    nodes = document["nodes"]
    assert sorted(nodes, key=int) == ["3", "4", "5", "6", "7", "8", "9", "10", "11", "20"]
    assert nodes["10"] == {"type": "LatentUpscale", "ui": {"pos": [100, 200], "mode": "bypassed"},
                           "inputs": {"upscale_method": "bicubic", "width": 1024, "height": 768, "crop": "center",
                                      "samples": ["5", 0]}}
    assert nodes["3"]["inputs"]["latent_image"] == ["10", 0]  # linked as drawn; the editor bypasses
    assert nodes["11"] == {"type": "PreviewImage", "inputs": {"images": ["8", 0]},
                           "ui": {"pos": [110, 220], "mode": "muted"}}
    assert nodes["20"] == {"type": "Reroute", "inputs": {"input": ["4", 2]}, "ui": {"pos": [200, 400]}}
    assert nodes["8"]["inputs"]["vae"] == ["20", 0]
    assert nodes["7"]["ui"] == {"pos": [70, 140], "collapsed": True, "pinned": True, "color": "red"}
    assert nodes["6"]["ui"] == {"pos": [60, 120], "comfyui": ODD_COLOURS}
    assert all("mode" not in nodes[n].get("ui", {}) for n in ("3", "4", "5", "6", "7", "8", "9", "20"))
    assert document["ui"] == {"comfyui": {"groups": [GROUP]}}


def test_the_document_that_runs_leaves_out_muted_and_resolves_bypassed_and_reroutes(object_info) -> None:
    document, problems = ui_graph_to_document(stateful_graph(), object_info)  # the CLI's
    assert problems == []
    nodes = document["nodes"]
    assert sorted(nodes, key=int) == ["3", "4", "5", "6", "7", "8", "9"]
    assert nodes["3"]["inputs"]["latent_image"] == ["5", 0]
    assert nodes["8"]["inputs"]["vae"] == ["4", 2]
    assert nodes["7"]["ui"] == {"pos": [70, 140], "collapsed": True, "pinned": True, "color": "red"}
    prompt, problems = ui_graph_to_prompt(stateful_graph(), object_info)
    assert problems == [] and stripped(prompt) == DEFAULT_PROMPT


def test_ui_file_to_editor_document_and_back_keeps_every_field(object_info) -> None:
    original = stateful_graph()
    document, _ = ui_graph_to_document(original, object_info, editor=True)
    exported = prompt_to_ui_graph(document, object_info)
    before = {n["id"]: n for n in original["nodes"]}
    after = {n["id"]: n for n in exported["nodes"]}
    assert sorted(after) == sorted(before)
    for node_id, node in before.items():
        for key in ("type", "pos", "mode", "flags"):
            assert after[node_id][key] == node[key], (node_id, key)
        for key in ("color", "bgcolor"):
            assert after[node_id].get(key) == node.get(key), (node_id, key)
        if "widgets_values" in node:
            assert after[node_id]["widgets_values"] == node["widgets_values"], node_id
    assert after[10]["mode"] == 4 and after[11]["mode"] == 2 and after[3]["mode"] == 0
    assert after[7]["flags"] == {"collapsed": True, "pinned": True}
    assert (after[7]["color"], after[7]["bgcolor"]) == ("#322", "#533")
    assert (after[6]["color"], after[6]["bgcolor"]) == ("#123456", "#654321")
    assert exported["groups"] == [GROUP]
    # The Reroute is the frontend's: one unnamed input, one output typed after what it carries.
    reroute = after[20]
    assert reroute["inputs"] == [{"name": "", "type": "*", "link": reroute["inputs"][0]["link"]}]
    assert [(o["name"], o["type"]) for o in reroute["outputs"]] == [("", "VAE")]
    links = {link[0]: link for link in exported["links"]}
    assert links[reroute["inputs"][0]["link"]][1:] == [4, 2, 20, 0, "VAE"]
    vae_socket = next(i for i in after[8]["inputs"] if i["name"] == "vae")
    assert links[vae_socket["link"]][1:] == [20, 0, 8, 1, "VAE"]
    assert reroute["outputs"][0]["links"] == [vae_socket["link"]]
    # Every link is listed on both ends.
    for link_id, (_, origin, origin_slot, target, target_slot, _type) in links.items():
        assert link_id in after[origin]["outputs"][origin_slot]["links"]
        assert after[target]["inputs"][target_slot]["link"] == link_id
    # What runs: the muted preview is left out, the bypassed upscale hands the latent through.
    prompt, problems = ui_graph_to_prompt(exported, object_info)
    assert problems == [] and stripped(prompt) == DEFAULT_PROMPT
    # And the editor gets the same document again.
    again, problems = ui_graph_to_document(exported, object_info, editor=True)
    assert problems == [] and again == document


def test_a_muted_node_that_feeds_a_running_node_stays_linked_in_the_editor(object_info) -> None:
    graph = stateful_graph()
    next(n for n in graph["nodes"] if n["id"] == 6)["mode"] = 2  # the positive prompt muted
    document, problems = ui_graph_to_document(graph, object_info, editor=True)
    assert problems == []
    assert document["nodes"]["6"]["ui"]["mode"] == "muted"
    assert document["nodes"]["3"]["inputs"]["positive"] == ["6", 0]
    prompt, problems = ui_graph_to_prompt(graph, object_info)
    assert "6" not in prompt and "positive" not in prompt["3"]["inputs"]
    assert [(p.node_id, p.input, p.code) for p in problems] == [("3", "positive", "muted_source")]


def test_a_muted_subgraph_is_left_out_of_the_editor_document_with_a_warning(object_info) -> None:
    from tests.engine.test_comfyui_graph import subgraph_graph

    graph = subgraph_graph()
    instance = next(n for n in graph["nodes"] if n["type"] in {d["id"] for d in graph["definitions"]["subgraphs"]})
    instance["mode"] = 2
    document, problems = ui_graph_to_document(graph, object_info, editor=True)
    assert str(instance["id"]) not in document["nodes"]
    assert [(p.node_id, p.code, p.severity) for p in problems] == [(str(instance["id"]), "subgraph_mode", "warning")]


@pytest.mark.parametrize("name", sorted(PALETTE))
def test_every_palette_colour_round_trips_by_name(name: str) -> None:
    fields = comfy_fields_from_ui({"color": name})
    assert (fields["color"], fields["bgcolor"]) == PALETTE[name]
    assert node_ui_from_comfy(fields, keep_mode=True) == {"color": name}


def test_node_state_mapping_edge_cases() -> None:
    assert palette_name("#322", "#533") == "red"
    assert palette_name(None, "#3F5159") == "pale_blue"  # case does not matter
    assert palette_name("#232", None) == "green"  # the title colour alone
    assert palette_name("#322", "#abc") is None  # the body colour decides
    assert node_ui_from_comfy({"mode": 4, "flags": {"collapsed": False}}, keep_mode=False) == {}
    assert node_ui_from_comfy({"mode": 1}, keep_mode=True) == {}  # "on event": runs like always
    assert comfy_fields_from_ui({}) == {"mode": 0, "flags": {}}
    # A palette name set in the editor wins over colours kept from the file.
    assert comfy_fields_from_ui({"color": "blue", "comfyui": ODD_COLOURS})["bgcolor"] == "#335"


def test_our_reroute_chain_exports_as_typed_comfyui_reroutes(object_info) -> None:
    from engine.comfyui_graph_export import export_problems

    document = {"version": 1, "nodes": {
        "1": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"type": "Reroute", "inputs": {"input": ["1", "VAE"]}, "ui": {"pos": [300, 0]}},
        "3": {"type": "Reroute", "inputs": {"input": ["2", "output"]}, "ui": {"pos": [400, 0], "color": "green"}},
        "4": {"type": "VAEDecode", "inputs": {"vae": ["3", "output"]}},
        "5": {"type": "FancyUpscaler", "inputs": {"image": ["4", 0]}},
    }}
    graph = prompt_to_ui_graph(document, object_info)
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert [(o["name"], o["type"]) for o in nodes[2]["outputs"]] == [("", "VAE")]
    assert [(o["name"], o["type"]) for o in nodes[3]["outputs"]] == [("", "VAE")]
    assert (nodes[3]["color"], nodes[3]["bgcolor"]) == PALETTE["green"]
    assert sorted(link[1:] for link in graph["links"]) == [
        [1, 2, 2, 0, "VAE"], [2, 0, 3, 0, "VAE"], [3, 0, 4, 1, "VAE"], [4, 0, 5, 0, "IMAGE"]]
    assert "widgets_values" not in nodes[2]
    prompt, _ = ui_graph_to_prompt(graph, object_info)
    assert prompt["4"]["inputs"] == {"vae": ["1", 2]}  # through both reroutes
    assert [(p.node_id, p.code) for p in export_problems(document, object_info)] == [("5", "unknown_type")]
    back, _ = ui_graph_to_document(graph, object_info, editor=True)
    assert back["nodes"]["3"] == {"type": "Reroute", "inputs": {"input": ["2", 0]},
                                  "ui": {"pos": [400, 0], "color": "green"}}
