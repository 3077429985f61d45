"""``python main.py train vae|diffusion|lora``: train on ``shapes`` or a captioned image folder.

Each run writes to ``--out``: ``log.jsonl``, ``samples/step-*.png``, ``checkpoint-latest.pt``
(rerunning the same command resumes from it). ``diffusion`` exports a single-file model
(``--export``) that ``load_checkpoint`` reads; ``lora`` writes a kohya-layout LoRA file.
"""

from __future__ import annotations

import argparse
import sys
import time


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _common(parser: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--data", default="shapes", help="'shapes' or a folder of images with .txt captions")
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


def configure(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    vae = tasks.add_parser("vae", help="train an AutoencoderKL")
    _common(vae, steps=3000, batch_size=32, lr=2e-4)
    vae.add_argument("--ch", type=int, default=32)
    vae.add_argument("--ch-mult", type=_ints, default=(1, 2, 2))
    vae.add_argument("--num-res-blocks", type=int, default=1)
    vae.add_argument("--z-channels", type=int, default=4)
    vae.add_argument("--kl-weight", type=float, default=1e-6)
    vae.add_argument("--mse-weight", type=float, default=1.0)
    vae.add_argument("--adversarial-weight", type=float, default=0.0, help="> 0 adds a patch discriminator")
    vae.add_argument("--adversarial-start", type=int, default=1000)
    vae.add_argument("--edge-weight", type=float, default=0.0,
                     help="weight pixels near edges (1 + this) in the reconstruction loss: sharper small objects")
    vae.add_argument("--init", help="start from this VAE run's checkpoint (EMA weights) or a model file's VAE "
                                    "(.safetensors), e.g. to fine-tune")
    vae.add_argument("--decoder-only", action="store_true",
                     help="freeze the encoder (keeps the latent space of a UNet already trained on it)")
    vae.add_argument("--sampled-latents", metavar="MODEL",
                     help="with --decoder-only: decode part of each batch from latents this text-to-image model "
                          "file re-samples (img2img from a random noise level, see sgm.training.sampled_latents), "
                          "so the decoder learns to render what the UNet generates; its VAE encoder must be --init's")
    vae.add_argument("--sampled-fraction", type=float, default=0.5, help="share of each batch (--sampled-latents)")
    vae.add_argument("--sampled-sigma", type=_floats, default=(0.3, 4.0), metavar="MIN,MAX",
                     help="noise levels the re-sampling starts from (--sampled-latents)")
    vae.add_argument("--sampled-cfg", type=float, default=4.0, help="guidance scale of the re-sampling")
    vae.add_argument("--sampled-scheduler", default="sgm_uniform", metavar="NAME",
                     help="the 20-step schedule the re-sampling follows (default sgm_uniform, as 'sample' uses)")
    vae.add_argument("--crop-size", type=int, default=None,
                     help="train on random crops of this size (shapes): a convolutional VAE learns edges "
                          "and colours as well from parts, at a fraction of the compute")

    diffusion = tasks.add_parser("diffusion", help="train a text-to-image UNet (+ tiny text encoder) on VAE latents")
    _common(diffusion, steps=10000, batch_size=32, lr=3e-4)
    from sgm.tools.train_diffusion import configure_diffusion

    configure_diffusion(diffusion)

    lora = tasks.add_parser("lora", help="train LoRA adapters on a checkpoint's UNet attention")
    _common(lora, steps=500, batch_size=8, lr=1e-4)
    from sgm.tools.train_diffusion import configure_lora

    configure_lora(lora)


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


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "vae":
        return _run_vae(args)
    from sgm.tools.train_diffusion import run_diffusion, run_lora

    return run_diffusion(args) if args.task == "diffusion" else run_lora(args)


def _run_vae(args: argparse.Namespace) -> int:
    import torch

    from sgm.data import build_dataset
    from sgm.training.loop import train
    from sgm.training.vae import VAEConfig, VAELossConfig, VAETask

    dataset = build_dataset(args.data, args.image_size, seed=args.seed, flip_probability=args.flip,
                            random_crop=args.random_crop, crop_size=args.crop_size)
    config = VAEConfig(ch=args.ch, ch_mult=tuple(args.ch_mult), num_res_blocks=args.num_res_blocks,
                       z_channels=args.z_channels, embed_dim=args.z_channels, resolution=args.image_size)
    preview_set = build_dataset(args.data, args.image_size, seed=args.seed + 12345)
    preview = torch.stack([preview_set[i]["image"] for i in range(8)])
    model = config.build()
    if args.init:
        from sgm.tools.train_diffusion import load_vae_from_run

        model.load_state_dict(load_vae_from_run(args.init).state_dict())
    sampled_latents = None
    if args.sampled_latents:
        sampled_latents = _sampled_latents(args, model)
    task = VAETask(model, VAELossConfig(mse_weight=args.mse_weight, kl_weight=args.kl_weight,
                                                 adversarial_weight=args.adversarial_weight,
                                                 adversarial_start=args.adversarial_start,
                                                 edge_weight=args.edge_weight), preview,
                   decoder_only=args.decoder_only, sampled_latents=sampled_latents)
    result = train(task, dataset, settings_from(args), args.out, resume=not args.no_resume,
                   device=torch.device(args.device), on_progress=ProgressBar())
    print(f"trained {result.step} steps in {result.seconds:.0f}s; checkpoint {result.checkpoint_path}")
    return 0


def _sampled_latents(args: argparse.Namespace, model):
    import torch

    from sgm.training.sampled_latents import SampledLatents, SampledLatentsConfig

    if not args.decoder_only:
        raise SystemExit("--sampled-latents needs --decoder-only (the encoder must stay the model's)")
    if len(args.sampled_sigma) != 2:
        raise SystemExit(f"--sampled-sigma takes MIN,MAX, got {args.sampled_sigma}")
    try:
        sampled = SampledLatents(args.sampled_latents, SampledLatentsConfig(
            fraction=args.sampled_fraction, min_sigma=args.sampled_sigma[0], max_sigma=args.sampled_sigma[1],
            cfg=args.sampled_cfg, scheduler=args.sampled_scheduler))
    except ValueError as error:  # an unknown scheduler, or no step of it in the sigma range
        raise SystemExit(f"--sampled-latents: {error}") from None
    ours = model.state_dict()
    for name, value in sampled.encoder_state().items():
        if name not in ours or ours[name].shape != value.shape or not torch.equal(ours[name].float(), value.float()):
            raise SystemExit(f"{args.sampled_latents}'s VAE encoder differs from the one being tuned ({name}); "
                             "pass --init with the VAE (or run) that model was trained on")
    return sampled
