"""``python main.py train lora --checkpoint FILE --data DIR --out RUN --export FILE.safetensors``."""

from __future__ import annotations

import argparse

from sgm.tools.train_common import ProgressBar, latent_cache, settings_from


def configure_lora(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model file whose UNet gets the adapters")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--caption-dropout", type=float, default=0.0)
    parser.add_argument("--latent-cache", type=int, default=0, help="encode this many items once (0: every batch)")
    parser.add_argument("--export", required=True, help="the .safetensors LoRA file to write")


def run_lora(args: argparse.Namespace) -> int:
    import torch

    from sgm.io.checkpoints import load_checkpoint
    from sgm.data import build_dataset
    from sgm.training.diffusion import DiffusionConfig
    from sgm.training.lora import LoRAAdapters, LoRATask, save_lora
    from sgm.training.loop import CHECKPOINT_NAME, load_ema_into, train
    from pathlib import Path

    checkpoint = load_checkpoint(args.checkpoint, dtype=torch.float32)
    if checkpoint.unet is None or checkpoint.vae is None or checkpoint.conditioner is None:
        raise SystemExit(f"{args.checkpoint} needs a UNet, a VAE and a text encoder to train a LoRA on it")
    if checkpoint.unet.num_classes is not None:
        raise SystemExit(f"LoRA training supports UNets without vector conditioning; {checkpoint.family} needs y")
    dataset = build_dataset(args.data, args.image_size, seed=args.seed, flip_probability=args.flip,
                            random_crop=args.random_crop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    training_data = latent_cache(args, dataset, checkpoint.vae, out / "latents.pt") if args.latent_cache else dataset
    torch.manual_seed(args.seed)  # adapter initialisation
    adapters = LoRAAdapters(checkpoint.unet, rank=args.rank, alpha=args.alpha)
    # The base model's noise schedule; on a zero-terminal-SNR model the pure-noise steps keep
    # some weight (plain min-SNR gives them none).
    config = DiffusionConfig(prediction=checkpoint.prediction, caption_dropout=args.caption_dropout,
                             noise_offset=0.0, scale_factor=checkpoint.scale_factor,
                             zero_terminal_snr=checkpoint.zero_terminal_snr,
                             min_snr_floor=0.5 if checkpoint.zero_terminal_snr else 0.0)
    task = LoRATask(checkpoint.unet, checkpoint.vae, lambda captions: checkpoint.encode_text(captions)[0], config,
                    adapters, latent_size=args.image_size // checkpoint.vae.downscale,
                    preview_prompts=list(dict.fromkeys(getattr(dataset, "captions", [])))[:4] or None)
    result = train(task, training_data, settings_from(args), out, resume=not args.no_resume,
                   device=torch.device(args.device), on_progress=ProgressBar())
    load_ema_into(task, out / CHECKPOINT_NAME)
    path = save_lora(args.export, adapters, checkpoint.unet, base_model=Path(args.checkpoint).name)
    print(f"trained {result.step} steps in {result.seconds:.0f}s; LoRA written to {path}")
    return 0
