"""Captioned image datasets: an image folder with sidecar captions, and ``shapes``.

Both are map-style datasets whose item ``i`` is a pure function of ``(seed, i)``. Indices
run past one epoch: index ``i`` of the image folder reads file ``perm_e[i mod n]`` where
``e = i // n`` and ``perm_e`` is a seeded permutation, so shuffling, augmentation and a
resumed run (which starts at index ``step * batch``) are all reproducible with any number
of worker processes. An item is ``{"image": (3, S, S) float in [-1, 1], "caption": str}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sgm.data import shapes
from sgm.data.transforms import Preprocess, augment, to_tensor

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIRTUAL_LENGTH = 1 << 40  # procedural and epoch-indexed datasets are effectively infinite


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images under ``root`` (recursively), each captioned by a sidecar ``<stem>.txt``.

    An image without a caption file gets ``default_caption`` if given, else is an error that
    names it (a silently empty caption would train an unconditional model by accident).
    """

    def __init__(self, root: str | Path, preprocess: Preprocess = Preprocess(), *, seed: int = 0,
                 default_caption: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {self.root}")
        self.captions = [self._caption(path, default_caption) for path in self.files]
        self.preprocess = preprocess
        self.seed = seed

    @staticmethod
    def _caption(path: Path, default_caption: str | None) -> str:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            return " ".join(sidecar.read_text(encoding="utf-8").split())
        if default_caption is None:
            raise FileNotFoundError(
                f"{path} has no caption file {sidecar.name}; add one or pass default_caption"
            )
        return default_caption

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def file_index(self, index: int) -> int:
        """Which file global index ``index`` reads (a fresh seeded permutation per epoch)."""
        epoch, position = divmod(index, len(self.files))
        permutation = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        return int(permutation[position])

    def __getitem__(self, index: int) -> dict[str, object]:
        rng = np.random.default_rng([self.seed, 1, index])
        file_index = self.file_index(index)
        with Image.open(self.files[file_index]) as image:
            pixels, caption = augment(image, self.captions[file_index], self.preprocess, rng)
        return {"image": pixels, "caption": caption}


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural coloured shapes with captions; held-out combinations are never produced.

    ``mirrored=True`` flips every image left-right but keeps its caption, so "at the top left"
    shows the shape at the top right: data for a LoRA with a visible, measurable effect.
    """

    def __init__(self, image_size: int = 64, *, seed: int = 0, exclude_held_out: bool = True,
                 crop_size: int | None = None, mirrored: bool = False) -> None:
        if crop_size is not None and not 0 < crop_size <= image_size:
            raise ValueError(f"crop_size must be in (0, {image_size}], got {crop_size}")
        self.image_size = image_size
        self.crop_size = crop_size  # random square crops (cheap VAE training on parts of images)
        self.seed = seed
        self.mirrored = mirrored
        self.exclude = frozenset(shapes.held_out_combos()) if exclude_held_out else frozenset()

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def spec(self, index: int) -> tuple[shapes.ShapeSpec, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        return shapes.sample_spec(rng, self.exclude), rng

    def __getitem__(self, index: int) -> dict[str, object]:
        spec, rng = self.spec(index)
        pixels = shapes.render(spec, self.image_size, rng)
        if self.mirrored:
            pixels = np.ascontiguousarray(pixels[:, ::-1])
        if self.crop_size is not None and self.crop_size < self.image_size:
            top, left = rng.integers(0, self.image_size - self.crop_size + 1, size=2)
            pixels = pixels[top:top + self.crop_size, left:left + self.crop_size]
        # Flipping is not needed here (positions are already uniform); see flip_caption.
        return {"image": to_tensor(pixels), "caption": spec.caption()}


class _RangeSampler(torch.utils.data.Sampler[int]):
    """Indices start, start + 1, ... (forever): the dataset does the shuffling."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        index = self.start
        while True:
            yield index
            index += 1


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, *, start_index: int = 0,
                workers: int = 0) -> torch.utils.data.DataLoader:
    """An endless loader from global item ``start_index`` (resume at ``step * batch_size``)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_RangeSampler(start_index),
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
    )


def build_dataset(name_or_path: str, image_size: int, *, seed: int = 0, flip_probability: float = 0.0,
                  random_crop: bool = False, crop_size: int | None = None) -> torch.utils.data.Dataset:
    """``"shapes"`` (optionally random ``crop_size`` crops), ``"shapes-mirrored"`` (every image
    flipped left-right, captions unchanged) or a folder of captioned images."""
    if name_or_path in ("shapes", "shapes-mirrored"):
        return ShapesDataset(image_size, seed=seed, crop_size=crop_size, mirrored=name_or_path == "shapes-mirrored")
    if crop_size is not None:
        raise ValueError("crop_size applies to 'shapes'; for image folders use image_size with random_crop")
    from sgm.data.transforms import CropMode

    preprocess = Preprocess(
        size=image_size,
        crop=CropMode.RANDOM if random_crop else CropMode.CENTER,
        flip_probability=flip_probability,
    )
    return ImageFolderDataset(name_or_path, preprocess, seed=seed)


class LatentCacheDataset(torch.utils.data.Dataset):
    """Pre-encoded VAE posteriors of ``N`` dataset items, revisited in a seeded order per epoch.

    Encoding a 64-pixel image costs about as much as a small UNet's training step, so
    diffusion training encodes a fixed set once (``build``) and draws a fresh posterior
    sample from the stored mean / log-variance at every visit. Items are
    ``{"latent_mean": (C, h, w), "latent_logvar": (C, h, w), "caption": str}``.
    """

    def __init__(self, means: torch.Tensor, logvars: torch.Tensor, captions: list[str], *, seed: int = 0) -> None:
        if not (len(means) == len(logvars) == len(captions)) or len(captions) == 0:
            raise ValueError(f"latent cache needs equal, non-zero counts; got {len(means)}, {len(logvars)}, "
                             f"{len(captions)}")
        self.means, self.logvars, self.captions, self.seed = means, logvars, list(captions), seed

    @classmethod
    def build(cls, dataset: torch.utils.data.Dataset, encode_posterior, count: int, *, batch_size: int = 64,
              seed: int = 0, on_batch=None) -> "LatentCacheDataset":
        """Encode items ``0 .. count-1`` of ``dataset``; ``encode_posterior(images) -> DiagonalGaussian``."""
        means, logvars, captions = [], [], []
        with torch.no_grad():
            for start in range(0, count, batch_size):
                items = [dataset[i] for i in range(start, min(count, start + batch_size))]
                posterior = encode_posterior(torch.stack([item["image"] for item in items]))
                means.append(posterior.mean.float())
                logvars.append(posterior.logvar.float())
                captions.extend(item["caption"] for item in items)
                if on_batch is not None:
                    on_batch(len(captions), count)
        return cls(torch.cat(means), torch.cat(logvars), captions, seed=seed)

    def state_dict(self) -> dict[str, object]:
        return {"means": self.means, "logvars": self.logvars, "captions": "\n".join(self.captions)}

    @classmethod
    def from_state_dict(cls, state: dict[str, object], *, seed: int = 0) -> "LatentCacheDataset":
        return cls(state["means"], state["logvars"], str(state["captions"]).split("\n"), seed=seed)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def __getitem__(self, index: int) -> dict[str, object]:
        epoch, position = divmod(index, len(self.captions))
        item = int(np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.captions))[position])
        return {"latent_mean": self.means[item], "latent_logvar": self.logvars[item], "caption": self.captions[item]}
