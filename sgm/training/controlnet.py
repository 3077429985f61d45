"""ControlNet training on a frozen text-to-image model, and the edge-map position eval.

Zhang, Rao & Agrawala 2023 ("Adding Conditional Control to Text-to-Image Diffusion Models"):
the ControlNet is a trainable copy of the frozen UNet's encoder (``controlnet_from_unet``: the
UNet's weights, a fresh hint encoder, zero convolutions), so at step 0 the controlled UNet
computes exactly the base model. The loss is the base model's own diffusion loss
(``sgm.training.diffusion``: its schedule, prediction, latent scaling and weighting), with the
UNet called as ``unet(x_t, t, context, control=controlnet(x_t, hint, t, context))``; only the
ControlNet's parameters learn.

Hint: Canny edges (``sgm.data.image_ops.canny``, the Canny node's function) of the training
image, white on black, 3 channels in [0, 1]. The shapes palette has colour pairs of almost
equal luma (blue / purple differ by 3 %), so the thresholds are low (0.01, the Canny node's
minimum): the procedural images have no texture, so this adds no spurious edges.

Captions (:class:`ControlShapesDataset`): so that the edge map, not the text, decides where
the shape goes, a share of captions names a *different* position than the image
(``swap_position``), a share names none (``drop_position``), and a share is empty
(``caption_dropout``, the unconditional model for classifier-free guidance; the paper drops 50 %).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sgm.data import shapes
from sgm.data.datasets import VIRTUAL_LENGTH, ShapesDataset
from sgm.training.diffusion import DiffusionConfig, DiffusionTask, loss_weight, noised_batch

CANNY_LOW, CANNY_HIGH = 0.01, 0.01


def edge_hint(images: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> torch.Tensor:
    """Canny hint of images (B, 3, H, W) in [-1, 1] -> (B, 3, H, W) in {0, 1} (white edges on black)."""
    from sgm.data.image_ops import canny

    edges = canny(((images.float() + 1.0) / 2.0).permute(0, 2, 3, 1), low, high)  # (B, H, W)
    return edges[:, None].expand(-1, 3, -1, -1).contiguous()


def caption_without_position(spec: shapes.ShapeSpec) -> str:
    """"a small red circle on a blue background": the training caption minus its position phrase."""
    article = "an" if spec.background[0] in "aeiou" else "a"
    return f"a {spec.size} {spec.colour} {spec.shape} on {article} {spec.background} background"


def other_position(position: str, rng: np.random.Generator) -> str:
    """A grid position other than ``position``, uniformly."""
    others = [name for name in shapes.POSITIONS if name != position]
    return others[int(rng.integers(len(others)))]


@dataclass(frozen=True)
class CaptionMix:
    """Shares of training captions that are empty, name another position, or name none."""

    caption_dropout: float = 0.1
    swap_position: float = 0.5
    drop_position: float = 0.2

    def __post_init__(self) -> None:
        shares = (self.caption_dropout, self.swap_position, self.drop_position)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(f"caption shares must be >= 0 and sum to at most 1, got {shares}")

    def caption(self, spec: shapes.ShapeSpec, rng: np.random.Generator) -> str:
        draw = rng.random()
        if draw < self.caption_dropout:
            return ""
        draw -= self.caption_dropout
        if draw < self.swap_position:
            swapped = shapes.ShapeSpec(spec.colour, spec.shape, spec.size, other_position(spec.position, rng),
                                       spec.background)
            return swapped.caption()
        draw -= self.swap_position
        return caption_without_position(spec) if draw < self.drop_position else spec.caption()


class ControlShapesDataset(torch.utils.data.Dataset):
    """``ShapesDataset`` items with a Canny ``hint`` (3, H, W) and a mixed caption (:class:`CaptionMix`).

    Item ``i`` is a pure function of ``(seed, i)`` (the loop's exact resume holds).
    """

    def __init__(self, image_size: int = 64, *, seed: int = 0, mix: CaptionMix = CaptionMix()) -> None:
        self.shapes = ShapesDataset(image_size, seed=seed)
        self.seed, self.mix = seed, mix

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def __getitem__(self, index: int) -> dict[str, object]:
        item = self.shapes[index]
        spec, _ = self.shapes.spec(index)
        rng = np.random.default_rng([self.seed, index, 7])  # independent of the rendering stream
        image = item["image"]  # (3, H, W) in [-1, 1]
        return {"image": image, "hint": edge_hint(image[None])[0], "caption": self.mix.caption(spec, rng)}


class ControlNetTask(DiffusionTask):
    """The base model's diffusion loss through a frozen UNet steered by a trainable ControlNet.

    Captions arrive already mixed (the dataset), so ``config.caption_dropout`` should be 0.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, encode_text: Callable[[list[str]], torch.Tensor],
                 controlnet: nn.Module, config: DiffusionConfig, *, latent_size: int) -> None:
        super().__init__(unet, vae, None, config, train_text=False, latent_size=latent_size)  # type: ignore[arg-type]
        unet.requires_grad_(False).eval()
        self.controlnet = controlnet.train()
        self._encode_text = encode_text

    def modules(self) -> dict[str, nn.Module]:
        return {"controlnet": self.controlnet}

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"controlnet.{name}", p) for name, p in self.controlnet.named_parameters()]

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self._encode_text(captions)

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            x0 = self.vae.encode_posterior(batch["image"]).sample(generator).float() * self.config.scale_factor
        n = noised_batch(self.config, self.sampling, self.alphas_cumprod, x0, generator)
        context = self.encode_captions(list(batch["caption"]))
        control = self.controlnet(n.x_t, sampling_hint(batch["hint"], n.x_t), n.t, context)
        output = self.unet(n.x_t, n.t, context=context, control=control).float()
        per_sample = (output - n.target).pow(2).flatten(1).mean(1)  # (B,)
        loss = (loss_weight(self.config, n.alpha_bar) * per_sample).mean()
        return loss, {"mse": float(per_sample.detach().mean())}

    def sample(self, generator: torch.Generator) -> torch.Tensor | None:
        return None


def sampling_hint(hint: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The hint as the sampler hands it to a ControlNet for latents ``x`` (B, C, h, w): resized to
    (8h, 8w) like ``sgm.sampling.guiders`` does (8 image pixels per latent pixel, whatever the VAE)."""
    from sgm.nets.controlnet import resize_hint
    from sgm.sampling.guiders import HINT_SCALE

    return resize_hint(hint, x.shape[-2] * HINT_SCALE, x.shape[-1] * HINT_SCALE, x.shape[0])


def controlnet_state_dict(controlnet: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Bare cldm keys (``input_blocks.*``, ``zero_convs.N.0.*``, ``input_hint_block.*``, ...) in ``dtype``."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in controlnet.state_dict().items()}


def save_controlnet(path: str | Path, controlnet: nn.Module, *, unet_hints: dict[str, Any] | None = None,
                    base_model: str = "", training: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write a ControlNet in the ldm layout that ``load_control_file`` / ControlNetLoader read.

    ``unet_hints`` (e.g. ``{"num_head_channels": 32}``) go to ``latentflow.config`` metadata: head
    layout cannot be read from the weights' shapes.
    """
    from safetensors.torch import save_file

    config: dict[str, Any] = {"unet": dict(unet_hints or {})}
    if training:
        config["training"] = training
    metadata = {"latentflow.config": json.dumps(config), "latentflow.base_model": base_model,
                "latentflow.hint": f"canny low={CANNY_LOW} high={CANNY_HIGH}"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(controlnet_state_dict(controlnet, dtype), str(path), metadata=metadata)
    return path


# ------------------------------------------------------------------ position eval


@dataclass(frozen=True)
class PositionCase:
    """One eval image: the held-out spec whose edge map is the hint, and the prompt actually given."""

    spec: shapes.ShapeSpec
    prompt: str
    prompt_kind: str  # "swapped" (another position named) or "dropped" (no position named)


def position_cases(count: int = 96, seed: int = 0) -> list[PositionCase]:
    """For each of ``count`` held-out specs: a prompt naming another position, and one naming none."""
    rng = np.random.default_rng(seed)
    cases = []
    for spec in shapes.held_out_combos(count):
        swapped = shapes.ShapeSpec(spec.colour, spec.shape, spec.size, other_position(spec.position, rng),
                                   spec.background)
        cases.append(PositionCase(spec, swapped.caption(), "swapped"))
        cases.append(PositionCase(spec, caption_without_position(spec), "dropped"))
    return cases


@dataclass(frozen=True)
class PositionReport:
    """Share of images whose shape lands in the edge map's grid cell, per prompt kind."""

    accuracy: dict[str, float]  # "swapped", "dropped", "all"
    count: dict[str, int]
    empty_hints: int  # cases whose edge map has fewer than 5 edge pixels (nothing to follow)
    attributes: dict[str, float]  # over all cases: colour / shape / size / background read as the spec's


def controlled_generate(unet: nn.Module, vae: nn.Module, encode: Callable[[list[str]], torch.Tensor],
                        sampling: Any, prompts: list[str], hints: torch.Tensor | None,
                        controlnet: nn.Module | None, *, scale_factor: float, generator: torch.Generator,
                        latent_size: int, steps: int = 20, cfg: float = 4.0, strength: float = 1.0,
                        end_percent: float = 1.0) -> torch.Tensor:
    """Euler sampling (sgm_uniform) with classifier-free guidance; the ControlNet (if any) steers
    both the conditional and the unconditional half while sigma >= the sigma at ``end_percent`` of
    sampling, as ControlNetApplyAdvanced (start_percent 0) does.
    hints: (B, 3, H', W') in [0, 1] (resized as the sampler does). -> images (B, 3, H, W) in [-1, 1]."""
    from sgm.sampling.samplers import SAMPLERS
    from sgm.sampling.schedules import compute_sigmas
    from sgm.sampling.sigma_ops import percent_to_sigma

    lowest = percent_to_sigma(sampling, end_percent)

    context, uncond = encode(prompts), encode([""] * len(prompts))
    both = torch.cat([uncond, context])
    hint2 = torch.cat([hints, hints]) if hints is not None else None

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        scalings = sampling.scalings(sigma, x.ndim)
        x_in, sigma_in = torch.cat([x, x]), torch.cat([sigma, sigma])
        x_scaled = x_in * torch.cat([scalings.c_in, scalings.c_in])
        t = sampling.timestep(sigma_in)
        control = None
        if controlnet is not None and hint2 is not None and float(sigma.reshape(-1)[0]) >= lowest:
            control = controlnet(x_scaled, sampling_hint(hint2, x_scaled), t, both).scaled(strength)
        output = unet(x_scaled, t, context=both, control=control)
        denoised = sampling.denoised_from_output(x_in, sigma_in, output.float())
        uncond_d, cond_d = denoised.chunk(2)
        return uncond_d + cfg * (cond_d - uncond_d)

    sigmas = compute_sigmas("sgm_uniform", sampling, steps)
    noise = torch.randn((len(prompts), unet.in_channels, latent_size, latent_size), generator=generator)
    x = sampling.noise_scaling(sigmas[:1], noise, torch.zeros_like(noise), max_denoise=True)
    latents = SAMPLERS["euler"](denoiser, x, sigmas, generator=generator)
    return vae.decode(latents / scale_factor).float().clamp(-1, 1)


@torch.no_grad()
def evaluate_positions(checkpoint: Any, controlnet: nn.Module | None, cases: Sequence[PositionCase], *,
                       batch_size: int = 16, seed: int = 0, steps: int = 20, cfg: float = 4.0,
                       end_percent: float = 1.0, on_batch: Callable[[int, int], None] | None = None) -> PositionReport:
    """Generate each case's prompt with its spec's edge map (through ``controlnet``, or none for the
    baseline) and read the shape's grid cell back (``sgm.training.shapes_eval.analyse``).

    checkpoint: a ``sgm.io.checkpoints.Checkpoint`` (UNet, VAE, text encoder, schedule).
    The same seed gives the same initial noise with and without the ControlNet.
    """
    from sgm.training.shapes_eval import analyse

    image_size = 64
    latent_size = image_size // checkpoint.vae.downscale
    hits: dict[str, int] = {}
    totals: dict[str, int] = {}
    empty = 0
    attribute_hits = {"colour": 0, "shape": 0, "size": 0, "background": 0}
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(cases), batch_size):
        chunk = list(cases[start:start + batch_size])
        images = torch.stack([torch.from_numpy(shapes.render(c.spec, image_size)).permute(2, 0, 1).float()
                              for c in chunk]) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        hints = edge_hint(images)
        empty += int((hints[:, 0].flatten(1).sum(1) < 5).sum())
        out = controlled_generate(checkpoint.unet, checkpoint.vae, lambda p: checkpoint.encode_text(p)[0],
                                  checkpoint.model_sampling(), [c.prompt for c in chunk], hints, controlnet,
                                  scale_factor=checkpoint.scale_factor, generator=generator,
                                  latent_size=latent_size, steps=steps, cfg=cfg, end_percent=end_percent)
        pixels = ((out.permute(0, 2, 3, 1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        for case, image in zip(chunk, pixels):
            analysis = analyse(image)
            hit = analysis.position == case.spec.position
            for name in attribute_hits:
                attribute_hits[name] += int(getattr(analysis, name) == getattr(case.spec, name))
            for kind in (case.prompt_kind, "all"):
                hits[kind] = hits.get(kind, 0) + int(hit)
                totals[kind] = totals.get(kind, 0) + 1
        if on_batch is not None:
            on_batch(min(start + batch_size, len(cases)), len(cases))
    return PositionReport({k: hits[k] / totals[k] for k in totals}, totals, empty,
                          {k: v / len(cases) for k, v in attribute_hits.items()})
