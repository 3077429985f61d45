"""Reading a shapes image back into its attributes, and the held-out caption eval.

The analyser is deterministic and knows the renderer's geometry (:mod:`sgm.data.shapes`):

1. background: the palette colour nearest the median of the 2-pixel border;
2. foreground: pixels farther than ``FOREGROUND_DISTANCE`` from that background colour;
   shape colour: the (non-background) palette colour nearest their median;
3. shape mask: foreground pixels whose nearest palette colour is the shape colour;
4. shape type: for each type, the rendered template whose radius matches the mask's area
   and whose centroid matches the mask's centroid; the best intersection-over-union wins;
5. size: that template's 2r against the midpoints between the three nominal sizes;
   position: its centre's third of the frame in each axis.

An image with no foreground reports ``None`` for the shape's attributes, which scores as
wrong. Works at any square size (geometry scales with ``image_size / 64``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sgm.data import shapes

FOREGROUND_DISTANCE = 60.0  # RGB distance; the closest palette pair is ~105 apart
MIN_SHAPE_PIXELS = 4  # fewer mask pixels than this: no shape was drawn
_PALETTE_NAMES = list(shapes.COLOURS)
_PALETTE = np.asarray([shapes.COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float32)  # (K, 3)
_SIZE_NAMES = list(shapes.SIZES)
# Box side thresholds (64-pixel scale): midpoints between the nominal 2r of adjacent sizes.
_SIZE_THRESHOLDS = [
    (2 * shapes.SIZES[a] + 2 * shapes.SIZES[b]) / 2 for a, b in zip(_SIZE_NAMES, _SIZE_NAMES[1:])
]
ATTRIBUTES = ("colour", "shape", "size", "position", "background")


@dataclass(frozen=True)
class Analysis:
    """What the analyser read from an image (None where nothing could be read)."""

    background: str
    colour: str | None
    shape: str | None
    size: str | None
    position: str | None
    box: tuple[float, float, float, float] | None  # fitted template (left, top, right, bottom)

    def matches(self, spec: shapes.ShapeSpec) -> dict[str, bool]:
        """Per attribute, whether this analysis agrees with ``spec``."""
        return {name: getattr(self, name) == getattr(spec, name) for name in ATTRIBUTES}


def _nearest_colour(rgb: np.ndarray, exclude: str | None = None) -> str:
    distances = np.linalg.norm(_PALETTE - rgb[None].astype(np.float32), axis=1)
    if exclude is not None:
        distances[_PALETTE_NAMES.index(exclude)] = np.inf
    return _PALETTE_NAMES[int(np.argmin(distances))]


def _nearest_index_map(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) index of the nearest palette colour."""
    distances = np.linalg.norm(image[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, K)
    return np.argmin(distances, axis=-1)


@lru_cache(maxsize=1)
def _shape_constants() -> dict[str, tuple[float, float, float]]:
    """Per shape: area / r**2 and the centroid's offset from the box centre / r (x, y)."""
    radius, centre = 16.0, 32.0
    constants = {}
    for shape in shapes.SHAPES:
        coverage = shapes.shape_coverage(shape, shapes.Placement(centre, centre, radius), 64)
        ys, xs = np.mgrid[0:64, 0:64] + 0.5  # pixel centres
        area = coverage.sum()
        constants[shape] = (
            float(area / radius**2),
            float(((coverage * xs).sum() / area - centre) / radius),
            float(((coverage * ys).sum() / area - centre) / radius),
        )
    return constants


def _fit_shape(mask: np.ndarray) -> tuple[str, shapes.Placement]:
    """The template (shape, centre, radius) with the best IoU with ``mask``.

    Each hypothesis takes its radius from the mask's area and its centre from the mask's
    centroid: both are robust to the one-pixel star tips and soft edges that a bounding
    box would lose or gain.
    """
    size = mask.shape[0]
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    centroid_x, centroid_y = xs.mean() + 0.5, ys.mean() + 0.5
    best: tuple[float, str, shapes.Placement] | None = None
    for shape, (area_per_r2, offset_x, offset_y) in _shape_constants().items():
        radius = float(np.sqrt(area / area_per_r2))
        placement = shapes.Placement(centroid_x - offset_x * radius, centroid_y - offset_y * radius, radius)
        template = shapes.shape_coverage(shape, placement, size) > 0.5
        iou = np.logical_and(template, mask).sum() / max(np.logical_or(template, mask).sum(), 1)
        if best is None or iou > best[0]:
            best = (float(iou), shape, placement)
    assert best is not None
    return best[1], best[2]


def _third(coordinate: float, size: int) -> int:
    return min(2, int(coordinate / (size / 3)))


def analyse(image: np.ndarray) -> Analysis:
    """Read the attributes of an (S, S, 3) uint8 shapes image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square (S, S, 3) RGB image, got shape {image.shape}")
    pixels = image.astype(np.float32)
    size = pixels.shape[0]
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = _nearest_colour(np.median(border, axis=0))
    background_rgb = _PALETTE[_PALETTE_NAMES.index(background)]
    foreground = np.linalg.norm(pixels - background_rgb, axis=-1) > FOREGROUND_DISTANCE  # (S, S)
    if foreground.sum() < MIN_SHAPE_PIXELS:
        return Analysis(background, None, None, None, None, None)
    colour = _nearest_colour(np.median(pixels[foreground], axis=0), exclude=background)
    mask = foreground & (_nearest_index_map(pixels) == _PALETTE_NAMES.index(colour))
    if mask.sum() < MIN_SHAPE_PIXELS:
        return Analysis(background, colour, None, None, None, None)
    shape, placement = _fit_shape(mask)
    side = 2.0 * placement.radius * 64.0 / size
    size_name = _SIZE_NAMES[int(np.searchsorted(_SIZE_THRESHOLDS, side))]
    grid = (_third(placement.centre_x, size), _third(placement.centre_y, size))
    position = next(name for name, cell in shapes.POSITIONS.items() if cell == grid)
    box = (placement.centre_x - placement.radius, placement.centre_y - placement.radius,
           placement.centre_x + placement.radius, placement.centre_y + placement.radius)
    return Analysis(background, colour, shape, size_name, position, box)


@dataclass(frozen=True)
class EvalReport:
    """Accuracy per attribute over ``count`` images, plus the all-attributes-correct rate."""

    count: int
    accuracy: dict[str, float]  # attribute -> fraction correct; "joint": all five correct
    failures: tuple[tuple[str, Analysis], ...]  # (caption, analysis) of each wrong image


def score(images: Sequence[np.ndarray], specs: Sequence[shapes.ShapeSpec]) -> EvalReport:
    """Analyse each image and compare with the spec it was generated from."""
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images for {len(specs)} specs")
    correct = {name: 0 for name in (*ATTRIBUTES, "joint")}
    failures = []
    for image, spec in zip(images, specs):
        analysis = analyse(image)
        matches = analysis.matches(spec)
        for name, ok in matches.items():
            correct[name] += ok
        correct["joint"] += all(matches.values())
        if not all(matches.values()):
            failures.append((spec.caption(), analysis))
    count = max(1, len(specs))
    return EvalReport(len(specs), {k: v / count for k, v in correct.items()}, tuple(failures))


def evaluate(generate: Callable[[list[str], int], list[np.ndarray]], count: int, *, batch_size: int = 8,
             seed: int = 0, on_batch: Callable[[int, int], None] | None = None) -> EvalReport:
    """Generate the first ``count`` held-out captions (cycling) and score them.

    generate(captions, seed) -> one (S, S, 3) uint8 image per caption; it is called with
    ``seed + batch_start`` so every batch gets distinct, reproducible noise.
    """
    held_out = shapes.held_out_combos()
    specs = [held_out[i % len(held_out)] for i in range(count)]
    images: list[np.ndarray] = []
    for start in range(0, count, batch_size):
        batch = specs[start:start + batch_size]
        images.extend(generate([spec.caption() for spec in batch], seed + start))
        if on_batch is not None:
            on_batch(min(start + batch_size, count), count)
    return score(images, specs)


@dataclass(frozen=True)
class CheckpointEval:
    report: EvalReport
    psnr: float  # mean VAE reconstruction PSNR (dB) on fresh shapes images
    seconds_per_image: float  # one image, batch 1, ``steps`` steps with CFG, warm
    steps: int
    cfg: float
    scheduler: str = "sgm_uniform"
    sampler: str = "euler"
    # The analyser on the VAE's reconstructions of the PSNR images: the ceiling that the
    # decoder puts on any generated image's accuracy.
    reconstruction: EvalReport | None = None


def evaluate_checkpoint(path: str, *, count: int = 96, steps: int = 20, cfg: float = 4.0, batch_size: int = 8,
                        seed: int = 0, psnr_images: int = 64,
                        on_batch: Callable[[int, int], None] | None = None,
                        grid_path: str | None = None, scheduler: str = "sgm_uniform",
                        sampler: str = "euler", weight_dtype: str = "default") -> CheckpointEval:
    """Load a tiny-shapes model file and measure accuracy, VAE PSNR and speed (the UNet's weights
    stored as ``weight_dtype``, see ``sgm.nets.quant``)."""
    import time

    import torch

    from sgm.io.checkpoints import load_checkpoint
    from sgm.data.datasets import ShapesDataset
    from sgm.data.transforms import to_pixels
    from sgm.training.common import grid_image
    from sgm.training.diffusion import generate as generate_images
    from sgm.training.vae import psnr

    from sgm.nets.quant import quantize_module

    checkpoint = load_checkpoint(path, dtype=torch.float32)
    if checkpoint.unet is None or checkpoint.vae is None or checkpoint.conditioner is None:
        raise ValueError(f"{path} lacks a UNet, VAE or text encoder; eval needs a full text-to-image model")
    quantize_module(checkpoint.unet, weight_dtype)
    sampling = checkpoint.model_sampling()
    latent_size = 64 // checkpoint.vae.downscale

    def encode(prompts: list[str]) -> torch.Tensor:
        return checkpoint.encode_text(prompts)[0]

    def generate(captions: list[str], batch_seed: int) -> list[np.ndarray]:
        images = generate_images(checkpoint.unet, checkpoint.vae, encode, sampling, captions,
                                 scale_factor=checkpoint.scale_factor, latent_size=latent_size,
                                 generator=torch.Generator().manual_seed(batch_seed), steps=steps, cfg=cfg,
                                 scheduler=scheduler, sampler=sampler)
        return [to_pixels(image) for image in images]

    generated: list[np.ndarray] = []

    def keep(captions: list[str], batch_seed: int) -> list[np.ndarray]:
        images = generate(captions, batch_seed)
        generated.extend(images)
        return images

    with torch.inference_mode():
        report = evaluate(keep, count, batch_size=batch_size, seed=seed, on_batch=on_batch)
        # Speed: one warm 20-step image at batch 1 (CFG doubles the UNet batch to 2).
        generate(["a large yellow star in the center on a purple background"], seed)
        started = time.perf_counter()
        generate(["a large yellow star in the center on a purple background"], seed)
        seconds = time.perf_counter() - started
        dataset = ShapesDataset(seed=seed + 999, exclude_held_out=False)
        images = torch.stack([dataset[i]["image"] for i in range(psnr_images)])
        reconstruction = checkpoint.vae.decode(checkpoint.vae.encode(images))
        mean_psnr = float(psnr(reconstruction, images).mean())
        ceiling = score([to_pixels(r) for r in reconstruction.float().clamp(-1, 1)],
                        [dataset.spec(i)[0] for i in range(psnr_images)])
    if grid_path is not None:
        from PIL import Image

        tensors = torch.stack([torch.from_numpy(g).permute(2, 0, 1).float() / 127.5 - 1 for g in generated])
        Image.fromarray(to_pixels(grid_image(tensors, 8))).save(grid_path)
    return CheckpointEval(report, mean_psnr, seconds, steps, cfg, scheduler, sampler, ceiling)
