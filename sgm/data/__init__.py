"""Training data: the procedural ``shapes`` dataset and image folders with sidecar captions."""

from sgm.data.datasets import ImageFolderDataset, ShapesDataset, build_dataset, make_loader
from sgm.data.transforms import CropMode, Preprocess, flip_caption

__all__ = [
    "CropMode", "ImageFolderDataset", "Preprocess", "ShapesDataset", "build_dataset",
    "flip_caption", "make_loader",
]
