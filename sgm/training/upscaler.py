"""Train a small 2x upscaler (Real-ESRGAN's compact SRVGG network) on the shapes data.

Pairs are rendered shapes images (``sgm.data.shapes``) at twice the size and their box-filtered
half: the model learns to restore the edges that downscaling blurs, which is what a 64 x 64
image of the embedded model needs to become a sharp 128 x 128 one. The network is spandrel's
``SRVGGNetCompact`` with its original key names, so the file it is saved to loads by content
like any released Real-ESRGAN compact model (``sgm.io.upscalers``).

Quality is PSNR on held-out images (a seed training never draws), against bicubic upscaling
of the same low-resolution input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgm.data.shapes import held_out_combos, render, sample_spec

HELD_OUT_SEED = 7_700_001  # the evaluation images' jitter; training seeds start at 0


@dataclass(frozen=True)
class UpscalerConfig:
    scale: int = 2
    features: int = 24
    convs: int = 6
    image_size: int = 64  # low-resolution size of a whole rendered image
    crop: int = 32  # low-resolution crop trained on
    batch_size: int = 16
    lr: float = 2e-3
    pool: int = 1024  # rendered training images, cropped at random
    candidates: int = 2  # crops drawn per kept crop; the busiest (largest pixel std) are kept
    loss: str = "mse"  # "mse" (what PSNR measures) or "l1"
    seed: int = 0


@dataclass(frozen=True)
class UpscalerReport:
    steps: int
    seconds: float
    loss: float
    psnr_model: float
    psnr_bicubic: float
    held_out: int


def build_compact(config: UpscalerConfig) -> torch.nn.Module:
    """spandrel's SRVGGNetCompact (Real-ESRGAN's compact network, PReLU)."""
    from sgm.io.upscalers import import_spandrel

    import_spandrel()  # torchvision may be a stand-in (see there)
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=config.features, num_conv=config.convs,
                           upscale=config.scale, act_type="prelu")


def downscale(high: torch.Tensor, scale: int) -> torch.Tensor:
    """Box-filter downscale (B, C, H, W) -> (B, C, H/s, W/s): each pixel the mean of an s x s block."""
    return F.avg_pool2d(high, scale)


def bicubic(low: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline: bicubic upscaling (B, C, h, w) -> (B, C, h*s, w*s), clamped to [0, 1]."""
    return F.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1], over the whole batch: 10 log10(1 / MSE)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def render_batch(count: int, size: int, seed: int, held_out: bool = False) -> torch.Tensor:
    """``count`` shapes images (count, 3, size, size) in [0, 1]; held-out ones use the held-out
    attribute combinations and their own jitter seed, training ones exclude those combinations."""
    combos = held_out_combos()
    excluded = frozenset(combos)
    images = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        spec = combos[index % len(combos)] if held_out else sample_spec(rng, excluded)
        images.append(render(spec, size, rng))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def evaluate(model: torch.nn.Module, high: torch.Tensor, scale: int) -> tuple[float, float]:
    """(model PSNR, bicubic PSNR) on the high-resolution images ``high`` from their downscaled halves."""
    low = downscale(high, scale)
    with torch.no_grad():
        restored = model(low).clamp(0, 1)
    return psnr(restored, high), psnr(bicubic(low, scale), high)


def _crops(pool: torch.Tensor, config: UpscalerConfig, generator: torch.Generator) -> torch.Tensor:
    """A batch of high-resolution crops (B, 3, 2c, 2c) on the low-resolution grid (so a crop's half is a
    crop of the image's half). Most of a shapes image is flat colour; of ``candidates`` random crops
    per item the busiest are kept, so that edges make up more of each batch."""
    s, crop_high, size = config.scale, config.crop * config.scale, pool.shape[-1]
    count = config.batch_size * config.candidates
    picks = torch.randint(len(pool), (count,), generator=generator)
    ys = torch.randint(0, (size - crop_high) // s + 1, (count,), generator=generator) * s
    xs = torch.randint(0, (size - crop_high) // s + 1, (count,), generator=generator) * s
    crops = torch.stack([pool[i, :, y:y + crop_high, x:x + crop_high]
                         for i, y, x in zip(picks.tolist(), ys.tolist(), xs.tolist())])
    crops = crops[crops.flatten(1).std(1).topk(config.batch_size).indices]
    # Colours and orientation augmented: channels permuted, flipped; the edges stay edges, and
    # colour pairs the palette never has (and the held-out pairs) are seen in some permutation.
    permutations = torch.stack([torch.randperm(3, generator=generator) for _ in range(len(crops))])
    crops = torch.gather(crops, 1, permutations[:, :, None, None].expand_as(crops))
    flips = torch.rand(len(crops), 2, generator=generator) < 0.5
    crops = torch.where(flips[:, 0, None, None, None], crops.flip(-1), crops)
    return torch.where(flips[:, 1, None, None, None], crops.flip(-2), crops)


def train_upscaler(config: UpscalerConfig, *, seconds: float, max_steps: int | None = None,
                   held_out: int = 64, on_progress: Callable[[int, float, float], None] | None = None,
                   ) -> tuple[torch.nn.Module, UpscalerReport]:
    """Train for ``seconds`` of wall time (or ``max_steps``) with ``config.loss`` and a cosine learning rate
    over the time budget; returns the model (eval mode, fp32) and its held-out report.
    ``on_progress(step, loss, elapsed_seconds)`` is called every 50 steps."""
    torch.manual_seed(config.seed)
    model = build_compact(config)
    high_size = config.image_size * config.scale
    pool = render_batch(config.pool, high_size, config.seed)  # (N, 3, 2h, 2w)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    started, step, loss_ema = time.perf_counter(), 0, float("nan")
    model.train()
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or (max_steps is not None and step >= max_steps):
            break
        progress = max(elapsed / seconds, step / max_steps if max_steps else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        high = _crops(pool, config, generator)
        low = downscale(high, config.scale)
        restored = model(low)
        loss = F.mse_loss(restored, high) if config.loss == "mse" else F.l1_loss(restored, high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_ema = loss.item() if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * loss.item()
        if on_progress is not None and step % 50 == 0:
            on_progress(step, loss_ema, time.perf_counter() - started)
    model.eval().requires_grad_(False)
    test = render_batch(held_out, high_size, HELD_OUT_SEED, held_out=True)
    psnr_model, psnr_bicubic = evaluate(model, test, config.scale)
    return model, UpscalerReport(steps=step, seconds=time.perf_counter() - started, loss=loss_ema,
                                 psnr_model=psnr_model, psnr_bicubic=psnr_bicubic, held_out=held_out)


def save_upscaler(model: torch.nn.Module, path: str | Path, report: UpscalerReport, config: UpscalerConfig) -> Path:
    """The state dict with its original keys (``body.N.weight``) as safetensors, the report in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "latentflow.kind": "upscale_model", "latentflow.architecture": "RealESRGAN Compact (SRVGGNetCompact)",
        "latentflow.scale": str(config.scale), "latentflow.trained_on": "shapes (box-downscaled 2x)",
        "latentflow.steps": str(report.steps), "latentflow.held_out_images": str(report.held_out),
        "latentflow.psnr_model_db": f"{report.psnr_model:.2f}",
        "latentflow.psnr_bicubic_db": f"{report.psnr_bicubic:.2f}",
    }
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path
