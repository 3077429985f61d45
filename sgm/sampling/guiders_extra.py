"""Variants of classifier-free guidance: Perp-Neg, APG, TCFG, CFG-Zero*, CFG normalisation.

All work on denoised (x0) estimates D (B, C, H, W) of one model call, like ``GuidedDenoiser``:
plain CFG is D = D_u + s (D_c - D_u) (Ho & Salimans 2022, eq. 6). Each variant changes one part of
that combination:

* **pre-CFG** patches change the two branches before they are combined (APG, TCFG);
* **post-CFG** patches change the combined estimate (CFG-Zero*, CFG normalisation);
* a latent operation (``sgm.sampling.latent_operations``) reshapes the guidance D_c - D_u before CFG
  (LatentOperationCFG; with one branch it acts on D_c itself);
* Perp-Neg replaces the combination by one of three estimates (positive, negative, empty prompt).

A patch is a frozen value recorded on a MODEL (``ModelValue.guidance_patches``, beside the wrappers of
``sgm.sampling.guidance_patches``). When a run starts, its ``wrap`` attaches it to the CFG denoiser at the
core of that run's denoiser (:func:`attach`); a :class:`GuidanceRun` then applies the attached patches
at every call and holds what a patch remembers between calls (APG's running average), so no state
outlives the run. They act inside the CFG combination, so before any wrapper (PAG, epsilon scaling)
whatever the order the patches were added in. Projections are taken per batch item (each item is
guided as if sampled alone, whatever the batch); ComfyUI's Perp-Neg projects over the whole batch
at once, which is the same for a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from sgm.sampling.guidance_extra import TimestepRangeDenoiser, has_timestep_ranges
from sgm.sampling.guiders import GuidedDenoiser

NORM_EPS = 1e-8  # keeps the ratios finite where a norm vanishes


def _dims(t: torch.Tensor) -> list[int]:
    return list(range(1, t.ndim))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item inner product, (B, 1, 1, 1)."""
    return (a * b).sum(dim=_dims(a), keepdim=True)


def perp_neg(positive: torch.Tensor, negative: torch.Tensor, empty: torch.Tensor, cfg: float,
             neg_scale: float) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm").

    With p = D_pos - D_empty and n = D_neg - D_empty, only the part of n perpendicular to p is pushed
    away from, so a negative prompt that overlaps the positive one does not cancel it:
    D = D_empty + cfg (p - neg_scale (n - <n, p> / |p|^2 p)).
    """
    pos = positive - empty
    neg = negative - empty
    perp = neg - _dot(neg, pos) / _dot(pos, pos).clamp_min(NORM_EPS) * pos
    return empty + cfg * (pos - neg_scale * perp)


class _CfgPatch:
    """The ``wrap`` of the ``sgm.sampling.guidance_patches`` contract: attach to the run's CFG."""

    def wrap(self, denoiser: Any, inputs: Any) -> Any:
        return attach(denoiser, self)


@dataclass(frozen=True)
class APG(_CfgPatch):
    """Adaptive Projected Guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High
    Guidance Scales in Diffusion Models"), as ComfyUI's APG node applies it.

    The guidance g = D_c - D_u is averaged with momentum (a running sum g_t + momentum g_{t-1}, reset
    when sigma rises, i.e. a new run), rescaled to a norm of at most ``norm_threshold`` (0 = off), and
    split into parts parallel and orthogonal to D_c; the parallel part, the one that over-saturates,
    is weighted by ``eta``. The combined estimate is D_c + s g' (ComfyUI's convention: at eta 1 without
    threshold or momentum that is CFG at scale s + 1).
    """

    eta: float = 1.0
    norm_threshold: float = 5.0
    momentum: float = 0.0

    def pre_cfg(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cfg: float, memory: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        level = float(sigma.reshape(-1)[0])
        if memory.get("sigma") is not None and level > memory["sigma"]:
            memory.pop("average", None)
        memory["sigma"] = level
        if cfg == 0:  # CFG at scale 0 is the unconditional estimate, whatever the guidance
            return cond, uncond
        guidance = cond - uncond
        if self.momentum != 0:
            average = memory.get("average")
            guidance = guidance if average is None else self.momentum * average + guidance
            memory["average"] = guidance
        if self.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=_dims(guidance), keepdim=True)
            guidance = guidance * torch.clamp(self.norm_threshold / norm, max=1.0)
        unit = cond / cond.norm(p=2, dim=_dims(cond), keepdim=True).clamp_min(1e-12)
        parallel = _dot(guidance, unit) * unit
        modified = (guidance - parallel) + self.eta * parallel
        # A cond for which plain CFG u + s (c' - u) gives c + s g'.
        return uncond + modified + (cond - uncond) / cfg, uncond


@dataclass(frozen=True)
class TCFG(_CfgPatch):
    """Tangential damping CFG (Kwon et al. 2025, "TCFG: Tangential Damping Classifier-free Guidance").

    In the noise-like space e = x - D (a multiple of the score), the 2 x N matrix [e_u; e_c] of each item
    is split by its SVD; the unconditional e_u keeps only its component along the first right singular
    vector v_1 (the direction both branches share), dropping the tangential rest:
    e_u' = <e_u, v_1> v_1, D_u' = x - e_u'.
    """

    def pre_cfg(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cfg: float, memory: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        e_c = (x - cond).reshape(batch, 1, -1).float()
        e_u = (x - uncond).reshape(batch, 1, -1).float()
        _, _, vh = torch.linalg.svd(torch.cat([e_u, e_c], dim=1), full_matrices=False)  # vh (B, 2, N)
        v1 = vh[:, :1]  # (B, 1, N); its sign does not matter below
        damped = (e_u * v1).sum(dim=-1, keepdim=True) * v1
        return cond, x - damped.reshape_as(uncond).to(uncond.dtype)


@dataclass(frozen=True)
class CFGZeroStar(_CfgPatch):
    """CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching
    Models"): the unconditional branch is scaled by the optimised
    alpha = <e_c, e_u> / |e_u|^2 (per item, with e = x - D) before guiding: D = alpha D_u + s (D_c - alpha D_u).
    """

    def post_cfg(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 cfg: float, guided: torch.Tensor) -> torch.Tensor:
        e_c, e_u = x - cond, x - uncond
        alpha = _dot(e_c, e_u) / (_dot(e_u, e_u) + NORM_EPS)
        # = alpha D_u + s (D_c - alpha D_u) when ``guided`` is plain CFG; written as a correction of
        # ``guided`` so that it composes with what changed it before (RescaleCFG, another patch).
        return guided + (cfg - 1.0) * (1.0 - alpha) * uncond


@dataclass(frozen=True)
class CFGNorm(_CfgPatch):
    """CFG normalisation (ComfyUI's CFGNorm): where the guided estimate's norm over channels exceeds the
    conditional one's, it is scaled down to it, per pixel; then everything is scaled by ``strength``:
    D = strength min(1, |D_c|_C / |D|_C) D.
    """

    strength: float = 1.0

    def post_cfg(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                 cfg: float, guided: torch.Tensor) -> torch.Tensor:
        ratio = cond.norm(dim=1, keepdim=True) / (guided.norm(dim=1, keepdim=True) + NORM_EPS)
        return guided * ratio.clamp(0.0, 1.0) * self.strength


@dataclass(frozen=True, eq=False)
class PerpNeg:
    """Perp-Neg in place of CFG (:func:`perp_neg`); the empty prompt's estimate comes from one more
    unguided pass per step of ``empty`` (conditions as the text encoder gave them)."""

    empty: tuple[Any, ...]
    neg_scale: float = 1.0

    def wrap(self, denoiser: Any, inputs: Any) -> Any:
        return attach(denoiser, PerpNegCombine(_empty_denoiser(self.empty, inputs), self.neg_scale))


def _empty_denoiser(empty: Sequence[Any], inputs: Any) -> Any:
    """An unguided denoiser of the empty prompt beside the run's positive one: on the UNet's device, with
    the vector input of SDXL-type models (the positive's size features after the empty prompt's pooled
    text) or without one for the others."""
    device = next(inputs.unet.parameters()).device
    like = inputs.positive[0] if inputs.positive else None
    conditions = []
    for cond in empty:
        y = None
        if like is not None and like.y is not None:
            if cond.pooled is None:
                raise ValueError("Perp-Neg: the empty conditioning has no pooled text but this model needs it; "
                                 "encode the empty prompt with this model's text encoder")
            dim = cond.pooled.shape[-1]
            y = torch.cat([cond.pooled.to(like.y), like.y[:1, dim:].expand(cond.pooled.shape[0], -1)], dim=1)
        moved = {name: getattr(cond, name).to(device) for name in ("context", "pooled", "mask")
                 if getattr(cond, name) is not None}
        conditions.append(replace(cond, y=None if y is None else y.to(device), **moved))
    kind = TimestepRangeDenoiser if has_timestep_ranges(conditions) else GuidedDenoiser
    return kind(inputs.unet, inputs.model_sampling, conditions, None, cfg=1.0, inpaint_concat=inputs.inpaint_concat)


class PerpNegCombine:
    """The per-run side of :class:`PerpNeg`: replaces the CFG combination (it needs the negative
    branch even at cfg 1)."""

    replaces_cfg = True

    def __init__(self, empty: Any, neg_scale: float) -> None:
        self.empty, self.neg_scale = empty, float(neg_scale)

    def combine(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cfg: float) -> torch.Tensor:
        return perp_neg(cond, uncond, self.empty(x, sigma), cfg, self.neg_scale)


@dataclass(frozen=True, eq=False)
class LatentOperationCFG(_CfgPatch):
    """A latent operation (``sgm.sampling.latent_operations``, any ``op(latent) -> latent``) applied to the
    guidance before CFG, as ComfyUI's LatentApplyOperationCFG: D_c' = D_u + op(D_c - D_u), so the guided
    estimate is D_u + s op(D_c - D_u). Where only the positive branch is evaluated (cfg 1, or no negative),
    the operation acts on D_c itself (ComfyUI's missing branch is zeros).
    """

    operation: Any

    def pre_cfg(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cfg: float, memory: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return uncond + self.operation(cond - uncond), uncond

    def one_branch(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                   guided: torch.Tensor) -> torch.Tensor:
        """The result when CFG did not combine two branches (``guided`` is D_c): op(D_c), or, where a
        CFG++ sampler had the negative evaluated at cfg 1, D_u + op(D_c - D_u)."""
        if uncond is cond:
            return self.operation(guided)
        return uncond + self.operation(guided - uncond)


PRE_CFG = (APG, TCFG, LatentOperationCFG)
ONE_BRANCH = (LatentOperationCFG,)  # pre-CFG patches that also act when there is no combination
POST_CFG = (CFGZeroStar, CFGNorm)


class GuidanceRun:
    """The CFG variants attached to one sampling run's denoiser, in the order they were added.

    ``pre`` runs the pre-CFG patches (each sees the previous one's branches), ``combine`` the CFG
    combination (the last one that replaces it, else D_u + s (D_c - D_u)), ``post`` the post-CFG
    patches. One object per run: it keeps each patch's memory.
    """

    def __init__(self, patches: Sequence[Any]) -> None:
        self.patches = tuple(patches)
        self._memory: list[dict[str, Any]] = [{} for _ in self.patches]
        combiners = [p for p in self.patches if getattr(p, "replaces_cfg", False)]
        self._combiner = combiners[-1] if combiners else None
        self._pre_ran = False  # whether ``pre`` ran for the current call (else ``post`` sees one branch)

    def __bool__(self) -> bool:
        return bool(self.patches)

    @property
    def replaces_cfg(self) -> bool:
        """True when the combination is not CFG's: then the negative branch is needed at cfg 1 too."""
        return self._combiner is not None

    def pre(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            cfg: float) -> tuple[torch.Tensor, torch.Tensor]:
        self._pre_ran = True
        for patch, memory in zip(self.patches, self._memory):
            if isinstance(patch, PRE_CFG):
                cond, uncond = patch.pre_cfg(x, sigma, cond, uncond, cfg, memory)
        return cond, uncond

    def combine(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cfg: float) -> torch.Tensor:
        if self._combiner is not None:
            return self._combiner.combine(x, sigma, cond, uncond, cfg)
        return uncond + cfg * (cond - uncond)

    def post(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, cfg: float,
             guided: torch.Tensor) -> torch.Tensor:
        one_branch, self._pre_ran = not self._pre_ran, False
        for patch in self.patches:
            if one_branch and isinstance(patch, ONE_BRANCH):
                guided = patch.one_branch(x, sigma, cond, uncond, guided)
            if isinstance(patch, POST_CFG):
                guided = patch.post_cfg(x, sigma, cond, uncond, cfg, guided)
        return guided


def attach(denoiser: Any, patch: Any) -> Any:
    """Add ``patch`` to the CFG denoiser at the core of ``denoiser`` (inside any wrappers, which keep it
    as ``inner``) and return ``denoiser``. The core is the run's own object, made for this run by the
    sampling node; nothing outside the run sees the change."""
    core = denoiser
    while hasattr(core, "inner"):
        core = core.inner
    if not hasattr(core, "guidance"):
        raise ValueError(f"{type(patch).__name__} changes classifier-free guidance, which this guider "
                         f"({type(core).__name__}) does not use; use CFGGuider, KSampler or SamplerCustom")
    before = core.guidance.patches if core.guidance else ()
    core.guidance = GuidanceRun((*before, patch))
    return denoiser
