"""High-level sampling: noise, img2img start point, inpainting mask, progress, cancellation.

``sample(...)`` is the one entry point the nodes (and ``sgm.models``) call. It owns the
reproducibility rule:

**Seed rule.** Batch item i of a run with seed s uses its own CPU generator
``torch.Generator().manual_seed(s + i)``: it first draws item i's initial noise (C, H, W),
then every ancestral / SDE noise sample item i needs, in step order. So item i of a batch
is the same image as a single-image run with seed s + i, on CPU or GPU (noise is always
drawn on the CPU in float32, then moved).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from sgm.nets.interrupt import interruptible
from sgm.sampling.denoisers import ModelSampling
from sgm.sampling.sampler_common import guided_and_uncond
from sgm.sampling.samplers import SAMPLERS, Sampler, StepCallback, StepInfo

CancelCheck = Callable[[], bool]


class SamplingCancelled(RuntimeError):
    """Raised inside ``sample`` when the cancel check returns True (checked every step)."""


class GuidedModel(Protocol):
    """A denoiser that knows its noise levels (``sgm.sampling.guiders.GuidedDenoiser``)."""

    model_sampling: ModelSampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def item_generators(seed: int, batch: int, item_seeds: Sequence[int] | None = None) -> list[torch.Generator]:
    """One CPU generator per batch item, seeded s, s + 1, ... (the seed rule above), or by
    ``item_seeds`` (one per item: a latent batch whose items keep the seeds they had elsewhere)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if item_seeds is not None:
        if len(item_seeds) != batch:
            raise ValueError(f"need one seed per batch item: {len(item_seeds)} for batch {batch}")
        return [torch.Generator(device="cpu").manual_seed(int(s) % 2**64) for s in item_seeds]
    return [torch.Generator(device="cpu").manual_seed(int(seed) + i) for i in range(batch)]


def initial_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], *,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, C, H, W) standard normal noise, item i drawn from generators[i] on the CPU."""
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch item: {len(generators)} for batch {shape[0]}")
    noise = torch.stack([torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators])
    return noise.to(device=device, dtype=dtype)


def make_noise(
    shape: tuple[int, ...], seed: int, *, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, item_seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """The initial noise ``sample`` uses for ``seed`` (for a NOISE node or a preview)."""
    return initial_noise(shape, item_generators(seed, shape[0], item_seeds), device=device, dtype=dtype)


def resolve_sampler(sampler: str | Sampler) -> Sampler:
    if callable(sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[sampler]


def check_options(sampler: Sampler, options: dict[str, Any]) -> None:
    """Reject options the sampler does not take, naming the ones it does."""
    params = inspect.signature(sampler).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
             and n not in ("callback", "generator")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        name = getattr(sampler, "__name__", "sampler").removeprefix("sample_")
        raise ValueError(
            f"sampler {name!r} has no option(s) {unknown}; its options are {known or 'none'}"
        )


class _SamplingDenoiser:
    """What ``sample`` hands to the sampler: ``model`` plus the cancel check and inpainting.

    With a noise mask the kept region follows the input latent's forward process: it is
    blended into the model's input and, in the x0 estimates, replaced by the input latent.
    ``denoise_with_uncond`` forwards the model's unconditional branch for CFG++ samplers
    (``sgm.sampling.sampler_common.UncondDenoiser``), blended the same way.
    """

    def __init__(self, model: GuidedModel, latent: torch.Tensor, noise: torch.Tensor,
                 mask: torch.Tensor | None, cancel: CancelCheck | None) -> None:
        self.model, self.latent, self.noise, self.mask, self.cancel = model, latent, noise, mask, cancel

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise SamplingCancelled("sampling cancelled by the caller")

    def _masked_input(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None
        s = sigma.to(self.latent).view(-1, *([1] * (self.latent.ndim - 1)))
        return x_t * self.mask + (self.latent + self.noise * s) * (1 - self.mask)

    def _masked_output(self, denoised: torch.Tensor) -> torch.Tensor:
        assert self.mask is not None
        return denoised * self.mask + self.latent * (1 - self.mask)

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self._check_cancel()
        if self.mask is None:
            return self.model(x_t, sigma)
        return self._masked_output(self.model(self._masked_input(x_t, sigma), sigma))

    def denoise_with_uncond(
        self, x_t: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_cancel()
        if self.mask is None:
            return guided_and_uncond(self.model, x_t, sigma)
        denoised, uncond = guided_and_uncond(self.model, self._masked_input(x_t, sigma), sigma)
        return self._masked_output(denoised), self._masked_output(uncond)


def _latent_mask(mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """(H, W) / (B, H, W) / (B, 1, H, W) mask, any resolution -> (B or 1, 1, h, w) like latent."""
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"noise mask must be (H, W), (B, H, W) or (B, 1, H, W); got {tuple(mask.shape)}")
    mask = mask.to(device=latent.device, dtype=latent.dtype)
    if mask.shape[-2:] != latent.shape[-2:]:
        mask = F.interpolate(mask, size=latent.shape[-2:], mode="bilinear", align_corners=False)
    if mask.shape[0] not in (1, latent.shape[0]):
        raise ValueError(f"noise mask batch {mask.shape[0]} does not match latent batch {latent.shape[0]}")
    return mask.clamp(0, 1)


def sample(
    model: GuidedModel,
    sampler: str | Sampler,
    sigmas: torch.Tensor,
    latent: torch.Tensor,
    seed: int,
    *,
    noise_mask: torch.Tensor | None = None,
    sampler_options: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    cancel: CancelCheck | None = None,
    add_noise: bool = True,
    noise: torch.Tensor | None = None,
    item_seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Denoise ``latent`` (B, C, H, W) along ``sigmas`` with sampler ``sampler``.

    txt2img: ``latent`` is zeros and ``sigmas`` a full schedule. img2img: ``latent`` is the
    encoded image and ``sigmas`` the tail of a longer schedule (``compute_sigmas(...,
    denoise)``); fewer than two sigmas (denoise 0) returns the input latent unchanged.
    ``noise_mask`` (1 = repaint, 0 = keep) blends the re-noised input back into the kept
    region before every model call and into the model's output, and the result keeps the
    input latent exactly where the mask is 0. ``noise`` overrides the seeded initial noise
    (ancestral noise still follows the seed rule). ``item_seeds`` replaces the seed rule's
    seed + i for item i (initial and ancestral noise). Raises ``SamplingCancelled`` when
    ``cancel()`` returns True, checked before every model evaluation (so every step) and
    between the network's blocks inside one (``sgm.nets.interrupt``), so it lands within
    about a block's time even when one step takes minutes.
    """
    options = dict(sampler_options or {})
    sampler_fn = resolve_sampler(sampler)
    check_options(sampler_fn, options)
    if latent.ndim != 4:
        raise ValueError(f"latent must be (B, C, H, W), got shape {tuple(latent.shape)}")
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if sigmas.numel() < 2:
        return latent.clone()

    generators = item_generators(seed, latent.shape[0], item_seeds)
    seeded_noise = initial_noise(tuple(latent.shape), generators, device=latent.device, dtype=latent.dtype)
    if noise is None:
        noise = seeded_noise
    elif noise.shape != latent.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match latent {tuple(latent.shape)}")
    ms = model.model_sampling
    sigma_0 = sigmas[:1].to(latent.device)
    max_denoise = float(sigmas[0]) >= ms.sigma_max * (1 - 1e-5)
    x = ms.noise_scaling(sigma_0, noise, latent, max_denoise) if add_noise else latent

    mask = None if noise_mask is None else _latent_mask(noise_mask, latent)
    denoiser = _SamplingDenoiser(model, latent, noise, mask, cancel)

    def on_step(info: StepInfo) -> None:
        if cancel is not None and cancel():
            raise SamplingCancelled(f"sampling cancelled at step {info.step + 1}/{info.total}")
        if callback is not None:
            callback(info)

    def interrupt() -> None:  # also checked inside each model call (between UNet blocks)
        if cancel is not None and cancel():
            raise SamplingCancelled("sampling cancelled inside a model evaluation")

    with interruptible(interrupt if cancel is not None else None):
        out = sampler_fn(denoiser, x, sigmas, callback=on_step, generator=generators, **options)
    if mask is not None:
        out = out * mask + latent * (1 - mask)
    return out
