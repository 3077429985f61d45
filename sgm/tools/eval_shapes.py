"""``python main.py eval shapes``: generate held-out captions and score them with the analyser.

Prints a table: accuracy of colour, shape, size, position, background, all jointly;
the VAE's reconstruction PSNR on (unseen) shapes images; seconds per 20-step image.
"""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_CHECKPOINT = "models/checkpoints/tiny-shapes.safetensors"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=("shapes",), help="what to evaluate (only 'shapes' exists)")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--n", type=int, default=96, help="images to generate (held-out captions, cycled)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--sampler", default="euler", help="sampler name (as in KSampler)")
    parser.add_argument("--scheduler", default="sgm_uniform", help="noise schedule (as in KSampler)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--psnr-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--weight-dtype", default="default", choices=("default", "fp8_e4m3fn", "fp8_e5m2", "int8"),
                        help="store the UNet's weights as this (sgm.nets.quant; compute stays fp32)")
    parser.add_argument("--save-grid", help="write the generated images as one PNG grid here")
    parser.add_argument("--show-failures", type=int, default=0, help="list this many wrong images")


def run(args: argparse.Namespace) -> int:
    import torch

    from sgm.training.shapes_eval import evaluate_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)

    def on_batch(done: int, total: int) -> None:
        sys.stderr.write(f"\rgenerating {done}/{total}")
        sys.stderr.flush()

    result = evaluate_checkpoint(args.checkpoint, count=args.n, steps=args.steps, cfg=args.cfg,
                                 batch_size=args.batch_size, seed=args.seed, psnr_images=args.psnr_images,
                                 on_batch=on_batch, grid_path=args.save_grid, scheduler=args.scheduler,
                                 sampler=args.sampler, weight_dtype=args.weight_dtype)
    sys.stderr.write("\n")
    print(format_table(result))
    for caption, analysis in result.report.failures[: args.show_failures]:
        print(f"  asked: {caption}\n   read: {analysis}")
    return 0


def format_table(result) -> str:
    rows = [("colour", result.report.accuracy["colour"]), ("shape", result.report.accuracy["shape"]),
            ("size", result.report.accuracy["size"]), ("position", result.report.accuracy["position"]),
            ("background", result.report.accuracy["background"]), ("all jointly", result.report.accuracy["joint"])]
    lines = [f"held-out captions: {result.report.count} images, {result.sampler}, {result.steps} steps "
             f"{result.scheduler}, cfg {result.cfg}",
             f"{'metric':<24}{'value':>10}", "-" * 34]
    lines += [f"{name + ' accuracy':<24}{value * 100:>9.1f}%" for name, value in rows]
    lines.append(f"{'VAE PSNR':<24}{result.psnr:>8.2f}dB")
    if result.reconstruction is not None:
        ceiling = result.reconstruction.accuracy
        lines.append(f"{'VAE ceiling (shape, size, joint)':<34}{ceiling['shape'] * 100:.1f}% "
                     f"{ceiling['size'] * 100:.1f}% {ceiling['joint'] * 100:.1f}%")
    lines.append(f"{'s / 20-step image':<24}{result.seconds_per_image:>9.3f}s")
    return "\n".join(lines)
