"""The fake txt2img pack plus ``Hold``: a node that waits, for worker tests (no torch).

``make_registry`` has the signature of ``main.build_registry`` that :class:`WorkerSetup`
calls, and is importable by name, so spawned workers and Ray actors can build it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine.api import Context, Float, Out, Text, node
from engine.registry import NodeRegistry
from engine.settings import Settings
from tests.web.fake_pack import make_fake_registry, txt2img_document


@node("Hold", category="utility")
def hold(image: "IMAGE", seconds: Float(min=0.0, max=60.0) = 0.5, gate: Text() = "",
         ctx: Context = None) -> Out(image="IMAGE"):
    """Wait ``seconds``; with ``gate``, wait until that file exists instead (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not (Path(gate).exists() if gate else time.monotonic() >= deadline):
        if gate and time.monotonic() >= deadline:
            raise TimeoutError(f"Hold: {gate} did not appear within {seconds}s")
        ctx.check_cancelled()
        time.sleep(0.01)
    return image


def make_registry(custom_nodes: Path | None = None, settings: Settings | None = None) -> NodeRegistry:
    registry = make_fake_registry(None, settings.input_dir if settings is not None else None)
    registry.register_pack([hold], "tests.cluster.pack")
    return registry


def held_document(seed: int, seconds: float = 0.5, gate: str = "", ckpt: str = "tiny-shapes.safetensors",
                  prefix: str = "test") -> dict[str, Any]:
    """txt2img with ``Hold`` between decode and save; ``ckpt`` picks the (fake) checkpoint."""
    document = txt2img_document(seed=seed, steps=2)
    nodes = document["nodes"]
    nodes["1"]["inputs"]["ckpt_name"] = ckpt
    nodes["8"] = {"type": "Hold", "inputs": {"image": ["6", "image"], "seconds": seconds, "gate": gate}}
    nodes["7"]["inputs"]["images"] = ["8", "image"]
    nodes["7"]["inputs"]["filename_prefix"] = prefix
    return document


# A ComfyUI pack (comfy_packs) that writes where ComfyUI packs write: PreviewImage's temp/
# folder, and files of its own under folder_paths.get_temp_directory() / get_output_directory().
PREVIEW_PACK = '''
import os

import folder_paths
import nodes


class PackSolid:
    """A (1, 8, 8, 3) IMAGE of one colour: (shade, 128, 255 - shade) / 255."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"shade": ("INT", {"default": 0, "min": 0, "max": 255})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "test"

    def make(self, shade):
        import torch

        colour = torch.tensor([shade, 128, 255 - shade], dtype=torch.float32) / 255
        return (colour.expand(1, 8, 8, 3).clone(),)


class PackPreview(nodes.PreviewImage):
    """ComfyUI's PreviewImage, subclassed as packs do."""


class TempNote:
    """Writes a note where a pack finds ComfyUI's temp folder (as set in __init__, and read again)
    and one in the output folder; shows the temp one."""

    def __init__(self):
        self.temp = folder_paths.get_temp_directory()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "note"})}}

    RETURN_TYPES = ()
    FUNCTION = "write"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def write(self, text):
        assert self.temp == folder_paths.temp_directory == folder_paths.get_directory_by_type("temp")
        os.makedirs(os.path.join(self.temp, "notes"), exist_ok=True)
        with open(os.path.join(self.temp, "notes", "note.txt"), "w") as stream:
            stream.write(text)
        with open(os.path.join(folder_paths.get_output_directory(), "kept.txt"), "w") as stream:
            stream.write(text.upper())
        return {"ui": {"notes": [{"filename": "note.txt", "subfolder": "notes", "type": "temp"}]}}


NODE_CLASS_MAPPINGS = {"PackSolid": PackSolid, "PackPreview": PackPreview, "TempNote": TempNote}
'''


def write_preview_pack(custom_nodes: Path) -> Path:
    """``custom_nodes``/preview_pack/__init__.py: :data:`PREVIEW_PACK`."""
    folder = custom_nodes / "preview_pack"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(PREVIEW_PACK)
    return custom_nodes


def make_pack_registry(custom_nodes: Path | None = None, settings: Settings | None = None) -> NodeRegistry:
    """:func:`make_registry` plus the ComfyUI packs in ``custom_nodes``, loaded as
    ``main.build_registry`` loads them (comfy_packs)."""
    from comfy_packs import ComfyPacks

    registry = make_registry(custom_nodes, settings)
    if custom_nodes is not None:
        registry.foreign_packs = ComfyPacks(settings)
        registry.load_custom_nodes(custom_nodes)
    return registry


def preview_document(shade: int, text: str = "note") -> dict[str, Any]:
    """PackSolid -> PackPreview, and TempNote."""
    return {"version": 1, "nodes": {
        "1": {"type": "PackSolid", "inputs": {"shade": shade}},
        "2": {"type": "PackPreview", "inputs": {"images": ["1", 0]}},
        "3": {"type": "TempNote", "inputs": {"text": text}},
    }}
