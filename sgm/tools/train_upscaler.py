"""``python -m sgm.tools.train_upscaler --out models/upscale_models/tiny-shapes-2x.safetensors --minutes 10``.

Trains the 2x shapes upscaler (:mod:`sgm.training.upscaler`) for a wall-time budget, prints the
held-out PSNR of the model and of bicubic upscaling, and writes the model as safetensors.

The shipped ``models/upscale_models/tiny-shapes-2x.safetensors`` (139 KB) came from
``--minutes 11 --pool 2048 --held-out 96 --threads 1`` on one shared CPU core: 5585 steps,
held-out PSNR 46.83 dB against 36.76 dB for bicubic (+10.1 dB; every one of the 96 images better,
by 4.4 dB at least).
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the .safetensors upscale model to write")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget of the training")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (default: time only)")
    parser.add_argument("--features", type=int, default=24)
    parser.add_argument("--convs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--loss", choices=("mse", "l1"), default="mse")
    parser.add_argument("--candidates", type=int, default=2, help="random crops per kept crop (the busiest kept)")
    parser.add_argument("--pool", type=int, default=1024, help="rendered training images")
    parser.add_argument("--held-out", type=int, default=64, help="held-out images for the PSNR report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    import torch

    from sgm.training.upscaler import UpscalerConfig, save_upscaler, train_upscaler

    if args.threads:
        torch.set_num_threads(args.threads)
    config = UpscalerConfig(features=args.features, convs=args.convs, batch_size=args.batch_size, lr=args.lr,
                            pool=args.pool, candidates=args.candidates, loss=args.loss, seed=args.seed)

    def progress(step: int, loss: float, seconds: float) -> None:
        sys.stderr.write(f"\rstep {step} loss {loss:.4f} {seconds:.0f}s ")
        sys.stderr.flush()

    model, report = train_upscaler(config, seconds=args.minutes * 60, max_steps=args.steps,
                                   held_out=args.held_out, on_progress=progress)
    path = save_upscaler(model, args.out, report, config)
    sys.stderr.write("\n")
    print(f"trained {report.steps} steps in {report.seconds:.0f}s; held-out PSNR on {report.held_out} images: "
          f"model {report.psnr_model:.2f} dB, bicubic {report.psnr_bicubic:.2f} dB "
          f"({report.psnr_model - report.psnr_bicubic:+.2f} dB); written to {path} ({path.stat().st_size} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgm.tools.train_upscaler",
                                     description="Train the 2x shapes upscaler (Real-ESRGAN compact).")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
