"""Command-line pieces the ``train`` commands share: common options, settings, progress, inputs.

``sgm.tools.train`` (the dispatcher and ``vae``), ``train_diffusion`` and ``train_lora`` import
this module; none of them imports another's CLI helpers.
"""

from __future__ import annotations

import argparse
import sys
import time


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def add_common_options(parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--data", default="shapes",
                        help="'shapes', 'shapes-mirrored' (every image flipped left-right, captions unchanged: the "
                             "shipped LoRA's data) or a folder of images with .txt captions")
    parser.add_argument("--out", required=True, help="run folder (log, samples, resumable checkpoint)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--grad-accumulation", type=int, default=1)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--decay", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--ema-decay", type=float, default=0.999, help="0 disables EMA")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--flip", type=float, default=0.0, help="horizontal flip probability (image folders)")
    parser.add_argument("--random-crop", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out has a checkpoint")


def settings_from(args: argparse.Namespace):
    from sgm.training.common import Precision, TrainSettings

    return TrainSettings(
        steps=args.steps, batch_size=args.batch_size, grad_accumulation=args.grad_accumulation, lr=args.lr,
        warmup_steps=args.warmup_steps, decay=args.decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        precision=Precision(args.precision), seed=args.seed, checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every, log_every=args.log_every, workers=args.workers,
    )


class ProgressBar:
    """Renders TrainProgress reports as one updating line on stderr."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.started = time.perf_counter()

    def __call__(self, progress) -> None:
        done = progress.step / max(1, progress.total_steps)
        filled = int(done * self.width)
        elapsed = time.perf_counter() - self.started
        extra = " ".join(f"{k}={v:.4g}" for k, v in list(progress.metrics.items())[:3])
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {progress.step}/{progress.total_steps}"
            f" loss={progress.loss:.4f} lr={progress.lr:.2e} {progress.images_per_second:.1f} img/s"
            f" {extra} {elapsed:.0f}s "
        )
        if progress.step == progress.total_steps:
            sys.stderr.write("\n")
        sys.stderr.flush()


def load_vae_from_run(path: str):
    """An AutoencoderKL from a VAE training checkpoint (EMA weights if any) or from a model file's VAE."""
    import torch

    if str(path).endswith(".safetensors"):
        from sgm.io.checkpoints import load_vae

        return load_vae(path, dtype=torch.float32).eval()
    from sgm.nets.autoencoder import AutoencoderKL
    from sgm.io.checkpoints import infer_vae_config
    from sgm.training.loop import load_training_checkpoint

    state = load_training_checkpoint(path)
    weights = dict(state["modules"]["vae"])
    if state.get("ema") is not None:
        for name, value in state["ema"]["shadow"].items():
            weights[name.removeprefix("vae.")] = value
    config = infer_vae_config(weights)
    config["resolution"] = 64  # only relative attention resolutions matter
    vae = AutoencoderKL(**config)
    vae.load_state_dict(weights)
    return vae.to(torch.float32).eval()


def latent_cache(args: argparse.Namespace, dataset, vae, path):
    """Load the run's latent cache, or encode ``--latent-cache`` items and save it for resumes."""
    import torch

    from sgm.data.datasets import LatentCacheDataset

    if path.exists():
        return LatentCacheDataset.from_state_dict(torch.load(path, weights_only=True), seed=args.seed)

    def on_batch(done: int, total: int) -> None:
        sys.stderr.write(f"\rencoding latents {done}/{total}")
        sys.stderr.flush()

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        cache = LatentCacheDataset.build(dataset, vae.encode_posterior, args.latent_cache, seed=args.seed,
                                         on_batch=on_batch)
    sys.stderr.write("\n")
    torch.save(cache.state_dict(), path)
    return cache
