"""Guiders: a UNet plus conditioning -> a denoiser ``model(x, sigma) -> denoised``.

``GuidedDenoiser`` is what samplers call. It applies the model's scalings (sgm's
``Denoiser``), evaluates every positive (and, for CFG, negative) condition, combines
conditions that cover areas / masks / strengths, and mixes cond and uncond by
classifier-free guidance (Ho & Salimans 2022, eq. 6):

    D = D_uncond + cfg * (D_cond - D_uncond)

in denoised space, which equals CFG on eps or v because D is affine in the network output
with the same coefficients for both branches. cfg == 1 (or no negative) skips the uncond
pass entirely. Conditions whose inputs have the same shapes go through the UNet as one
batch (cond and uncond in a single call in the common case); others are run in chunks.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sgm.nets.controlnet import ControlLink, resize_hint
from sgm.nets.gligen import gligen_applied
from sgm.nets.unet import ControlResiduals
from sgm.text.conditioning import Area, Condition
from sgm.sampling.denoisers import ModelSampling
from sgm.sampling.sigma_ops import percent_to_sigma


HINT_SCALE = 8  # image pixels per latent pixel (the VAE's downscale of SD 1.x / 2.x / SDXL)


@dataclass(frozen=True)
class _Job:
    """One condition's UNet evaluation: which branch, where, with what inputs."""

    branch: int  # 0 = positive, 1 = negative
    rows: slice
    cols: slice
    context: torch.Tensor | None  # (B, T, C)
    y: torch.Tensor | None  # (B, adm) or (B,)
    weight: torch.Tensor  # (B or 1, 1, h, w) combination weight (strength x mask)
    masked: bool = False  # weight varies per pixel (else it is the scalar ``strength``)
    strength: float = 1.0
    control: ControlLink | None = None  # the condition's ControlNet / T2I-Adapter chain
    gligen: tuple | None = None  # the condition's GLIGEN (model, boxes) (``sgm.nets.gligen``)

    def batch_key(self) -> tuple[object, ...]:
        """Jobs with equal keys can share one UNet call (concatenated along the batch)."""
        return (
            self.rows.start, self.rows.stop, self.cols.start, self.cols.stop,
            None if self.context is None else tuple(self.context.shape[1:]),
            None if self.y is None else tuple(self.y.shape[1:]),
            # Only jobs with the very same control chain share a call (its residuals are batched).
            None if self.control is None else id(self.control),
        )


def _expand_batch(t: torch.Tensor | None, batch: int, what: str) -> torch.Tensor | None:
    if t is None or t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(
        f"condition {what} has batch {t.shape[0]} but the latent batch is {batch}; "
        "encode one prompt (batch 1, broadcast) or one per latent"
    )


def _region(area: Area | None, height: int, width: int) -> tuple[slice, slice]:
    """Latent-pixel slices of an area, clipped to the latent; whole latent for None."""
    if area is None:
        return slice(0, height), slice(0, width)
    y0, x0 = max(area.y, 0), max(area.x, 0)
    y1, x1 = min(area.y + area.height, height), min(area.x + area.width, width)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(
            f"condition area {area} lies outside the {width}x{height} latent (areas are in "
            "latent pixels, 1/8 of the image size)"
        )
    return slice(y0, y1), slice(x0, x1)


def _mask_weight(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B or 1, H', W') or (H', W') mask -> (B or 1, 1, height, width), resized bilinearly."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"condition mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    mask = mask[:, None].float()
    if mask.shape[-2:] != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    return mask


def make_inpaint_concat(mask: torch.Tensor, masked_latent: torch.Tensor) -> torch.Tensor:
    """The 5 extra input channels of a 9-channel inpainting UNet: [mask, masked-image latent].

    mask: (B or 1, 1, H, W) or (B, H, W), 1 = repaint, at latent or image resolution.
    masked_latent: (B, 4, h, w) latent of the image with the repaint region blanked.
    Returns (B, 5, h, w), the order of SD-inpainting (ldm's c_concat and diffusers).
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    mask = mask.to(masked_latent)
    if mask.shape[-2:] != masked_latent.shape[-2:]:
        mask = F.interpolate(mask, size=masked_latent.shape[-2:], mode="bilinear", align_corners=False)
    mask = _expand_batch(mask, masked_latent.shape[0], "inpaint mask")
    assert mask is not None
    return torch.cat([mask, masked_latent], dim=1)


def apply_control(
    condition_lists: Sequence[Sequence[Condition]], model: nn.Module, hint: torch.Tensor, strength: float = 1.0,
    start: float = 0.0, end: float = 1.0,
) -> list[list[Condition]]:
    """Attach a control (ControlNet / T2I-Adapter ``model`` with its hint image (B, C, H, W) in
    [0, 1]) to every condition of each list, after any control a condition already has.

    Conditions whose previous chain is the same get one shared ``ControlLink``, so a positive and
    a negative prompt controlled alike are still evaluated in one batched call. Strength 0 leaves
    the conditions as they are. start / end: fractions of sampling (0 = pure noise, 1 = done).
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"control start ({start}) and end ({end}) must satisfy 0 <= start <= end <= 1")
    if strength == 0:
        return [list(conditions) for conditions in condition_lists]
    links: dict[int, ControlLink] = {}
    out = []
    for conditions in condition_lists:
        applied = []
        for cond in conditions:
            previous = cond.control
            if id(previous) not in links:
                links[id(previous)] = ControlLink(model, hint, float(strength), float(start), float(end), previous)
            applied.append(cond.with_(control=links[id(previous)]))
        out.append(applied)
    return out


def rescale_cfg_v(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, guided: torch.Tensor,
                  phi: float) -> torch.Tensor:
    """ComfyUI's RescaleCFG: Lin et al. 2024, eq. 15-16, in the v-like space of the VE latent
    whatever the model predicts.

    With x = x_t (VE), s = sqrt(sigma^2 + 1): u(D) = (x / s^2 - D) s / sigma, an affine map of the
    denoised estimate D (so CFG commutes with it); the guided u is rescaled to the std of the
    cond u, mixed by phi, and mapped back: D = x / s^2 - u sigma / s.
    """
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x)  # (B, 1, 1, 1)
    s = (sigma**2 + 1).sqrt()
    base = x / s**2

    def to_u(denoised: torch.Tensor) -> torch.Tensor:
        return (base - denoised) * s / sigma

    u_cond, u_cfg = to_u(cond), to_u(guided)
    dims = list(range(1, x.ndim))
    rescaled = u_cfg * (u_cond.std(dim=dims, keepdim=True) / u_cfg.std(dim=dims, keepdim=True))
    return base - (phi * rescaled + (1 - phi) * u_cfg) * sigma / s


class GuidanceHook(Protocol):
    """Changes to CFG attached to a run (``sgm.sampling.guiders_extra.GuidanceRun``): the branches before
    the combination, the combination itself, the guided estimate after it; all (B, C, H, W)."""

    replaces_cfg: bool

    def __bool__(self) -> bool: ...

    def pre(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            cfg: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def combine(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                cfg: float) -> torch.Tensor: ...

    def post(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, cfg: float,
             guided: torch.Tensor) -> torch.Tensor: ...


class GuidedDenoiser:
    """UNet + model sampling + conditions -> ``model(x (B,C,H,W), sigma (B,)) -> denoised``.

    positive / negative: lists of ``Condition``; an empty positive list runs the UNet
    without conditioning (unconditional models). ``guidance_rescale`` (phi) applies Lin et
    al. 2024, eq. 15-16 in the network's output space (eps or v). ``inpaint_concat``
    (B or 1, 5, H, W) is appended to the UNet input for 9-channel inpainting models.
    ``batch_conds=False`` forces one UNet call per condition (useful to bound memory).
    ``guidance`` (a ``sgm.sampling.guiders_extra.GuidanceRun``) changes the two branches before CFG,
    the combination (Perp-Neg) and the guided estimate after it (APG, TCFG, CFG-Zero*, CFGNorm).
    ``unet_calls`` counts UNet forward calls (for tests and benchmarks).
    A condition's ``control`` chain (``apply_control``) is evaluated at every UNet call on the
    same batched inputs (without inpainting channels) and its residuals go into the UNet.

    ``denoise_with_uncond(x, sigma)`` returns ``(guided, uncond)``: the result of a call
    and the unconditional (negative) branch's x0 estimate, which CFG++ samplers re-noise
    with (``sgm.sampling.sampler_common.UncondDenoiser``). It evaluates the negative
    branch even at cfg == 1 (CFG++ at scale 1 still takes its noise from the
    unconditional branch); without a negative, ``uncond`` is the positive branch.
    """

    def __init__(
        self,
        unet: nn.Module,
        model_sampling: ModelSampling,
        positive: Sequence[Condition],
        negative: Sequence[Condition] | None = None,
        cfg: float = 1.0,
        guidance_rescale: float = 0.0,
        inpaint_concat: torch.Tensor | None = None,
        *,
        batch_conds: bool = True,
        cfg_rescale: float = 0.0,
        guidance: GuidanceHook | None = None,
    ) -> None:
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        if not 0.0 <= cfg_rescale <= 1.0:
            raise ValueError(f"cfg_rescale must be in [0, 1], got {cfg_rescale}")
        self.use_cfg = cfg != 1.0 and negative is not None
        if cfg != 1.0 and not negative:
            raise ValueError(
                f"cfg={cfg} needs negative conditioning (e.g. the encoded empty prompt); "
                "pass negative=[...] or use cfg=1.0 to sample without guidance"
            )
        in_channels = getattr(unet, "in_channels", None)
        extra = 0 if inpaint_concat is None else inpaint_concat.shape[1]
        if in_channels is not None and in_channels == 9 and inpaint_concat is None:
            raise ValueError(
                "this is a 9-channel inpainting UNet: pass inpaint_concat="
                "make_inpaint_concat(mask, masked_image_latent) (use a regular checkpoint for txt2img)"
            )
        self.unet = unet
        self.model_sampling = model_sampling
        self.positive = list(positive)
        self.negative = list(negative) if negative is not None else None
        self.cfg = float(cfg)
        self.guidance_rescale = float(guidance_rescale)
        self.cfg_rescale = float(cfg_rescale)
        self.guidance = guidance  # CFG variants (``sgm.sampling.guiders_extra``): pre / post the combination
        self.inpaint_concat = inpaint_concat
        self.batch_conds = batch_conds
        self.unet_calls = 0
        self._control_cache: dict[tuple[object, ...], object] = {}  # resized hints, T2I-Adapter features
        self._expected_in = None if in_channels is None else in_channels - extra

    # ------------------------------------------------------------------ jobs

    def _n_branches(self, with_uncond: bool) -> int:
        """2 when the negative branch is evaluated (CFG, or asked for by a CFG++ sampler)."""
        return 2 if (self.use_cfg or with_uncond or self._replaces_cfg()) and self.negative else 1

    def _jobs(self, x: torch.Tensor, with_uncond: bool = False) -> list[_Job]:
        batch, _, height, width = x.shape
        branches = [self.positive] + ([self.negative] if self._n_branches(with_uncond) == 2 else [])
        jobs = []
        for branch, conditions in enumerate(branches):
            if not conditions:  # unconditional model
                full = slice(0, height), slice(0, width)
                jobs.append(_Job(branch, *full, None, None, x.new_ones(1, 1, 1, 1)))  # strength 1
                continue
            for cond in conditions:
                rows, cols = _region(cond.area, height, width)
                weight = x.new_full((1, 1, 1, 1), float(cond.strength))
                if cond.mask is not None:
                    mask = _mask_weight(cond.mask, height, width).to(x)
                    weight = weight * mask[:, :, rows, cols]
                jobs.append(_Job(
                    branch, rows, cols,
                    _expand_batch(cond.context, batch, "context"),
                    _expand_batch(cond.y, batch, "y (pooled/vector conditioning)"),
                    weight,
                    masked=cond.mask is not None,
                    strength=float(cond.strength),
                    control=cond.control,
                    gligen=cond.gligen,
                ))
        return jobs

    def _run_unet(
        self, jobs: list[_Job], x_in: torch.Tensor, timestep: torch.Tensor, sigma: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """One UNet call for all ``jobs`` (same batch key): their outputs, in order."""
        def crop(t: torch.Tensor, job: _Job) -> torch.Tensor:
            return t[:, :, job.rows, job.cols]

        inputs = [crop(x_in, job) for job in jobs]
        control = None
        if jobs[0].control is not None:
            assert sigma is not None
            # The control model reads the latent without the inpainting channels.
            control = self._control(jobs, torch.cat(inputs), timestep.repeat(len(jobs)), sigma, x_in.shape)
        if self.inpaint_concat is not None:
            concat = _expand_batch(self.inpaint_concat.to(x_in), x_in.shape[0], "inpaint_concat")
            assert concat is not None
            inputs = [torch.cat([inp, crop(concat, job)], dim=1) for inp, job in zip(inputs, jobs)]
        contexts = [job.context for job in jobs]
        ys = [job.y for job in jobs]
        context = None if contexts[0] is None else torch.cat(contexts)  # type: ignore[arg-type]
        y = None if ys[0] is None else torch.cat(ys)  # type: ignore[arg-type]
        extra = {} if control is None else {"control": control}
        with self._grounding(jobs, x_in.shape):
            out = self.unet(torch.cat(inputs), timestep.repeat(len(jobs)), context=context, y=y, **extra)
        self.unet_calls += 1
        return list(out.chunk(len(jobs)))

    def _grounding(self, jobs: list[_Job], full_shape: torch.Size) -> ContextManager[None]:
        """GLIGEN's fusers for one UNet call: grounded rows get their boxes' tokens, the other rows
        (e.g. the uncond prompt batched with them) pass through unchanged."""
        grounded = [job for job in jobs if job.gligen is not None]
        if not grounded:
            return nullcontext()
        model = grounded[0].gligen[0]  # type: ignore[index]
        if any(job.gligen[0] is not model for job in grounded):  # type: ignore[index]
            raise ValueError("conditions of one sampling use two different GLIGEN models; use one GLIGEN model")
        objs, gates = [], []
        for job in jobs:
            batch = job.context.shape[0] if job.context is not None else full_shape[0]
            if job.gligen is None:
                objs.append(None)
                gates.append(torch.zeros(batch))
                continue
            key = ("gligen", id(job.gligen), full_shape[-2], full_shape[-1], batch)
            if key not in self._control_cache:  # the tokens depend on the boxes only: once per sampling
                self._control_cache[key] = model.objects(job.gligen[1], full_shape[-2], full_shape[-1], batch)
            objs.append(self._control_cache[key])
            gates.append(torch.ones(batch))
        template = next(o for o in objs if o is not None)
        rows = torch.cat([o if o is not None else template.new_zeros(g.shape[0], *template.shape[1:])
                          for o, g in zip(objs, gates)])
        return gligen_applied(self.unet, model, rows, torch.cat(gates))

    def _control(self, jobs: list[_Job], x: torch.Tensor, timestep: torch.Tensor, sigma: torch.Tensor,
                 full_shape: torch.Size) -> ControlResiduals | None:
        """The summed residuals of the jobs' (shared) control chain for one UNet call.

        A link acts while sigma lies in its [start, end] window (fractions of sampling turned into
        sigmas by the model's timesteps, ``percent_to_sigma``); its residuals are scaled by its
        strength. x: (N*B, C, h, w) the batched UNet input, jobs in order, B rows each.
        """
        chain = jobs[0].control.chain()  # type: ignore[union-attr]
        s = float(sigma.reshape(-1)[0])
        context = [job.context for job in jobs]
        ys = [job.y for job in jobs]
        total: ControlResiduals | None = None
        for link in chain:
            high = percent_to_sigma(self.model_sampling, link.start)
            low = percent_to_sigma(self.model_sampling, link.end)
            if not low <= s <= high or link.strength == 0:
                continue
            hints = [self._hint(link, job, full_shape, x) for job in jobs]
            model = self._control_model(link)
            if getattr(model, "depends_on_input", True):
                residuals = model.residuals(
                    x, torch.cat(hints), timestep, None if context[0] is None else torch.cat(context),  # type: ignore[arg-type]
                    None if ys[0] is None else torch.cat(ys))  # type: ignore[arg-type]
            else:  # T2I-Adapter: the hint alone decides; once per hint and region
                parts = []
                for job, hint in zip(jobs, hints):
                    key = (id(link), "features", job.rows.start, job.rows.stop, job.cols.start, job.cols.stop,
                           tuple(hint.shape), hint.device, x.dtype)
                    if key not in self._control_cache:
                        self._control_cache[key] = model.residuals(x[:0], hint, timestep[:0], None, None)
                    parts.append(self._control_cache[key])
                residuals = ControlResiduals(
                    inputs=tuple(None if p[0] is None else torch.cat(p)  # type: ignore[misc]
                                 for p in zip(*(part.inputs for part in parts))))
            residuals = residuals.scaled(link.strength)
            total = residuals if total is None else total + residuals
        return total

    def _control_model(self, link: ControlLink) -> nn.Module:
        """The link's control model; a control-LoRA (``for_unet``) is completed by this guider's UNet,
        once per sampling (the UNet's weights are those being sampled with, LoRAs included)."""
        model = link.model
        if not hasattr(model, "for_unet"):
            return model
        key = (id(model), "for_unet")
        if key not in self._control_cache:
            self._control_cache[key] = model.for_unet(self.unet)
        return self._control_cache[key]  # type: ignore[return-value]

    def _hint(self, link: ControlLink, job: _Job, full_shape: torch.Size, x: torch.Tensor) -> torch.Tensor:
        """The link's hint for one job: resized to the whole image, cropped to the job's region."""
        batch, _, height, width = full_shape
        key = (id(link), "hint", height, width, batch, x.device)
        if key not in self._control_cache:
            # The hint is given in image pixels: ``HINT_SCALE`` per latent pixel.
            self._control_cache[key] = resize_hint(link.hint.to(x.device), height * HINT_SCALE, width * HINT_SCALE,
                                                   batch)
        hint = self._control_cache[key]
        rows = slice(job.rows.start * HINT_SCALE, job.rows.stop * HINT_SCALE)
        cols = slice(job.cols.start * HINT_SCALE, job.cols.stop * HINT_SCALE)
        return hint[:, :, rows, cols]

    # ------------------------------------------------------------------ call

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._denoise(x, sigma, with_uncond=False)[0]

    def denoise_with_uncond(
        self, x: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided denoised, unconditional denoised) (B, C, H, W) each, from one evaluation."""
        return self._denoise(x, sigma, with_uncond=True)

    def _denoise(
        self, x: torch.Tensor, sigma: torch.Tensor, with_uncond: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._expected_in is not None and x.shape[1] != self._expected_in:
            raise ValueError(
                f"latent has {x.shape[1]} channels but the UNet expects {self._expected_in} "
                f"(+ {0 if self.inpaint_concat is None else self.inpaint_concat.shape[1]} inpaint channels)"
            )
        ms = self.model_sampling
        scal = ms.scalings(sigma, x.ndim)  # (B, 1, 1, 1) each
        x_in = x * scal.c_in
        timestep = ms.timestep(sigma)
        jobs = self._jobs(x, with_uncond)

        groups: dict[tuple[object, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            key = job.batch_key() if self.batch_conds else (i,)
            groups.setdefault(key, []).append(i)
        outputs: list[torch.Tensor | None] = [None] * len(jobs)
        for indices in groups.values():
            for i, out in zip(indices, self._run_unet([jobs[i] for i in indices], x_in, timestep, sigma)):
                outputs[i] = out

        n_branches = self._n_branches(with_uncond)
        full = (slice(0, x.shape[2]), slice(0, x.shape[3]))
        per_branch = [[j for j in jobs if j.branch == b] for b in range(n_branches)]
        if all(
            len(js) == 1 and (js[0].rows, js[0].cols) == full and not js[0].masked
            and js[0].strength > 0 for js in per_branch
        ):
            # Fast path (one full-frame condition per branch): the weighted average is the
            # denoised estimate itself; skip the accumulation buffers.
            results = [scal.c_skip * x + scal.c_out * out for out in outputs]  # type: ignore[operator]
            return self._guide(x, sigma, results)
        # Weighted average of overlapping conditions. numer/denom are fresh local buffers,
        # so accumulating into them in place never touches a caller's tensor.
        numer = [torch.zeros_like(x) for _ in range(n_branches)]  # (B, C, H, W)
        denom = [x.new_zeros(x.shape[0], 1, *x.shape[2:]) for _ in range(n_branches)]  # (B, 1, H, W)
        for job, out in zip(jobs, outputs):
            assert out is not None
            region = (slice(None), slice(None), job.rows, job.cols)
            denoised = scal.c_skip * x[region] + scal.c_out * out  # (B, C, h, w)
            numer[job.branch][region] += denoised * job.weight
            denom[job.branch][region] += job.weight
        results = []
        for branch in range(n_branches):
            if torch.any(denom[branch] <= 0):
                raise ValueError(
                    f"some latent pixels are covered by no {'positive' if branch == 0 else 'negative'} "
                    "condition (areas/masks/strength 0 leave gaps); add a full-frame condition"
                )
            results.append(numer[branch] / denom[branch])
        return self._guide(x, sigma, results)

    def _guide(
        self, x: torch.Tensor, sigma: torch.Tensor, results: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CFG (Ho & Salimans 2022, eq. 6) on [cond] or [cond, uncond] denoised estimates.

        Returns (guided, uncond); uncond is the cond estimate when there is one branch.
        """
        cond, uncond = results if len(results) == 2 else (results[0], results[0])
        # The positive prompt's own estimate at this (x, sigma), for wrappers that need it too (PAG).
        self.last_cond = (x, sigma, cond)
        guidance = self.guidance
        if len(results) == 1 or not (self.use_cfg or self._replaces_cfg()):
            # One branch, or cfg == 1 with the negative evaluated only for a CFG++ sampler.
            return (guidance.post(x, sigma, cond, uncond, self.cfg, cond) if guidance else cond), uncond
        if guidance:
            cond, uncond = guidance.pre(x, sigma, cond, uncond, self.cfg)
            guided = guidance.combine(x, sigma, cond, uncond, self.cfg)
        else:
            guided = uncond + self.cfg * (cond - uncond)
        if self.guidance_rescale > 0:
            guided = self._rescale(x, sigma, cond, guided)
        if self.cfg_rescale > 0:
            guided = rescale_cfg_v(x, sigma, cond, guided, self.cfg_rescale)
        if guidance:
            guided = guidance.post(x, sigma, cond, uncond, self.cfg, guided)
        return guided, uncond

    def _replaces_cfg(self) -> bool:
        """An attached guidance replaces CFG's combination (Perp-Neg): the negative is needed at cfg 1 too."""
        return bool(self.guidance and self.guidance.replaces_cfg)

    def _rescale(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, guided: torch.Tensor
    ) -> torch.Tensor:
        """Lin et al. 2024, eq. 15-16: match the guided output's std to the cond output's."""
        ms = self.model_sampling
        out_cond = ms.output_from_denoised(x, sigma, cond)
        out_cfg = ms.output_from_denoised(x, sigma, guided)
        dims = list(range(1, x.ndim))
        rescaled = out_cfg * (out_cond.std(dim=dims, keepdim=True) / out_cfg.std(dim=dims, keepdim=True))
        phi = self.guidance_rescale
        return ms.denoised_from_output(x, sigma, phi * rescaled + (1 - phi) * out_cfg)

