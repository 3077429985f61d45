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
