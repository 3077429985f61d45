"""``python main.py convert SRC DST [--dtype fp16|bf16|fp32] [--ema]``.

SRC/DST pairs:
  diffusers folder  -> file.safetensors   (unet/, vae/, text_encoder/, text_encoder_2/)
  file.safetensors  -> folder             (a diffusers folder; DST has no suffix)
  file.ckpt / .pt   -> file.safetensors   (loaded with torch.load(weights_only=True))
  file.safetensors  -> file.safetensors   (change dtype, take EMA weights, drop training state)
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.replace("``", "")  # the docstring's markup is not for a terminal
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("src", help="a diffusers folder or a .safetensors/.ckpt/.pt checkpoint")
    parser.add_argument("dst", help="a .safetensors file, or a folder (no suffix) for diffusers layout")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                        help="store floating-point weights in this precision (default: as in SRC)")
    parser.add_argument("--ema", action="store_true", help="take EMA weights (model_ema.*) where the file has them")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sgm.io.checkpoints import CheckpointError
    from sgm.io.convert import KeyMappingError
    from sgm.io.convert_files import DTYPES, convert

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        print(f"convert: {dst} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        report = convert(args.src, dst, dtype=DTYPES[args.dtype] if args.dtype else None, ema=args.ema)
    except (CheckpointError, KeyMappingError, FileNotFoundError, ValueError) as error:
        print(f"convert: {error}", file=sys.stderr)
        return 1
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    dropped = f", dropped {len(report.dropped)} training-only tensors" if report.dropped else ""
    print(f"wrote {report.destination} ({report.family}, {report.tensors_written} tensors{dropped})")
    return 0
