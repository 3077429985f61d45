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
    """Procedural coloured shapes with captions; held-out combinations are never produced."""

    def __init__(self, image_size: int = 64, *, seed: int = 0, exclude_held_out: bool = True) -> None:
        self.image_size = image_size
        self.seed = seed
        self.exclude = frozenset(shapes.held_out_combos()) if exclude_held_out else frozenset()

    def __len__(self) -> int:
        return VIRTUAL_LENGTH

    def spec(self, index: int) -> tuple[shapes.ShapeSpec, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        return shapes.sample_spec(rng, self.exclude), rng

    def __getitem__(self, index: int) -> dict[str, object]:
        spec, rng = self.spec(index)
        pixels = shapes.render(spec, self.image_size, rng)
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


def build_dataset(name_or_path: str, image_size: int, *, seed: int = 0,
                  flip_probability: float = 0.0, random_crop: bool = False) -> torch.utils.data.Dataset:
    """``"shapes"`` or a folder of captioned images."""
    if name_or_path == "shapes":
        return ShapesDataset(image_size, seed=seed)
    from sgm.data.transforms import CropMode

    preprocess = Preprocess(
        size=image_size,
        crop=CropMode.RANDOM if random_crop else CropMode.CENTER,
        flip_probability=flip_probability,
    )
    return ImageFolderDataset(name_or_path, preprocess, seed=seed)
