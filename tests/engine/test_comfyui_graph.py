"""ComfyUI UI-format graphs <-> API prompts, against ComfyUI 0.3.64's real /object_info (no torch)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

import pytest

from engine.comfyui_graph import (
    is_ui_graph, prompt_to_ui_graph, ui_graph_to_document, ui_graph_to_prompt,
)
from tests.reference import COMFYUI_OBJECT_INFO

REFERENCE = COMFYUI_OBJECT_INFO
pytestmark = pytest.mark.skipif(not REFERENCE.exists(), reason=f"{REFERENCE} is missing")


@lru_cache(maxsize=1)
def _object_info() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture
def object_info() -> dict[str, Any]:
    return _object_info()


class UiGraph:
    """Builds UI graphs the way the frontend saves them: sockets, then widget inputs."""

    def __init__(self) -> None:
        self.nodes: dict[int, dict[str, Any]] = {}
        self.links: list[list[Any]] = []
        self.last_link_id = 0

    def node(self, node_id: int, node_type: str, widgets: Any = None, inputs: tuple[Any, ...] = (),
             outputs: tuple[str, ...] = (), mode: int = 0, **extra: Any) -> dict[str, Any]:
        """``inputs``: (name, type) sockets or (name, type, "widget") widget inputs."""
        node = {"id": node_id, "type": node_type, "pos": [node_id * 10, node_id * 20], "size": [300, 100],
                "flags": {}, "order": len(self.nodes), "mode": mode,
                "inputs": [{"name": i[0], "type": i[1], "link": None, **({"widget": {"name": i[0]}}
                                                                         if len(i) > 2 else {})} for i in inputs],
                "outputs": [{"name": t, "type": t, "links": [], "slot_index": k} for k, t in enumerate(outputs)],
                "properties": {"Node name for S&R": node_type}, **extra}
        if widgets is not None:
            node["widgets_values"] = widgets
        self.nodes[node_id] = node
        return node

    def link(self, origin: int, origin_slot: int, target: int, target_input: str) -> None:
        self.last_link_id += 1
        link_id = self.last_link_id
        inputs = self.nodes[target]["inputs"]
        slot = next(i for i, item in enumerate(inputs) if item["name"] == target_input)
        link_type = self.nodes[origin]["outputs"][origin_slot]["type"]
        self.links.append([link_id, origin, origin_slot, target, slot, link_type])
        inputs[slot]["link"] = link_id
        self.nodes[origin]["outputs"][origin_slot]["links"].append(link_id)

    def unlink(self, origin: int, target: int) -> None:
        for link in [l for l in self.links if l[1] == origin and l[3] == target]:
            self.links.remove(link)
            self.nodes[target]["inputs"][link[4]]["link"] = None
            self.nodes[origin]["outputs"][link[2]]["links"].remove(link[0])

    def to_json(self) -> dict[str, Any]:
        return {"last_node_id": max(self.nodes, default=0), "last_link_id": self.last_link_id,
                "nodes": list(self.nodes.values()), "links": self.links, "groups": [], "config": {},
                "extra": {}, "version": 0.4}


KSAMPLER_INPUTS = (("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                   ("latent_image", "LATENT"))


def default_graph(seed_control: bool = True) -> UiGraph:
    """ComfyUI's classic SD1.5 default graph (ids as the frontend gives them)."""
    g = UiGraph()
    g.node(4, "CheckpointLoaderSimple", ["v1-5-pruned-emaonly.safetensors"], outputs=("MODEL", "CLIP", "VAE"))
    g.node(6, "CLIPTextEncode", ["a bottle"], inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",))
    g.node(7, "CLIPTextEncode", ["text, watermark"], inputs=(("clip", "CLIP"),), outputs=("CONDITIONING",))
    g.node(5, "EmptyLatentImage", [512, 512, 1], outputs=("LATENT",))
    values = [156680208700286, "randomize", 20, 8, "euler", "normal", 1] if seed_control \
        else [156680208700286, 20, 8, "euler", "normal", 1]
    g.node(3, "KSampler", values, inputs=KSAMPLER_INPUTS, outputs=("LATENT",))
    g.node(8, "VAEDecode", inputs=(("samples", "LATENT"), ("vae", "VAE")), outputs=("IMAGE",))
    g.node(9, "SaveImage", ["ComfyUI"], inputs=(("images", "IMAGE"),))
    for origin, slot, target, name in [(4, 1, 6, "clip"), (4, 1, 7, "clip"), (4, 0, 3, "model"),
                                       (6, 0, 3, "positive"), (7, 0, 3, "negative"), (5, 0, 3, "latent_image"),
                                       (3, 0, 8, "samples"), (4, 2, 8, "vae"), (8, 0, 9, "images")]:
        g.link(origin, slot, target, name)
    return g


DEFAULT_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def convert(g: UiGraph | dict[str, Any], object_info: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    return ui_graph_to_prompt(g.to_json() if isinstance(g, UiGraph) else g, object_info)


def test_is_ui_graph_tells_the_three_shapes_apart() -> None:
    assert is_ui_graph(default_graph().to_json())
    assert not is_ui_graph(DEFAULT_PROMPT)
    assert not is_ui_graph({"version": 1, "nodes": {"1": {"type": "Const"}}})
    assert not is_ui_graph([1, 2])


def test_default_graph_converts_to_the_prompt_the_frontend_sends(object_info) -> None:
    prompt, problems = convert(default_graph(), object_info)
    assert problems == []
    assert prompt == DEFAULT_PROMPT


def test_the_control_after_generate_entry_is_skipped_not_given_to_the_next_widget(object_info) -> None:
    prompt, _ = convert(default_graph(), object_info)
    assert prompt["3"]["inputs"]["steps"] == 20  # not "randomize"
    assert prompt["3"]["inputs"]["denoise"] == 1  # every later widget in place too
    # graphs saved before seeds had a control entry still map by count
    older, problems = convert(default_graph(seed_control=False), object_info)
    assert older == DEFAULT_PROMPT and problems == []


def test_a_widget_converted_to_an_input_takes_the_linked_value(object_info) -> None:
    g = default_graph()
    g.nodes[3]["inputs"].append({"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}})
    g.node(10, "PrimitiveInt", [7, "fixed"], outputs=("INT",))  # a real node, not the UI-only one
    g.link(10, 0, 3, "seed")
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert prompt["3"]["inputs"]["seed"] == ["10", 0]
    assert prompt["10"] == {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    assert prompt["3"]["inputs"]["steps"] == 20


def test_primitive_node_gives_its_value_to_every_target_and_is_left_out(object_info) -> None:
    g = default_graph()
    g.node(11, "KSampler", [1, "fixed", 5, 7.5, "euler", "karras", 0.5],
           inputs=(*KSAMPLER_INPUTS, ("seed", "INT", "widget")), outputs=("LATENT",))
    g.nodes[3]["inputs"].append({"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}})
    g.node(12, "PrimitiveNode", [424242, "increment"], outputs=("INT",), title="shared seed")
    g.link(12, 0, 3, "seed")
    g.link(12, 0, 11, "seed")
    for origin, slot, name in [(4, 0, "model"), (6, 0, "positive"), (7, 0, "negative"), (3, 0, "latent_image")]:
        g.link(origin, slot, 11, name)
    g.unlink(3, 8)
    g.link(11, 0, 8, "samples")  # the second pass now feeds the decoder
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert "12" not in prompt
    assert prompt["3"]["inputs"]["seed"] == 424242 and prompt["11"]["inputs"]["seed"] == 424242
    assert prompt["11"]["inputs"]["latent_image"] == ["3", 0] and prompt["8"]["inputs"]["samples"] == ["11", 0]


def test_reroute_chains_are_followed_to_the_real_source(object_info) -> None:
    g = default_graph()
    g.unlink(4, 8)  # vae now via reroutes
    g.node(20, "Reroute", inputs=(("", "*"),), outputs=("VAE",))
    g.node(21, "Reroute", inputs=(("", "*"),), outputs=("VAE",))
    g.link(4, 2, 20, "")
    g.link(20, 0, 21, "")
    g.link(21, 0, 8, "vae")
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert prompt["8"]["inputs"]["vae"] == ["4", 2]
    assert "20" not in prompt and "21" not in prompt


def test_muted_nodes_and_what_fed_only_them_are_dropped(object_info) -> None:
    g = default_graph()
    g.node(30, "VAEDecode", inputs=(("samples", "LATENT"), ("vae", "VAE")), outputs=("IMAGE",))
    g.node(31, "ImageScaleBy", ["nearest-exact", 2.0], inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    g.node(32, "SaveImage", ["big"], inputs=(("images", "IMAGE"),), mode=2)
    g.link(3, 0, 30, "samples")
    g.link(4, 2, 30, "vae")
    g.link(30, 0, 31, "image")
    g.link(31, 0, 32, "images")
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert prompt == DEFAULT_PROMPT  # 32 is muted; 31 and 30 fed only it; 3 and 4 still feed 8


def test_an_input_fed_by_a_muted_node_is_left_out_with_a_warning(object_info) -> None:
    g = default_graph()
    g.nodes[5]["mode"] = 2
    prompt, problems = convert(g, object_info)
    assert "5" not in prompt and "latent_image" not in prompt["3"]["inputs"]
    (problem,) = problems
    assert (problem.node_id, problem.input, problem.severity) == ("3", "latent_image", "warning")
    assert "node 5" in problem.message and "muted" in problem.message


def test_bypassed_nodes_pass_the_input_of_the_matching_type(object_info) -> None:
    g = default_graph()
    # A bypassed LoRA: MODEL out 0 <- model in 0, CLIP out 1 <- clip in 1.
    g.node(40, "LoraLoader", ["style.safetensors", 1.0, 1.0], inputs=(("model", "MODEL"), ("clip", "CLIP")),
           outputs=("MODEL", "CLIP"), mode=4)
    g.unlink(4, 3)
    g.unlink(4, 6)
    g.link(4, 0, 40, "model")
    g.link(4, 1, 40, "clip")
    g.link(40, 0, 3, "model")
    g.link(40, 1, 6, "clip")
    # A bypassed second sampler: its LATENT output is fed from latent_image (slot 3), not slot 0 (model).
    g.node(41, "KSampler", [1, "fixed", 5, 7.5, "euler", "karras", 0.5], inputs=KSAMPLER_INPUTS,
           outputs=("LATENT",), mode=4)
    for origin, slot, name in [(4, 0, "model"), (6, 0, "positive"), (7, 0, "negative"), (3, 0, "latent_image")]:
        g.link(origin, slot, 41, name)
    g.unlink(3, 8)
    g.link(41, 0, 8, "samples")
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert prompt == DEFAULT_PROMPT


def test_a_bypassed_node_without_a_matching_input_leaves_its_consumer_unlinked(object_info) -> None:
    g = default_graph()
    g.node(42, "VAEEncode", inputs=(("pixels", "IMAGE"), ("vae", "VAE")), outputs=("LATENT",), mode=4)
    g.unlink(5, 3)
    g.link(4, 2, 42, "vae")
    g.link(42, 0, 3, "latent_image")
    prompt, _ = convert(g, object_info)
    assert "latent_image" not in prompt["3"]["inputs"]  # VAE is not a LATENT: nothing passes through
    assert "42" not in prompt


def test_notes_and_groups_are_ignored(object_info) -> None:
    g = default_graph()
    g.node(50, "Note", ["remember to set the checkpoint"])
    g.node(51, "MarkdownNote", ["# hello"])
    graph = g.to_json()
    graph["groups"] = [{"title": "Loaders", "bounding": [0, 0, 400, 300], "color": "#3f789e"}]
    prompt, problems = convert(graph, object_info)
    assert prompt == DEFAULT_PROMPT and problems == []
    document, _ = ui_graph_to_document(graph, object_info)
    assert document["ui"]["comfyui"]["groups"][0]["title"] == "Loaders"  # kept for the way back


def test_dict_widgets_values_map_by_name(object_info) -> None:
    g = default_graph()
    g.nodes[5]["widgets_values"] = {"height": 768, "batch_size": 2, "width": 640, "videopreview": {"x": 1}}
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert prompt["5"]["inputs"] == {"width": 640, "height": 768, "batch_size": 2}


def test_an_unknown_node_type_is_reported_with_what_could_not_be_mapped(object_info) -> None:
    g = default_graph()
    g.node(60, "FancyUpscaler", [2.0, "lanczos"], inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    g.unlink(8, 9)
    g.link(8, 0, 60, "image")
    g.link(60, 0, 9, "images")
    prompt, problems = convert(g, object_info)
    (problem,) = problems
    assert (problem.node_id, problem.node_type, problem.severity) == ("60", "FancyUpscaler", "error")
    assert "[2.0, 'lanczos']" in problem.message and "not in the node catalogue" in problem.message
    assert "install" in problem.hint
    # kept with its links, so validation reports it in place and its consumers stay linked
    assert prompt["60"] == {"class_type": "FancyUpscaler", "inputs": {"image": ["8", 0]}}
    assert prompt["9"]["inputs"]["images"] == ["60", 0]


def test_a_widget_count_that_fits_no_layout_is_a_warning_naming_the_widgets(object_info) -> None:
    g = default_graph()
    g.nodes[5]["widgets_values"] = [512, 512]
    prompt, problems = convert(g, object_info)
    (problem,) = problems
    assert (problem.node_id, problem.severity, problem.code) == ("5", "warning", "widget_count")
    assert "width, height, batch_size" in problem.message
    assert prompt["5"]["inputs"] == {"width": 512, "height": 512}


def test_image_upload_entry_is_skipped(object_info) -> None:
    g = UiGraph()
    g.node(1, "LoadImage", ["cat.png", "image"], outputs=("IMAGE", "MASK"))
    g.node(2, "ImageScaleBy", ["bicubic", 0.5], inputs=(("image", "IMAGE"),), outputs=("IMAGE",))
    g.node(3, "PreviewImage", inputs=(("images", "IMAGE"),))
    g.link(1, 0, 2, "image")
    g.link(2, 0, 3, "images")
    prompt, problems = convert(g, object_info)
    assert problems == []
    assert prompt["1"]["inputs"] == {"image": "cat.png"}
    assert prompt["2"]["inputs"] == {"upscale_method": "bicubic", "scale_by": 0.5, "image": ["1", 0]}


def subgraph_graph(promoted_widget: bool = False) -> dict[str, Any]:
    """The default graph with the two text encoders inside one subgraph (instance node 70)."""
    g = default_graph()
    for origin, target in [(4, 6), (4, 7), (6, 3), (7, 3)]:
        g.unlink(origin, target)
    graph = g.to_json()
    graph["nodes"] = [n for n in graph["nodes"] if n["id"] not in (6, 7)]
    sampler = next(n for n in graph["nodes"] if n["id"] == 3)
    sampler["inputs"][1]["link"], sampler["inputs"][2]["link"] = 101, 102
    instance_inputs = [{"name": "clip", "type": "CLIP", "link": 100}]
    if promoted_widget:
        instance_inputs.append({"name": "text", "type": "STRING", "link": None, "widget": {"name": "text"}})
    graph["nodes"].append({
        "id": 70, "type": "9b5f7f0a-0000-4000-8000-000000000001", "pos": [100, 100], "mode": 0,
        "inputs": instance_inputs,
        "outputs": [{"name": "positive", "type": "CONDITIONING", "links": [101]},
                    {"name": "negative", "type": "CONDITIONING", "links": [102]}]})
    graph["links"] += [[100, 4, 1, 70, 0, "CLIP"], [101, 70, 0, 3, 1, "CONDITIONING"],
                       [102, 70, 1, 3, 2, "CONDITIONING"]]
    inner_links = [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 6, "target_slot": 0, "type": "CLIP"},
                   {"id": 2, "origin_id": -10, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "CLIP"},
                   {"id": 3, "origin_id": 6, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                    "type": "CONDITIONING"},
                   {"id": 4, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 1,
                    "type": "CONDITIONING"}]
    text_input = {"name": "text", "type": "STRING", "link": 5 if promoted_widget else None, "widget": {"name": "text"}}
    if promoted_widget:
        inner_links.append({"id": 5, "origin_id": -10, "origin_slot": 1, "target_id": 6, "target_slot": 1,
                            "type": "STRING"})
    inner_nodes = [
        {"id": 6, "type": "CLIPTextEncode", "pos": [10, 10], "mode": 0, "widgets_values": ["a bottle"],
         "inputs": [{"name": "clip", "type": "CLIP", "link": 1}, text_input],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [3]}]},
        {"id": 7, "type": "CLIPTextEncode", "pos": [10, 200], "mode": 0, "widgets_values": ["text, watermark"],
         "inputs": [{"name": "clip", "type": "CLIP", "link": 2}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}]},
    ]
    graph["definitions"] = {"subgraphs": [{
        "id": "9b5f7f0a-0000-4000-8000-000000000001", "name": "prompts", "nodes": inner_nodes,
        "links": inner_links, "inputNode": {"id": -10}, "outputNode": {"id": -20},
        "inputs": [{"name": "clip", "type": "CLIP"}], "outputs": [{"name": "positive"}, {"name": "negative"}]}]}
    return graph


def test_a_simple_subgraph_is_flattened_with_frontend_style_ids(object_info) -> None:
    prompt, problems = convert(subgraph_graph(), object_info)
    assert problems == []
    assert prompt["70:6"] == {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["4", 1]}}
    assert prompt["3"]["inputs"]["positive"] == ["70:6", 0] and prompt["3"]["inputs"]["negative"] == ["70:7", 0]
    assert "70" not in prompt
    document, _ = ui_graph_to_document(subgraph_graph(), object_info)
    assert document["nodes"]["70:7"]["ui"]["pos"] == [110, 300]  # inner positions offset by the instance's


def test_a_subgraph_whose_value_lives_in_a_promoted_widget_is_refused_clearly(object_info) -> None:
    prompt, problems = convert(subgraph_graph(promoted_widget=True), object_info)
    (problem,) = problems
    assert (problem.node_id, problem.input, problem.severity) == ("70", "text", "error")
    assert "promoted widget" in problem.message and "Unpack Subgraph" in problem.hint


def test_round_trip_prompt_to_ui_graph_to_prompt_is_identical(object_info) -> None:
    prompt = copy.deepcopy(DEFAULT_PROMPT)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "cat.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["12"] = {"class_type": "KSampler", "inputs": {
        "seed": ["13", 0], "steps": 12, "cfg": 5.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 0.6,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["11", 0]}}
    prompt["13"] = {"class_type": "PrimitiveInt", "inputs": {"value": 99}}
    prompt["14"] = {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}}
    prompt["15"] = {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}, "_meta": {"title": "second"}}
    graph = prompt_to_ui_graph(prompt, object_info)
    assert is_ui_graph(json.loads(json.dumps(graph)))
    back, problems = ui_graph_to_prompt(graph, object_info)
    assert problems == []
    assert back == prompt


def test_the_exported_graph_is_laid_out_as_the_frontend_saves_one(object_info) -> None:
    graph = prompt_to_ui_graph(DEFAULT_PROMPT, object_info)
    sampler = next(n for n in graph["nodes"] if n["id"] == 3)
    assert sampler["widgets_values"] == [156680208700286, "fixed", 20, 8, "euler", "normal", 1]
    assert [i["name"] for i in sampler["inputs"]][:4] == ["model", "positive", "negative", "latent_image"]
    assert sampler["inputs"][4] == {"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}}
    assert graph["last_node_id"] == 9 and graph["last_link_id"] == len(graph["links"]) == 9
    for link_id, origin, origin_slot, target, target_slot, link_type in graph["links"]:
        source = next(n for n in graph["nodes"] if n["id"] == origin)
        consumer = next(n for n in graph["nodes"] if n["id"] == target)
        assert link_id in source["outputs"][origin_slot]["links"]
        assert consumer["inputs"][target_slot]["link"] == link_id
        assert source["outputs"][origin_slot]["type"] == link_type
    # no ui positions in a prompt: left to right by depth (loaders first, SaveImage last)
    x = {n["type"]: n["pos"][0] for n in graph["nodes"]}
    assert x["CheckpointLoaderSimple"] < x["CLIPTextEncode"] < x["KSampler"] < x["VAEDecode"] < x["SaveImage"]


def test_our_document_keeps_ids_positions_and_seed_controls_through_the_ui_format(object_info) -> None:
    document = {"version": 1, "nodes": {
        "loader": {"type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}, "ui": {"pos": [5, 6]}},
        "latent": {"type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "text": {"type": "CLIPTextEncode", "inputs": {"text": "cat", "clip": ["loader", "CLIP"]},
                 "ui": {"pos": [300, 6], "title": "prompt"}},
        "sampler": {"type": "KSampler", "inputs": {
            "seed": 3, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["loader", "MODEL"], "positive": ["text", 0], "negative": ["text", 0],
            "latent_image": ["latent", 0]}, "ui": {"pos": [600, 6], "controls": {"seed": "randomize"}}},
        "save": {"type": "PreviewImage", "inputs": {"images": ["decode", 0]}, "ui": {"pos": [1200, 6]}},
        "decode": {"type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["loader", 2]}}}}
    graph = prompt_to_ui_graph(document, object_info)
    sampler = next(n for n in graph["nodes"] if n["properties"].get("latentflow_id") == "sampler")
    assert sampler["widgets_values"][:2] == [3, "randomize"] and sampler["pos"] == [600, 6]
    back, problems = ui_graph_to_document(graph, object_info)
    assert problems == []
    assert set(back["nodes"]) == set(document["nodes"])
    assert back["nodes"]["text"]["inputs"] == {"text": "cat", "clip": ["loader", 1]}
    assert back["nodes"]["text"]["ui"] == {"title": "prompt", "pos": [300, 6]}
    assert back["nodes"]["sampler"]["ui"]["controls"] == {"seed": "randomize"}
    assert back["nodes"]["sampler"]["inputs"]["latent_image"] == ["latent", 0]
