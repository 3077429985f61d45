"""``python main.py sample``: prompt -> images through the engine (the txt2img graph).

    python main.py sample --prompt "a large yellow star in the center on a purple background"
    python main.py sample --prompt "a red fox" --checkpoint sd15.safetensors --size 512 --n 4

The command builds the same graph as ``workflows/txt2img.json`` in memory (LoadCheckpoint
-> TextEncode x2 -> EmptyLatent -> SampleLatent -> Decode -> SaveImage), validates it and
runs it with the engine's executor, so what it makes can be re-run from the saved PNG.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any


EMBEDDED_SIZE = (64, 64)  # what the shipped tiny-shapes model was trained on
DEFAULT_CHECKPOINT = "tiny-shapes.safetensors"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="what to draw")
    parser.add_argument("--negative", default="", help="what to steer away from (default: empty prompt)")
    parser.add_argument("--n", type=int, default=1, help="how many images (one batch; image i uses seed + i)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    # The names are checked when the workflow is validated (listing them here would import
    # torch for every `main.py --help`).
    parser.add_argument("--sampler", default="euler", metavar="NAME",
                        help="sampler (default euler; any of KSampler's, e.g. dpmpp_2m, uni_pc)")
    parser.add_argument("--scheduler", default="sgm_uniform", metavar="NAME",
                        help="noise schedule (default sgm_uniform; any of KSampler's, e.g. karras, normal)")
    parser.add_argument("--cfg", type=float, default=4.0,
                        help="guidance scale (default 4, what the embedded model is evaluated with)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: random, printed)")
    parser.add_argument("--size", default=None,
                        help="image size: N or WxH in pixels, multiples of 8 (default 64 for the embedded "
                             "model, 512 otherwise; SDXL likes 1024)")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"a file in models/checkpoints/ (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--out", default="output", help="folder for the PNGs (default output/)")
    parser.add_argument("--prefix", default="sample", help="file name prefix (default sample)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"768x512"`` -> (768, 512) (width, height)."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--size {text!r}: write N or WxH in pixels, e.g. 512 or 768x512") from None
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2 or any(n < 16 or n % 8 for n in numbers):
        raise ValueError(f"--size {text!r}: width and height must be multiples of 8, at least 16")
    return numbers[0], numbers[1]


def txt2img_document(*, checkpoint: str, prompt: str, negative: str, width: int, height: int, batch: int,
                     seed: int, steps: int, cfg: float, sampler: str, scheduler: str,
                     prefix: str) -> dict[str, Any]:
    """The txt2img workflow (our JSON format) with these settings."""
    return {
        "version": 1,
        "meta": {"title": "python main.py sample"},
        "nodes": {
            "1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": checkpoint}},
            "2": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": prompt}},
            "3": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": negative}},
            "4": {"type": "EmptyLatent", "inputs": {"width": width, "height": height, "batch_size": batch}},
            "5": {"type": "SampleLatent", "inputs": {
                "model": ["1", "model"], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0],
                "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
                "denoise": 1.0}},
            "6": {"type": "Decode", "inputs": {"vae": ["1", "vae"], "latent": ["5", 0]}},
            "7": {"type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
        },
    }


def run(args: argparse.Namespace) -> int:
    from engine.cache import ResultCache
    from engine.cli import ProgressRenderer, format_summary
    from engine.scheduler import Executor
    from engine.validation import validate_document

    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.n < 1:
        print(f"error: --n must be at least 1, got {args.n}", file=sys.stderr)
        return 2
    output_dir = Path(args.out)
    settings = args.build_settings(output_dir=output_dir)
    registry = args.build_registry(custom_nodes=None, settings=settings)
    for failure in registry.failures:
        print(f"warning: node pack {failure.source} failed to load: {failure.message}", file=sys.stderr)
    checkpoint = checkpoint_name(args.checkpoint, Path(settings.model_folder("checkpoints")))
    if size is None:
        size = (64, 64) if checkpoint == DEFAULT_CHECKPOINT else (512, 512)
    elif checkpoint == DEFAULT_CHECKPOINT and size != EMBEDDED_SIZE:
        print(f"warning: the embedded model was trained on {EMBEDDED_SIZE[0]}x{EMBEDDED_SIZE[1]} images only; at "
              f"{size[0]}x{size[1]} it repeats and blurs its shapes. For a larger picture generate at 64 and "
              "upscale: python main.py run workflows/hires_fix.json", file=sys.stderr)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    document = txt2img_document(checkpoint=checkpoint, prompt=args.prompt, negative=args.negative,
                                width=size[0], height=size[1], batch=args.n, seed=seed, steps=args.steps,
                                cfg=args.cfg, sampler=args.sampler, scheduler=args.scheduler, prefix=args.prefix)
    report = validate_document(document, registry)
    if not report.ok:
        print(report.format(), file=sys.stderr)
        return 1
    executor = Executor(registry, ResultCache.for_registry(registry, settings),
                        services={"settings": settings, "output_dir": output_dir})
    renderer = ProgressRenderer(sys.stderr, enabled=not args.quiet, label=f"seed {seed}")
    result = executor.run(report.workflow, on_event=renderer, services={"workflow_document": document})
    renderer.close()
    if not args.quiet:
        print(format_summary(result, report.workflow), file=sys.stderr)
    if result.status == "cancelled":
        return 130
    if result.status == "failed" and result.failure is not None:
        print(f"error: node {result.failure.node_id} ({result.failure.node_type}) failed: "
              f"{result.failure.message}", file=sys.stderr)
        return 3
    if not args.quiet:
        print(f"seed {seed}", file=sys.stderr)
    for ui in result.outputs.values():
        for image in ui.get("images", []):
            print(image.get("path") or image.get("filename"))
    return 0


def checkpoint_name(value: str, folder: Path) -> str:
    """A ``--checkpoint`` given as a name in models/checkpoints/ or as a path to a file there."""
    path = Path(value)
    if path.is_file():
        try:
            return path.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            pass  # outside the folder: validation names the available files
    return value
