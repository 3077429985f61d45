"""Benchmark: what a sampler step through the engine costs over a bare UNet call (target <= 1.10x).

    python bench/step_overhead.py                  # the embedded model, 64x64 px, 20 steps, cfg 4
    python bench/step_overhead.py --steps 40 --size 128 --repeats 5

The engine side runs a workflow (LoadCheckpoint -> TextEncode x2 -> EmptyLatent -> SampleLatent -> Decode -> PreviewImage)
through the real scheduler, node cache and model cache, and times the SampleLatent node from its
``node_finished`` event (the load and the prompts are cached after the first run). The bare side
calls the very UNet module the engine loaded (same dtype, layout and packed weights) on the
same CFG batch of 2 in a loop, under ``torch.inference_mode``. Both are best-of-``--repeats``.
Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import main  # noqa: E402
from engine.cache import ResultCache  # noqa: E402
from engine.registry import NodeRegistry  # noqa: E402
from engine.scheduler import Executor  # noqa: E402
from engine.validation import validate_document  # noqa: E402
from nodes.builtin import build_nodes  # noqa: E402
from nodes.runtime import Runtime  # noqa: E402


def workflow(steps: int, size: int, seed: int) -> dict:
    return {"version": 1, "nodes": {
        "1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": "tiny-shapes.safetensors"}},
        "2": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": "a large red circle in the center"}},
        "3": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": ""}},
        "4": {"type": "EmptyLatent", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"type": "SampleLatent", "inputs": {"model": ["1", "model"], "positive": ["2", 0], "negative": ["3", 0],
                                                 "latent": ["4", 0], "seed": seed, "steps": steps, "cfg": 4.0,
                                                 "sampler_name": "euler", "scheduler": "sgm_uniform",
                                                 "denoise": 1.0}},
        "6": {"type": "Decode", "inputs": {"vae": ["1", "vae"], "latent": ["5", 0]}},
        "7": {"type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }}


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="image pixels (the latent is size/4 here)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    settings = main.build_settings()
    runtime = Runtime(settings)  # kept here: its model cache holds the UNet the engine runs
    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    executor = Executor(registry, ResultCache.for_registry(registry, settings),
                        services={"settings": settings, "output_dir": settings.output_dir})
    engine_seconds: list[float] = []
    for repeat in range(args.repeats + 1):  # the first run loads the model and encodes the prompts
        report = validate_document(workflow(args.steps, args.size, seed=repeat), registry)
        assert report.ok, report.format()
        timings: dict[str, float] = {}
        result = executor.run(report.workflow, on_event=lambda e: timings.__setitem__(e.node_id, e.seconds)
                              if e.type == "node_finished" else None)
        assert result.status == "success", result.failure
        if repeat:
            engine_seconds.append(timings["5"])

    unet = next(value.unet for value in runtime.models._entries.values() if getattr(value, "unet", None) is not None)
    parameter = next(unet.parameters())
    context_dim = next(m.in_features for name, m in unet.named_modules() if name.endswith("attn2.to_k"))
    latent = args.size // 4
    x = torch.randn(2, unet.in_channels, latent, latent, dtype=parameter.dtype)
    first_conv = unet.input_blocks[0][0].weight
    if first_conv.is_contiguous(memory_format=torch.channels_last) and not first_conv.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)  # as the engine's latents are for this layout
    context = torch.randn(2, 16, context_dim, dtype=parameter.dtype)
    timesteps = torch.tensor([500.0, 500.0])
    bare_seconds = []
    with torch.inference_mode():
        unet(x, timesteps, context)
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.steps):
                unet(x, timesteps, context)
            bare_seconds.append(time.perf_counter() - start)
    engine_step = min(engine_seconds) / args.steps
    bare_step = min(bare_seconds) / args.steps
    print(f"embedded model, {args.size}x{args.size} px, {args.steps} euler steps, cfg 4 (UNet batch 2), "
          f"{parameter.dtype}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'path':<44} {'ms / step':>10} {'ratio':>7}")
    print(f"{'bare UNet call (same module, same batch)':<44} {bare_step * 1e3:>10.2f} {1.0:>7.2f}")
    print(f"{'SampleLatent node through the engine':<44} {engine_step * 1e3:>10.2f} {engine_step / bare_step:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
