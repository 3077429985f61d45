"""ComfyUI's ControlNet nodes have ComfyUI 0.3.64's interface, field by field, and apply a control
the way ComfyUI's do (shared links for positive and negative, strength 0 a no-op)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.settings import Settings
from nodes.builtin import build_nodes
from nodes.runtime import Runtime
from sgm.text.conditioning import Condition
from tests.nodes.test_comfy_interface import REFERENCE, check_interface

CONTROLNET_NODES = ("ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced",
                    "SetUnionControlNetType")
pytestmark = pytest.mark.skipif(REFERENCE is None, reason="the interface spec is missing")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    from engine.registry import NodeRegistry

    registry = NodeRegistry()
    runtime = Runtime(Settings.for_root(tmp_path_factory.mktemp("root")), device="cpu")
    specs = build_nodes(runtime)
    registry.register_pack(specs, "nodes.builtin")
    return registry.object_info(), {spec.id: spec.function for spec in specs}


@pytest.mark.parametrize("name", CONTROLNET_NODES)
def test_interface_matches_comfyui(registry: tuple[dict[str, Any], dict[str, Any]], name: str) -> None:
    object_info, _ = registry
    check_interface(name, REFERENCE[name], object_info[name])


def test_apply_shares_one_link_and_stacks(registry: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, nodes = registry
    model = torch.nn.Conv2d(1, 1, 1)  # any module: applying does not run it
    image = torch.rand(1, 32, 48, 3)  # IMAGE (B, H, W, C)
    positive = [Condition(torch.zeros(1, 2, 4))]
    negative = [Condition(torch.ones(1, 2, 4))]
    pos, neg = nodes["ControlNetApplyAdvanced"](positive=positive, negative=negative, control_net=model, image=image,
                                               strength=0.7, start_percent=0.2, end_percent=0.9)
    link = pos[0].control
    assert neg[0].control is link and positive[0].control is None  # inputs untouched
    assert (link.strength, link.start, link.end) == (0.7, 0.2, 0.9) and link.hint.shape == (1, 3, 32, 48)
    assert torch.equal(link.hint, image.movedim(-1, 1))
    pos2, _ = nodes["ControlNetApplyAdvanced"](positive=pos, negative=neg, control_net=model, image=image,
                                              strength=1.0, start_percent=0.0, end_percent=1.0)
    assert pos2[0].control.previous is link and pos2[0].control.chain() == [link, pos2[0].control]
    same, _ = nodes["ControlNetApplyAdvanced"](positive=positive, negative=negative, control_net=model, image=image,
                                              strength=0.0, start_percent=0.0, end_percent=1.0)
    assert same[0] is positive[0]
    (old,) = nodes["ControlNetApply"](conditioning=positive, control_net=model, image=image, strength=0.5)
    assert old.control.strength == 0.5 and (old.control.start, old.control.end) == (0.0, 1.0)


def test_loader_lists_both_folders(tmp_path: Path) -> None:
    (tmp_path / "models" / "controlnet").mkdir(parents=True)
    (tmp_path / "models" / "t2i_adapter").mkdir(parents=True)
    (tmp_path / "models" / "controlnet" / "a.safetensors").write_bytes(b"")
    (tmp_path / "models" / "t2i_adapter" / "b.pth").write_bytes(b"")
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    assert runtime.model_files("controlnet") == ["a.safetensors", "b.pth"]


def tiny_union(seed: int = 0) -> Any:
    from sgm.nets.controlnet_union import UnionControlNet
    from tests.sgm.model_factories import tiny_unet_config

    config = tiny_unet_config("sdxl")
    config.pop("out_channels")
    torch.manual_seed(seed)
    return UnionControlNet(num_control_types=8, token_channels=32, **config).eval()


def test_set_union_type_binds_a_type_and_shares_the_model(registry: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from nodes.comfy.controlnet import UNION_TYPE_CHOICES
    from sgm.nets.controlnet_union import UNION_TYPES, TypedUnionControlNet

    object_info, nodes = registry
    assert UNION_TYPE_CHOICES == ("auto", *UNION_TYPES)  # the node's list is the model's table, in index order
    assert tuple(object_info["SetUnionControlNetType"]["input"]["required"]["type"][0]) == UNION_TYPE_CHOICES
    union = tiny_union()
    before = {k: v.clone() for k, v in union.state_dict().items()}
    depth = nodes["SetUnionControlNetType"](control_net=union, type="depth")
    assert isinstance(depth, TypedUnionControlNet) and depth.net is union and depth.control_type == (1,)
    canny = nodes["SetUnionControlNetType"](control_net=depth, type="canny/lineart/anime_lineart/mlsd")
    assert canny.net is union and canny.control_type == (3,) and depth.control_type == (1,)  # input untouched
    auto = nodes["SetUnionControlNetType"](control_net=union, type="auto")
    assert auto.control_type == ()
    assert all(torch.equal(union.state_dict()[k], v) for k, v in before.items())

    # The typed model goes through ControlNetApplyAdvanced like any control model.
    positive, negative = [Condition(torch.zeros(1, 2, 4))], [Condition(torch.ones(1, 2, 4))]
    pos, neg = nodes["ControlNetApplyAdvanced"](positive=positive, negative=negative, control_net=depth,
                                               image=torch.rand(1, 32, 32, 3), strength=0.5, start_percent=0.0,
                                               end_percent=1.0)
    assert pos[0].control.model is depth and neg[0].control is pos[0].control

    # Another control model: "auto" leaves it as it is, a type is refused with what to do instead.
    plain = torch.nn.Conv2d(1, 1, 1)
    assert nodes["SetUnionControlNetType"](control_net=plain, type="auto") is plain
    with pytest.raises(ValueError, match="needs a union ControlNet.*Conv2d"):
        nodes["SetUnionControlNetType"](control_net=plain, type="openpose")


def test_loader_recognises_union_and_control_lora_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from sgm.io.control_lora import ControlLoRA
    from sgm.nets.controlnet_union import UnionControlNet

    folder = tmp_path / "models" / "controlnet"
    folder.mkdir(parents=True)
    union = tiny_union(seed=1)
    save_file({k: v.contiguous() for k, v in union.state_dict().items()}, folder / "union.safetensors")
    lora = {"lora_controlnet": torch.tensor([]), "input_hint_block.0.weight": torch.rand(16, 3, 3, 3),
            "input_blocks.1.0.in_layers.2.up": torch.rand(32, 2, 1, 1),
            "input_blocks.1.0.in_layers.2.down": torch.rand(2, 32, 3, 3)}
    save_file(lora, folder / "control-lora-canny-rank2.safetensors")
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    nodes = {spec.id: spec.function for spec in build_nodes(runtime)}
    loaded = nodes["ControlNetLoader"](control_net_name="union.safetensors")
    assert isinstance(loaded, UnionControlNet) and loaded.num_control_types == 8
    weights = loaded.state_dict()  # in the runtime's weight dtype
    assert all(torch.equal(weights[k], v.to(weights[k].dtype)) for k, v in union.state_dict().items())
    control_lora = nodes["ControlNetLoader"](control_net_name="control-lora-canny-rank2.safetensors")
    assert isinstance(control_lora, ControlLoRA) and control_lora.low_rank_layers == ("input_blocks.1.0.in_layers.2",)
