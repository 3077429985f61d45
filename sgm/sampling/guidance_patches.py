"""Guidance patches: changes to the guided denoiser recorded on a MODEL value (``wrap`` one around
the denoiser a sampler gets), applied in the order they were added, after CFG (and CFG rescale).

* :class:`PerturbedAttention` -- Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with
  Perturbed-Attention Guidance" (PAG), eq. 10: a second pass of the positive prompt through a UNet
  whose middle block's self-attention maps are the identity (each token attends to itself only,
  so the attention output is its value vector), and

      D = D_guided + s (D_cond - D_perturbed)

  pushes the result away from that structurally degraded prediction.
* :class:`EpsilonScaling` -- Ning et al. 2024, "Elucidating the Exposure Bias in Diffusion
  Models" (ICLR), eq. 15-16: the predicted noise is divided by lambda (slightly above 1) at every
  step, D = x - (x - D) / lambda, which offsets the too-large noise norm sampling accumulates.

Every wrapper keeps the denoiser contract ``model(x (B, C, H, W), sigma (B,)) -> denoised`` with a
``model_sampling`` attribute, and ``denoise_with_uncond`` for CFG++ samplers (the unconditional
branch is passed through unchanged).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

from sgm.nets.attention import CrossAttention
from sgm.sampling.sampler_common import guided_and_uncond
from sgm.text.conditioning import Condition


@dataclass(frozen=True)
class GuidanceInputs:
    """What a guidance patch may need besides the denoiser: the UNet being sampled, its noise levels,
    the positive and negative conditions (on the UNet's device), the inpainting channels, and whether
    the guided estimate *is* the positive prompt's (cfg 1: no second positive pass is needed)."""

    unet: nn.Module
    model_sampling: Any
    positive: Sequence[Condition]
    inpaint_concat: torch.Tensor | None = None
    guided_is_cond: bool = False
    negative: Sequence[Condition] = ()


class Denoiser(Protocol):
    model_sampling: Any

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


class _Wrapper:
    """A denoiser whose guided output is ``self._change(x, sigma, guided)`` of the inner one's."""

    def __init__(self, inner: Denoiser) -> None:
        self.inner = inner
        self.model_sampling = inner.model_sampling

    def _change(self, x: torch.Tensor, sigma: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._change(x, sigma, self.inner(x, sigma))

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        guided, uncond = guided_and_uncond(self.inner, x, sigma)  # type: ignore[arg-type]
        return self._change(x, sigma, guided), uncond

    @property
    def unet_calls(self) -> int:
        return int(getattr(self.inner, "unet_calls", 0)) + self._own_calls()

    def _own_calls(self) -> int:
        return 0


# ---------------------------------------------------------------------------- PAG


def value_passthrough(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention whose map is the identity: every query returns its own value (PAG's perturbation).
    q/k/v: (B, T, heads * d) -> v."""
    return v


def middle_self_attentions(unet: nn.Module) -> list[CrossAttention]:
    """The self-attention layers (``attn1``) of the UNet's middle block (SDXL: all 10 of its depth)."""
    middle = getattr(unet, "middle_block", None)
    if middle is None:
        raise ValueError(f"{type(unet).__name__} has no middle_block: Perturbed-Attention Guidance needs the "
                         "SD 1.x / 2.x / SDXL UNet")
    layers = [m.attn1 for m in middle.modules() if isinstance(getattr(m, "attn1", None), CrossAttention)]
    if not layers:
        raise ValueError("this UNet's middle block has no self-attention for Perturbed-Attention Guidance")
    return layers


@contextlib.contextmanager
def attention_replaced(layers: Sequence[CrossAttention],
                       attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
                       ) -> Iterator[None]:
    """``layers`` compute ``attend(q, k, v, heads)`` instead of attention for the block's duration."""
    before = [layer.attention_override for layer in layers]
    for layer in layers:
        layer.attention_override = attend
    try:
        yield
    finally:
        for layer, override in zip(layers, before):
            layer.attention_override = override


@dataclass(frozen=True)
class PerturbedAttention:
    """PAG at ``scale`` (0 = off)."""

    scale: float

    def wrap(self, denoiser: Denoiser, inputs: GuidanceInputs) -> Denoiser:
        if self.scale == 0:
            return denoiser
        return PerturbedAttentionDenoiser(denoiser, inputs, self.scale)


def _same(a: Sequence[Any] | None, b: Sequence[Any] | None) -> bool:
    """The same condition objects, in order."""
    return a is not None and b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


class PerturbedAttentionDenoiser(_Wrapper):
    """``inner``'s estimate + scale * (positive estimate - positive estimate with the middle block's
    self-attention as identity). The positive passes run through their own unguided denoiser (areas,
    masks, ControlNets and timestep ranges of the conditions apply as in the guided one)."""

    def __init__(self, inner: Denoiser, inputs: GuidanceInputs, scale: float) -> None:
        from sgm.sampling.guidance_extra import TimestepRangeDenoiser, has_timestep_ranges
        from sgm.sampling.guiders import GuidedDenoiser

        super().__init__(inner)
        self.scale, self.guided_is_cond = float(scale), inputs.guided_is_cond
        self.layers = middle_self_attentions(inputs.unet)
        kind = TimestepRangeDenoiser if has_timestep_ranges(inputs.positive) else GuidedDenoiser
        self.positive = kind(inputs.unet, inputs.model_sampling, list(inputs.positive), None, cfg=1.0,
                             inpaint_concat=inputs.inpaint_concat)

    def _change(self, x: torch.Tensor, sigma: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        cond = guided if self.guided_is_cond else self._positive_estimate(x, sigma)
        with attention_replaced(self.layers, value_passthrough):
            perturbed = self.positive(x, sigma)
        return guided + self.scale * (cond - perturbed)

    def _positive_estimate(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The positive prompt's estimate: the one the CFG denoiser inside just computed for this very
        (x, sigma) when it is a plain ``GuidedDenoiser`` with the same conditions, else a pass of its own."""
        from sgm.sampling.guiders import GuidedDenoiser

        inner: Any = self.inner
        while isinstance(inner, _Wrapper):
            inner = inner.inner
        last = getattr(inner, "last_cond", None) if type(inner) is GuidedDenoiser else None
        if (last is not None and last[0] is x and torch.equal(last[1], sigma)
                and _same(inner.positive, self.positive.positive)):
            return last[2]
        return self.positive(x, sigma)

    def _own_calls(self) -> int:
        return int(getattr(self.positive, "unet_calls", 0))


# ---------------------------------------------------------------------------- epsilon scaling


@dataclass(frozen=True)
class EpsilonScaling:
    """Exposure-bias correction by ``factor`` (lambda; 1 = off)."""

    factor: float

    def __post_init__(self) -> None:
        if self.factor <= 0:
            raise ValueError(f"epsilon scaling factor must be > 0, got {self.factor}")

    def wrap(self, denoiser: Denoiser, inputs: GuidanceInputs) -> Denoiser:
        return denoiser if self.factor == 1.0 else EpsilonScalingDenoiser(denoiser, self.factor)


class EpsilonScalingDenoiser(_Wrapper):
    """D = x - (x - D_inner) / lambda: the noise the estimate implies (x - D, in the sampler's
    variance-exploding x) shrunk by lambda."""

    def __init__(self, inner: Denoiser, factor: float) -> None:
        super().__init__(inner)
        self.factor = float(factor)

    def _change(self, x: torch.Tensor, sigma: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        return x - (x - guided) / self.factor


def apply_guidance_patches(denoiser: Denoiser, patches: Sequence[Any], inputs: GuidanceInputs) -> Denoiser:
    """``denoiser`` wrapped by each patch in turn (the first recorded is innermost)."""
    for patch in patches:
        denoiser = patch.wrap(denoiser, inputs)
    return denoiser
