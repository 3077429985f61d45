"""The ``diffusion`` and ``lora`` halves of ``python main.py train`` (see sgm.tools.train)."""

from __future__ import annotations

import argparse


def configure_diffusion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", required=True, help="the VAE run's checkpoint-latest.pt (EMA weights are used)")
    parser.add_argument("--prediction", choices=("eps", "v"), default="eps")
    parser.add_argument("--weighting", choices=("min-snr", "edm", "uniform"), default="min-snr")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0)
    parser.add_argument("--noise-offset", type=float, default=0.1)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--model-channels", type=int, default=64)
    parser.add_argument("--channel-mult", default="1,2,2")
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--attention-resolutions", default="1,2,4", help="downsampling factors with attention")
    parser.add_argument("--num-head-channels", type=int, default=32)
    parser.add_argument("--context-dim", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--export", help="write the single-file model here when training ends")


def configure_lora(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model file whose UNet gets the adapters")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--caption-dropout", type=float, default=0.0)
    parser.add_argument("--export", required=True, help="the .safetensors LoRA file to write")
