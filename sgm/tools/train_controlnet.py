"""``python -m sgm.tools.train_controlnet --steps 600 --out models/controlnet/tiny-shapes-canny.safetensors``.

Trains a Canny-edge ControlNet for a model file (default: the embedded tiny-shapes model) on the
shapes data (:mod:`sgm.training.controlnet`), writes it in the ldm layout ControlNetLoader reads,
and with ``--eval N`` reports how often the shape lands in the edge map's grid cell over N
held-out specs (prompts naming another position, or none), with and without the ControlNet.
The run folder (``--run``) holds the log and a resumable checkpoint: rerunning resumes;
``--export-only`` writes the file from the checkpoint as it stands.
"""

from __future__ import annotations

import argparse
import sys

from sgm.tools.train_common import ProgressBar, ints

DEFAULT_MODEL = "models/checkpoints/tiny-shapes.safetensors"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL, help="model file whose UNet the ControlNet steers")
    parser.add_argument("--out", required=True, help="the .safetensors ControlNet to write")
    parser.add_argument("--run", default=None, help="run folder (log, resumable checkpoint); default OUT.run")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--ema-decay", type=float, default=0.0, help="0 disables EMA")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--swap-position", type=float, default=0.5, help="share of captions naming another position")
    parser.add_argument("--drop-position", type=float, default=0.2, help="share of captions naming no position")
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions")
    parser.add_argument("--timestep-bias-fraction", type=float, default=0.0,
                        help="share of each batch drawing timesteps from --timestep-bias-range (layout is decided "
                             "at high noise: a bias there spends a short run where position is learned)")
    parser.add_argument("--timestep-bias-range", type=ints, default=(500, 1000), metavar="LOW,HIGH")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--export-only", action="store_true", help="write --out from the run's checkpoint and stop")
    parser.add_argument("--store-dtype", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--eval", type=int, default=0, metavar="N", help="then evaluate on N held-out specs")


def _report(name: str, report) -> str:
    parts = ", ".join(f"{kind} {100 * acc:.1f} % of {report.count[kind]}" for kind, acc in report.accuracy.items())
    others = ", ".join(f"{k} {100 * v:.1f} %" for k, v in report.attributes.items())
    return (f"{name}: shape in the edge map's cell: {parts} ({report.empty_hints} empty edge maps); "
            f"other attributes as captioned: {others}")


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import torch

    from sgm.io.checkpoints import load_checkpoint
    from sgm.io.controlnet_files import controlnet_from_unet
    from sgm.training.common import Precision, TrainSettings
    from sgm.training.controlnet import (CaptionMix, ControlNetTask, ControlShapesDataset, evaluate_positions,
                                         position_cases, save_controlnet)
    from sgm.training.diffusion import DiffusionConfig
    from sgm.training.loop import CHECKPOINT_NAME, load_training_checkpoint, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint, dtype=torch.float32)
    if checkpoint.unet is None or checkpoint.vae is None or checkpoint.conditioner is None:
        raise SystemExit(f"{args.checkpoint} needs a UNet, a VAE and a text encoder to train a ControlNet for it")
    from sgm.io.checkpoints import config_hints

    unet_hints = dict(config_hints(checkpoint.metadata).get("unet", {}))
    torch.manual_seed(args.seed)  # hint encoder initialisation
    controlnet = controlnet_from_unet(checkpoint.unet, unet_hints)
    config = DiffusionConfig(prediction=checkpoint.prediction, caption_dropout=0.0, noise_offset=0.0,
                             scale_factor=checkpoint.scale_factor, zero_terminal_snr=checkpoint.zero_terminal_snr,
                             min_snr_floor=0.5 if checkpoint.zero_terminal_snr else 0.0,
                             timestep_bias_fraction=args.timestep_bias_fraction,
                             timestep_bias_range=tuple(args.timestep_bias_range))
    task = ControlNetTask(checkpoint.unet, checkpoint.vae, lambda captions: checkpoint.encode_text(captions)[0],
                          controlnet, config, latent_size=64 // checkpoint.vae.downscale)
    run_dir = Path(args.run or f"{args.out}.run")
    if args.export_only:
        state = load_training_checkpoint(run_dir / CHECKPOINT_NAME)
        controlnet.load_state_dict(state["modules"]["controlnet"])
        step = int(state["step"])
    else:
        mix = CaptionMix(args.caption_dropout, args.swap_position, args.drop_position)
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
                                 precision=Precision(args.precision), seed=args.seed,
                                 checkpoint_every=args.checkpoint_every, sample_every=0, log_every=args.log_every)
        result = train(task, ControlShapesDataset(64, seed=args.seed, mix=mix), settings, run_dir,
                       on_progress=ProgressBar())
        step = result.step
        print(f"trained {result.step} steps in {result.seconds:.0f}s")
    dtype = torch.float16 if args.store_dtype == "fp16" else torch.float32
    path = save_controlnet(args.out, controlnet, unet_hints=unet_hints, base_model=Path(args.checkpoint).name,
                           dtype=dtype,
                           training={"steps": step, "batch_size": args.batch_size, "lr": args.lr,
                                     "captions": {"empty": args.caption_dropout, "swapped": args.swap_position,
                                                  "dropped": args.drop_position},
                                     "timestep_bias": [args.timestep_bias_fraction,
                                                       list(args.timestep_bias_range)]})
    print(f"ControlNet written to {path} ({path.stat().st_size} bytes)")
    if args.eval:
        cases = position_cases(args.eval)

        def progress(done: int, total: int) -> None:
            sys.stderr.write(f"\r{done}/{total}")
            sys.stderr.flush()

        from sgm.io.controlnet_files import load_control_file

        shipped = load_control_file(path, dtype=torch.float32).eval()  # the file as written (fp16 weights)
        with_control = evaluate_positions(checkpoint, shipped, cases, on_batch=progress)
        without = evaluate_positions(checkpoint, None, cases, on_batch=progress)
        sys.stderr.write("\n")
        print(_report("with the ControlNet", with_control))
        print(_report("without (baseline)", without))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sgm.tools.train_controlnet", description=__doc__.split("\n")[2])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
