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

CONTROLNET_NODES = ("ControlNetLoader", "DiffControlNetLoader", "ControlNetApply", "ControlNetApplyAdvanced")
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
