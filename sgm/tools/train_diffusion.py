"""The ``diffusion`` and ``lora`` halves of ``python main.py train`` (see sgm.tools.train)."""

from __future__ import annotations

import argparse
import json
import sys

from sgm.tools.train_common import ProgressBar, ints, latent_cache, load_vae_from_run, settings_from


def configure_diffusion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae",
                        help="the VAE run's checkpoint-latest.pt (its EMA weights are used), or a model file "
                             "(.safetensors) whose VAE to reuse (default with --init: the init model's VAE)")
    parser.add_argument("--init", metavar="MODEL",
                        help="fine-tune this model file (.safetensors written by this tool): its UNet, text "
                             "encoder, latent scaling, prediction and noise schedule; the architecture options "
                             "below are then ignored")
    parser.add_argument("--prediction", choices=("eps", "v"), default=None, help="default: eps (or --init's)")
    parser.add_argument("--weighting", choices=("min-snr", "edm", "uniform"), default="min-snr")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0)
    parser.add_argument("--min-snr-floor", type=float, default=0.0,
                        help="min-snr: lower clip of the x0 weight, so pure-noise steps keep some weight "
                             "(use with --zero-terminal-snr)")
    parser.add_argument("--noise-offset", type=float, default=0.1)
    parser.add_argument("--zero-terminal-snr", action="store_true",
                        help="rescale the noise schedule so the last timestep is pure noise (needs --prediction v); "
                             "stops small latents from leaking layout into the training noise")
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--timestep-bias-fraction", type=float, default=0.0,
                        help="share of each batch whose timesteps are drawn from --timestep-bias-range instead "
                             "(e.g. 0.5 with 0,150 spends half the steps on the low noise levels that draw "
                             "small details)")
    parser.add_argument("--timestep-bias-range", type=ints, default=(0, 1000), metavar="LOW,HIGH",
                        help="timesteps [LOW, HIGH) of the 1000-step schedule for --timestep-bias-fraction")
    parser.add_argument("--model-channels", type=int, default=32)
    parser.add_argument("--channel-mult", type=ints, default=(1, 2, 4))
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--attention-resolutions", type=ints, default=(4,),
                        help="downsampling factors with cross-attention (the middle block always has it)")
    parser.add_argument("--num-head-channels", type=int, default=32)
    parser.add_argument("--text-width", type=int, default=64, help="tiny text encoder width = UNet context_dim")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--text-max-length", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--latent-cache", type=int, default=0,
                        help="encode this many items once and train on their stored posteriors (0: encode "
                             "every batch); roughly halves the cost of a step for a small UNet")
    parser.add_argument("--export", help="write the single-file model (.safetensors) here when training ends")
    parser.add_argument("--export-only", action="store_true",
                        help="only export --out's latest checkpoint (EMA weights) to --export; no training")
    parser.add_argument("--family", default="tiny-shapes", help="latentflow.family written into the export")


def measure_scale_factor(vae, dataset, count: int = 256) -> float:
    """1 / std of the posterior means of ``count`` items: scaled latents get unit variance."""
    import torch

    with torch.no_grad():
        images = torch.stack([dataset[i]["image"] for i in range(count)])
        latents = torch.cat([vae.encode(images[i:i + 64]) for i in range(0, count, 64)])
    return float(1.0 / latents.float().std())


def _build(args: argparse.Namespace, dataset, vae, scale_factor: float, init=None):
    """The DiffusionTask: a fresh UNet and text encoder, or ``init``'s (a loaded Checkpoint)."""
    from sgm.data import ShapesDataset
    from sgm.data import shapes as shapes_module
    from sgm.text.tiny_text import TinyTextConfig, TinyTextEncoder, vocabulary_of
    from sgm.training.diffusion import DiffusionConfig, DiffusionTask
    from sgm.nets.unet import UNetModel

    if isinstance(dataset, ShapesDataset):
        vocabulary = vocabulary_of(spec.caption() for spec in shapes_module.all_combos())
        preview = [spec.caption() for spec in shapes_module.held_out_combos()[:8]]
    else:
        vocabulary = vocabulary_of(dataset.captions)
        preview = list(dict.fromkeys(dataset.captions))[:8]
    prediction, zero_terminal_snr = args.prediction or "eps", args.zero_terminal_snr
    if init is not None:
        unet, text = init.unet.train(), init.conditioner.encoder.train()
        if args.gradient_checkpointing:
            for module in unet.modules():
                if hasattr(module, "use_checkpoint"):
                    module.use_checkpoint = True
        prediction, zero_terminal_snr = init.prediction, init.zero_terminal_snr
    else:
        text = TinyTextEncoder(TinyTextConfig(vocabulary, max_length=args.text_max_length, width=args.text_width,
                                              layers=args.text_layers, heads=max(1, args.text_width // 32)))
        unet = UNetModel(
            in_channels=vae.embed_dim, model_channels=args.model_channels, out_channels=vae.embed_dim,
            num_res_blocks=args.num_res_blocks, attention_resolutions=args.attention_resolutions,
            channel_mult=args.channel_mult, num_head_channels=args.num_head_channels, context_dim=args.text_width,
            use_checkpoint=args.gradient_checkpointing,
        )
    config = DiffusionConfig(prediction=prediction, weighting=args.weighting, min_snr_gamma=args.min_snr_gamma,
                             min_snr_floor=args.min_snr_floor,
                             noise_offset=args.noise_offset, caption_dropout=args.caption_dropout,
                             scale_factor=scale_factor, zero_terminal_snr=zero_terminal_snr,
                             timestep_bias_fraction=args.timestep_bias_fraction,
                             timestep_bias_range=tuple(args.timestep_bias_range))
    return DiffusionTask(unet, vae, text, config, preview_prompts=preview,
                         latent_size=args.image_size // vae.downscale)


def load_init_model(args: argparse.Namespace):
    """``--init``'s Checkpoint, checked: a tiny-text model whose schedule the options do not contradict."""
    import torch

    from sgm.io.checkpoints import load_checkpoint
    from sgm.text.tiny_text import TinyTextConditioner

    init = load_checkpoint(args.init, dtype=torch.float32)
    if init.unet is None or init.vae is None or not isinstance(init.conditioner, TinyTextConditioner):
        raise SystemExit(f"--init {args.init}: needs a model written by 'train diffusion' (UNet, VAE and tiny "
                         f"text encoder); for other checkpoints ({init.family}) train a LoRA with 'train lora'")
    if args.prediction is not None and args.prediction != init.prediction:
        raise SystemExit(f"--prediction {args.prediction} contradicts --init {args.init}, a {init.prediction}-"
                         "prediction model; drop --prediction (a fine-tune keeps the model's objective)")
    if args.zero_terminal_snr and not init.zero_terminal_snr:
        raise SystemExit(f"--zero-terminal-snr contradicts --init {args.init}, trained on SD's schedule; drop "
                         "--zero-terminal-snr (a fine-tune keeps the model's noise schedule)")
    return init


def run_diffusion(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sgm.data import build_dataset
    from sgm.training.loop import CHECKPOINT_NAME, load_ema_into, train

    if args.vae is None and args.init is None:
        raise SystemExit("train diffusion needs --vae (a VAE run or model file) or --init (a model to fine-tune)")
    dataset = build_dataset(args.data, args.image_size, seed=args.seed, flip_probability=args.flip,
                            random_crop=args.random_crop)
    init = load_init_model(args) if args.init else None
    vae = load_vae_from_run(args.vae) if args.vae else init.vae.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    training_data = dataset
    if args.latent_cache:
        training_data = latent_cache(args, dataset, vae, out / "latents.pt")
    scale_path = out / "scale_factor.json"
    if scale_path.exists():  # a resumed run must keep the latent scaling it started with
        scale_factor = float(json.loads(scale_path.read_text())["scale_factor"])
    else:  # a fine-tune keeps the scaling its UNet learned
        scale_factor = init.scale_factor if init is not None else measure_scale_factor(vae, dataset)
        scale_path.write_text(json.dumps({"scale_factor": scale_factor}))
    task = _build(args, dataset, vae, scale_factor, init)
    if not args.export_only:
        result = train(task, training_data, settings_from(args), out, resume=not args.no_resume,
                       device=torch.device(args.device), on_progress=ProgressBar())
        print(f"trained {result.step} steps in {result.seconds:.0f}s; checkpoint {result.checkpoint_path}")
    if args.export:
        load_ema_into(task, out / CHECKPOINT_NAME)
        path = export_model(task, args.export, family=args.family, training={
            "command": " ".join(sys.argv[1:]), "vae_run": args.vae, "init": args.init})
        print(f"exported {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def export_model(task, path: str, *, family: str, training: dict[str, object]):
    """Write the UNet, VAE and tiny text encoder as one single-file checkpoint with its config."""
    from sgm.io.checkpoints import save_checkpoint
    from sgm.text.tiny_text import TinyTextConditioner

    conditioner = TinyTextConditioner(task.text_encoder, family)
    config = {
        "prediction": task.config.prediction,
        "scale_factor": task.config.scale_factor,
        "zero_terminal_snr": task.config.zero_terminal_snr,
        "unet": {"num_head_channels": task.unet_head_channels()},
        "image_size": task.latent_size * task.vae.downscale,
        "training": training,
    }
    metadata = {"latentflow.family": family, "latentflow.config": json.dumps(config), **conditioner.metadata()}
    return save_checkpoint(path, unet=task.unet, vae=task.vae, text_state_dict=conditioner.state_dict(),
                           metadata=metadata)
