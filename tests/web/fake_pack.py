"""A pure-Python stand-in for the txt2img nodes: same ids, sockets and widgets, no torch.

The server and editor tests run against it so they need no model; ``SaveImage`` writes a
real PNG (stdlib zlib/struct) into ``settings.output_dir`` with the workflow embedded in
a ``workflow`` tEXt chunk, and reports it exactly as the real SaveImage does.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

from engine.api import Choice, Context, Float, Int, NodeContext, Out, Result, Text, node
from engine.registry import NodeRegistry

CHECKPOINTS = ("tiny-shapes.safetensors", "other.safetensors")
SAMPLERS = ("euler", "dpmpp_2m")


def png_bytes(width: int, height: int, rgb: tuple[int, int, int], text: dict[str, str] | None = None) -> bytes:
    """A solid-colour RGB PNG with optional tEXt chunks."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for key, value in (text or {}).items():
        out += chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace"))
    return out + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


def make_fake_registry(sampler_gate: threading.Event | None = None, input_dir: Path | None = None) -> NodeRegistry:
    """The stand-in nodes; when ``sampler_gate`` is given, KSampler waits for it (tests of
    interrupt and of the running-node highlight). LoadImage offers the files in ``input_dir``."""

    def input_images() -> list[str]:
        if input_dir is None or not input_dir.is_dir():
            return []
        return sorted(str(p.relative_to(input_dir)) for p in input_dir.rglob("*.png"))

    @node("LoadCheckpoint", category="loaders")
    def load_checkpoint(ckpt_name: Choice(choices=CHECKPOINTS) = CHECKPOINTS[0]) -> Out(
            model="MODEL", clip="CLIP", vae="VAE"):
        """Load a checkpoint (stand-in)."""
        return {"model": ckpt_name}, {"clip": ckpt_name}, {"vae": ckpt_name}

    @node("TextEncode", category="conditioning")
    def text_encode(clip: "CLIP", text: Text(multiline=True) = "") -> Out(conditioning="CONDITIONING"):
        """Encode a prompt (stand-in)."""
        return {"text": text}

    @node("EmptyLatent", category="latent")
    def empty_latent(width: Int(min=64, max=4096, step=8) = 512, height: Int(min=64, max=4096, step=8) = 512,
                     batch_size: Int(min=1, max=64) = 1) -> Out(latent="LATENT"):
        """An empty latent (stand-in)."""
        return {"width": width, "height": height, "batch_size": batch_size}

    @node("KSampler", category="sampling")
    def ksampler(model: "MODEL", positive: "CONDITIONING", negative: "CONDITIONING", latent: "LATENT",
                 seed: Int(min=0, max=2**32 - 1, control_after_generate=True) = 0,
                 steps: Int(min=1, max=200) = 4, cfg: Float(min=0.0, max=30.0, step=0.5) = 7.0,
                 sampler_name: Choice(choices=SAMPLERS) = "euler",
                 ctx: Context = None) -> Out(latent="LATENT"):
        """Denoise a latent (stand-in: reports progress with preview frames)."""
        for step in range(steps):
            if sampler_gate is not None:
                while not sampler_gate.wait(0.02):
                    ctx.check_cancelled()
            ctx.progress(step + 1, steps, preview=png_bytes(8, 8, (step * 20 % 256, 0, 0)))
        return {**latent, "seed": seed, "text": positive["text"]}

    @node("Decode", category="latent")
    def decode(vae: "VAE", latent: "LATENT") -> Out(image="IMAGE"):
        """Decode a latent to an image (stand-in)."""
        return {"size": (latent["width"] // 8, latent["height"] // 8), "seed": latent["seed"]}

    @node("SaveImage", category="image", output=True)
    def save_image(images: "IMAGE", filename_prefix: Text() = "latentflow", ctx: Context = None) -> None:
        """Save a PNG with the workflow embedded (stand-in)."""
        return Result(ui={"images": [write_image(ctx, images, filename_prefix)]})

    @node("LoadImage", category="image")
    def load_image(image: Choice(choices=input_images)) -> Out(image="IMAGE"):
        """Load an image from input/ (stand-in: only its name matters)."""
        if image not in input_images():
            raise FileNotFoundError(f"LoadImage: {image!r} is not in the input folder")
        return {"size": (8, 8), "seed": len(image)}

    @node("ShowText", category="utility", output=True)
    def show_text(text: "STRING") -> None:
        """Show text in the UI."""
        return Result(ui={"text": [text]})

    @node("Fail", category="utility")
    def fail(image: "IMAGE", message: Text() = "boom") -> Out(image="IMAGE"):
        """Always fails (error display tests)."""
        raise RuntimeError(message)

    registry = NodeRegistry()
    registry.register_pack([load_checkpoint, text_encode, empty_latent, ksampler, decode, save_image,
                            load_image, show_text, fail], "tests.web.fake_pack")
    return registry


def write_image(ctx: NodeContext, image: dict[str, Any], prefix: str) -> dict[str, str]:
    settings = ctx.services["settings"]
    folder = Path(settings.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = image["size"]
    seed = int(image["seed"])
    text = {"workflow": json.dumps(ctx.services.get("workflow_document", {}))}
    data = png_bytes(width, height, (seed % 256, 128, 255 - seed % 256), text)
    index = len(list(folder.glob(f"{prefix}_*.png"))) + 1
    while True:  # claim the name exclusively, as the real SaveImage does: workers may save at once
        name = f"{prefix}_{index:05d}.png"
        try:
            with open(folder / name, "xb") as stream:
                stream.write(data)
            break
        except FileExistsError:
            index += 1
    # Like the real SaveImage, the UI entry carries the absolute path; the server must not leak it.
    return {"filename": name, "subfolder": "", "type": "output", "path": str(folder / name)}


def txt2img_document(seed: int = 1, steps: int = 3, text: str = "a red square") -> dict[str, Any]:
    """The txt2img graph in our format, wired like workflows/txt2img.json."""
    return {"version": 1, "nodes": {
        "1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": CHECKPOINTS[0]}, "ui": {"pos": [40, 40]}},
        "2": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": text}, "ui": {"pos": [360, 20]}},
        "3": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": ""}, "ui": {"pos": [360, 260]}},
        "4": {"type": "EmptyLatent", "inputs": {"width": 64, "height": 64, "batch_size": 1},
              "ui": {"pos": [40, 300]}},
        "5": {"type": "KSampler", "inputs": {"model": ["1", "model"], "positive": ["2", "conditioning"],
                                             "negative": ["3", "conditioning"], "latent": ["4", "latent"],
                                             "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler"},
              "ui": {"pos": [680, 60]}},
        "6": {"type": "Decode", "inputs": {"vae": ["1", "vae"], "latent": ["5", "latent"]}, "ui": {"pos": [1000, 60]}},
        "7": {"type": "SaveImage", "inputs": {"images": ["6", "image"], "filename_prefix": "test"},
              "ui": {"pos": [1000, 260]}},
    }}
