"""Benchmark: txt2img sampling loop, ours vs diffusers, same UNet weights, one run.

    python bench/sampling.py            # SD1.5-size UNet, 64x64 latent (512x512), 20 steps
    python bench/sampling.py --quick    # narrow UNet, 32x32 latent, 4 steps (minutes on CPU)

Both sides run classifier-free guidance with cond and uncond batched (UNet batch 2) and
the same random weights (diffusers' UNet2DConditionModel initialised with a fixed seed,
converted into our UNetModel with sgm.io.convert). For each sampler it reports seconds per
step and in total, the time spent inside UNet forward calls, and the overhead outside
them (sampler + guidance + scheduler bookkeeping) as a percentage of the total. Not a test:
it prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sgm.io.checkpoints import build_unet, infer_unet_config  # noqa: E402
from sgm.text.conditioning import Condition  # noqa: E402
from sgm.io.convert import unet_diffusers_to_original  # noqa: E402
from sgm.sampling.denoisers import DiscreteModelSampling  # noqa: E402
from sgm.sampling.guiders import GuidedDenoiser  # noqa: E402
from sgm.sampling.sample import sample  # noqa: E402
from sgm.sampling.schedules import compute_sigmas  # noqa: E402

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


class Timed(nn.Module):
    """Wraps a UNet; accumulates wall time spent in its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0
        # GuidedDenoiser reads these from our UNetModel (diffusers keeps them in .config).
        self.in_channels = getattr(inner, "config", {}).get("in_channels", None) or inner.in_channels
        self.context_dim = getattr(inner, "context_dim", None) if not hasattr(inner, "config") else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def build_unets(quick: bool, device: torch.device) -> tuple[nn.Module, nn.Module]:
    from diffusers import UNet2DConditionModel

    width = (64, 128, 256, 256) if quick else (320, 640, 1280, 1280)
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(
        sample_size=64, block_out_channels=width, layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=32,
    ).eval()
    state = unet_diffusers_to_original(theirs.state_dict())
    ours = build_unet(state, infer_unet_config(state, "sd1", {"num_heads": 8}))
    return ours.eval().to(device), theirs.to(device)


def run_ours(unet: Timed, sampler: str, steps: int, latent_size: int, ctx: torch.Tensor,
             uctx: torch.Tensor, device: torch.device) -> torch.Tensor:
    ms = DiscreteModelSampling()
    guided = GuidedDenoiser(unet, ms, [Condition(context=ctx)], [Condition(context=uctx)], cfg=7.5)
    sigmas = compute_sigmas("normal", ms, steps).to(device)
    latent = torch.zeros(1, 4, latent_size, latent_size, device=device)
    return sample(guided, sampler, sigmas, latent, seed=0)


def run_diffusers(unet: Timed, sampler: str, steps: int, latent_size: int, ctx: torch.Tensor,
                  uctx: torch.Tensor, device: torch.device) -> torch.Tensor:
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    scheduler: Any = (EulerDiscreteScheduler(**BETAS) if sampler == "euler"
                      else DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2))
    scheduler.set_timesteps(steps, device=device)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, latent_size, latent_size, generator=generator).to(device)
    latents = latents * scheduler.init_noise_sigma
    both = torch.cat([uctx, ctx])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise = unet(model_in, t, encoder_hidden_states=both).sample
        uncond, cond = noise.chunk(2)
        latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
    return latents


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="narrow UNet, 32x32 latent, 4 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--latent-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--samplers", nargs="+", default=["euler", "dpmpp_2m"])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (4 if args.quick else 20)
    size = args.latent_size or (32 if args.quick else 64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    ours_raw, theirs_raw = build_unets(args.quick, device)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(1, 77, 768, generator=g).to(device)
    uctx = torch.randn(1, 77, 768, generator=g).to(device)
    runners: dict[str, tuple[Callable[..., torch.Tensor], nn.Module]] = {
        "ours": (run_ours, ours_raw), "diffusers": (run_diffusers, theirs_raw),
    }
    params = sum(p.numel() for p in ours_raw.parameters()) / 1e6
    print(f"# UNet {params:.0f}M params, latent {size}x{size} (image {size * 8}px), {steps} steps, "
          f"CFG batch 2, device {device}, torch threads {torch.get_num_threads()}")
    with torch.inference_mode():
        for runner, unet in runners.values():  # warm-up: one UNet call each
            runner(Timed(unet), "euler", 1, size, ctx, uctx, device)
        print(f"{'impl':10s} {'sampler':9s} {'total s':>8s} {'s/step':>7s} {'UNet s':>8s} "
              f"{'outside s':>9s} {'overhead':>8s}")
        for sampler in args.samplers:
            for impl, (runner, unet) in runners.items():
                timed = Timed(unet)
                start = time.perf_counter()
                out = runner(timed, sampler, steps, size, ctx, uctx, device)
                total = time.perf_counter() - start
                assert timed.calls == steps and torch.isfinite(out).all()
                outside = total - timed.seconds
                print(f"{impl:10s} {sampler:9s} {total:8.2f} {total / steps:7.3f} {timed.seconds:8.2f} "
                      f"{outside:9.4f} {100 * outside / total:7.3f}%", flush=True)


if __name__ == "__main__":
    main()
