"""``python main.py train vae|diffusion|lora``: train on ``shapes`` or a captioned image folder.

Each run writes to ``--out``: ``log.jsonl``, ``samples/step-*.png``, ``checkpoint-latest.pt``
(rerunning the same command resumes from it). ``diffusion`` exports a single-file model
(``--export``) that ``load_checkpoint`` reads; ``lora`` writes a kohya-layout LoRA file.
"""

from __future__ import annotations

import argparse

from sgm.tools.train_common import ProgressBar, add_common_options, floats, ints, settings_from


def configure(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    vae = tasks.add_parser("vae", help="train an AutoencoderKL")
    add_common_options(vae, steps=3000, batch_size=32, lr=2e-4)
    vae.add_argument("--ch", type=int, default=32)
    vae.add_argument("--ch-mult", type=ints, default=(1, 2, 2))
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
    vae.add_argument("--sampled-sigma", type=floats, default=(0.3, 4.0), metavar="MIN,MAX",
                     help="noise levels the re-sampling starts from (--sampled-latents)")
    vae.add_argument("--sampled-cfg", type=float, default=4.0, help="guidance scale of the re-sampling")
    vae.add_argument("--sampled-scheduler", default="sgm_uniform", metavar="NAME",
                     help="the 20-step schedule the re-sampling follows (default sgm_uniform, as 'sample' uses)")
    vae.add_argument("--crop-size", type=int, default=None,
                     help="train on random crops of this size (shapes): a convolutional VAE learns edges "
                          "and colours as well from parts, at a fraction of the compute")

    diffusion = tasks.add_parser("diffusion", help="train a text-to-image UNet (+ tiny text encoder) on VAE latents")
    add_common_options(diffusion, steps=10000, batch_size=32, lr=3e-4)
    from sgm.tools.train_diffusion import configure_diffusion

    configure_diffusion(diffusion)

    lora = tasks.add_parser("lora", help="train LoRA adapters on a checkpoint's UNet attention")
    add_common_options(lora, steps=500, batch_size=8, lr=1e-4)
    from sgm.tools.train_lora import configure_lora

    configure_lora(lora)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "vae":
        return _run_vae(args)
    if args.task == "diffusion":
        from sgm.tools.train_diffusion import run_diffusion

        return run_diffusion(args)
    from sgm.tools.train_lora import run_lora

    return run_lora(args)


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
        from sgm.tools.train_common import load_vae_from_run

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
