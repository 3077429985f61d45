"""Operations on a schedule of sigmas (the SIGMAS value between custom-sampling nodes).

A schedule is a 1-D descending float tensor of noise levels, usually ending in 0 (see
``sgm.sampling.schedules``). These functions cut, flip and re-head schedules the way
multi-stage workflows need (a base model's high sigmas, a refiner's low ones), build the
SD-Turbo / ADD schedule, and map a "percent of sampling" to a sigma. None modifies its
input: each returns a new tensor.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from sgm.sampling.denoisers import ModelSampling

TURBO_TIMESTEPS = 10  # SD-Turbo (Sauer et al. 2023, "Adversarial Diffusion Distillation") trains on 4 of
# 1000 timesteps spaced 250 apart; ComfyUI's scheduler offers the 10 timesteps 999, 899, ..., 99.
FLIPPED_ZERO = 1e-4  # a flipped schedule must not start at 0: samplers divide by sigma


def split_sigmas(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas[:step + 1], sigmas[step:]): the two halves share sigmas[step], so sampling the
    first and then the second walks the whole schedule once."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return sigmas[: step + 1].clone(), sigmas[step:].clone()


def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split so that the low half has round(steps * denoise) steps (its img2img strength).

    The halves share the sigma where the low half starts. Denoise 1 gives (the first sigma,
    all); denoise 0 gives (all, the last sigma).
    """
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    steps = max(sigmas.shape[-1] - 1, 0)
    low_steps = round(steps * denoise)
    high = sigmas[: sigmas.shape[-1] - low_steps]
    # ComfyUI's slice sigmas[:-0] is empty: with denoise 0 its high half is empty too. We keep the
    # whole schedule there (the low half, one sigma, samples nothing), which is what "denoise 0" says.
    return high.clone(), sigmas[-(low_steps + 1):].clone()


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The schedule reversed (ascending: for inversion, image -> noise); a leading 0 becomes
    ``FLIPPED_ZERO`` so the first step has a finite derivative."""
    if sigmas.numel() == 0:
        return sigmas.clone()
    flipped = sigmas.flip(0)
    if float(flipped[0]) == 0.0:
        flipped = torch.cat([flipped.new_tensor([FLIPPED_ZERO]), flipped[1:]])
    return flipped


def set_first_sigma(sigmas: torch.Tensor, sigma: float) -> torch.Tensor:
    """A copy of the schedule whose first sigma is ``sigma``."""
    if sigmas.numel() == 0:
        raise ValueError("the schedule is empty: there is no first sigma to set")
    out = sigmas.clone()
    out[0] = sigma
    return out


def sd_turbo_sigmas(model_sampling: ModelSampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD-Turbo's schedule: timesteps 999, 899, ..., 99; ``denoise`` < 1 starts further down that
    list (at index 10 - int(10 * denoise)), then ``steps`` of them, then 0."""
    if not 1 <= steps <= TURBO_TIMESTEPS:
        raise ValueError(f"steps must be in 1..{TURBO_TIMESTEPS}, got {steps}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(f"denoise must be in [0, 1], got {denoise}")
    start = TURBO_TIMESTEPS - int(TURBO_TIMESTEPS * denoise)
    timesteps = (torch.arange(TURBO_TIMESTEPS, 0, -1) * 100 - 1)[start:start + steps]
    sigmas = model_sampling.sigma(timesteps.float()).float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def step_range(sigmas: torch.Tensor, start_at_step: int, end_at_step: int,
               force_full_denoise: bool) -> torch.Tensor:
    """The part of a full schedule between two step indices (KSampler Advanced's rule).

    The schedule is cut after ``end_at_step`` (if it is before the end; then, with
    ``force_full_denoise``, its last sigma becomes 0 so the result is clean) and started at
    ``start_at_step``. A start at or past the last step leaves nothing to sample: the result
    has fewer than two sigmas and ``sample`` returns its input unchanged.
    """
    out = sigmas.clone()
    if end_at_step < out.shape[0] - 1:
        out = out[: end_at_step + 1].clone()
        if force_full_denoise:
            out[-1] = 0.0
    if start_at_step >= out.shape[0] - 1:
        return out[:0]
    return out[start_at_step:]


def percent_to_sigma(model_sampling: ModelSampling, percent: float) -> float:
    """The sigma reached after ``percent`` of sampling, in the model's timestep (0 = the noisiest
    timestep, 1 = the cleanest); 0 and 1 map past both ends (infinity and 0), so a range that
    starts at 0 or ends at 1 includes every sigma a schedule may hold."""
    if percent <= 0.0:
        return float("inf")
    if percent >= 1.0:
        return 0.0
    t_max = float(model_sampling.timestep(torch.tensor(model_sampling.sigma_max)))
    t_min = float(model_sampling.timestep(torch.tensor(model_sampling.sigma_min)))
    t = t_min + (1.0 - percent) * (t_max - t_min)
    return float(model_sampling.sigma(torch.tensor(t)))


PERCENT_ZERO_SIGMA = 999999999.9  # ComfyUI's sigma for "0 % of sampling": above any schedule's first sigma


def sampling_percent_to_sigma(model_sampling: ModelSampling, percent: float, actual: bool = False) -> float:
    """ComfyUI's SamplingPercentToSigma: the sigma reached after ``percent`` of sampling (see
    ``percent_to_sigma``). The ends are the values a range check wants, 999999999.9 at 0 and 0.0 at 1;
    with ``actual`` they are the model's real sigma_max and sigma_min instead."""
    if not 0.0 <= percent <= 1.0:
        raise ValueError(f"sampling_percent must be in [0, 1], got {percent}")
    if percent <= 0.0:
        return float(model_sampling.sigma_max) if actual else PERCENT_ZERO_SIGMA
    if percent >= 1.0:
        return float(model_sampling.sigma_min) if actual else 0.0
    return percent_to_sigma(model_sampling, percent)


Spacing = Literal["linear", "cosine", "sine"]


def extend_intermediate_sigmas(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                               spacing: Spacing = "linear") -> torch.Tensor:
    """Split each step whose first sigma lies in [end_at_sigma, start_at_sigma] (a negative start: no
    upper bound) into ``steps`` smaller ones (ComfyUI's ExtendIntermediateSigmas).

    Between sigma and sigma' the new points are sigma + f(k / steps) (sigma' - sigma), k = 1 .. steps - 1,
    with f(u) = u (linear), sin(u pi / 2) (cosine: larger steps first) or 1 - cos(u pi / 2) (sine:
    smaller steps first). Returns a new float32 tensor.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    shapes = {"linear": lambda u: u, "cosine": lambda u: torch.sin(u * math.pi / 2),
              "sine": lambda u: 1 - torch.cos(u * math.pi / 2)}
    if spacing not in shapes:
        raise ValueError(f"spacing must be one of {sorted(shapes)}, got {spacing!r}")
    upper = float("inf") if start_at_sigma < 0 else start_at_sigma
    fractions = shapes[spacing](torch.linspace(0, 1, steps + 1, dtype=torch.float64)[1:-1])
    values = sigmas.detach().double().cpu()
    pieces = []
    for sigma, sigma_next in zip(values[:-1], values[1:]):
        pieces.append(sigma[None])
        if end_at_sigma <= float(sigma) <= upper:
            pieces.append(sigma + fractions * (sigma_next - sigma))
    pieces.append(values[-1:])
    return torch.cat(pieces).float()
