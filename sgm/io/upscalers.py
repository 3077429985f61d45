"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, DAT, ...) through spandrel, run tiled.

A file is read by content: spandrel recognises the architecture and its hyperparameters from
the state dict's keys and shapes (the loader ComfyUI uses too), so a reduced-width test model
loads through the same path as a released one. Only image-to-image models are accepted
(spandrel's :class:`ImageModelDescriptor`: super-resolution and restoration); inpainting models
need a mask and are refused with a message that says so.

:func:`upscale_image` runs the model on overlapping tiles and blends them: a tile's pixels
near an inner edge saw padding instead of the neighbouring image, so the outer quarter of the
overlap is dropped and the middle half is cross-faded linearly (the weights are normalised, so
a convolutional model whose receptive radius is at most ``overlap // 4`` input pixels gives the
untiled result exactly). When a tile runs out of memory the whole image is retried with tiles
half as large, down to ``min_tile``.

Images are ComfyUI's IMAGE: ``(B, H, W, C)`` float in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sgm.io.model_cache import is_out_of_memory
from sgm.nets.interrupt import check_interrupt

DEFAULT_TILE = 512  # input pixels, as ComfyUI's ImageUpscaleWithModel
DEFAULT_OVERLAP = 32
MIN_TILE = 128  # halving stops here (ComfyUI gives up below 128 too)
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
ALIGN = 16  # tile starts are multiples of this (and of the model's window)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, for one-channel models fed RGB

ProgressCallback = Callable[[int, int], None]  # (tiles done, tiles in all)


class UpscaleModelError(ValueError):
    """A file that is not an image-to-image upscale model spandrel knows, or an image it cannot take."""


class UpscaleMemoryError(RuntimeError):
    """Out of memory even with the smallest tile."""


@dataclass(frozen=True, eq=False)
class UpscaleModel:
    """UPSCALE_MODEL: a loaded spandrel image-to-image model and the name it was loaded from."""

    descriptor: Any  # spandrel.ImageModelDescriptor
    name: str = ""
    # The descriptor's network: what a model cache moves between devices and what the result
    # cache counts (it sizes dataclass fields and modules, not spandrel's descriptor).
    module: torch.nn.Module = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "module", self.descriptor.model)

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def input_channels(self) -> int:
        return int(self.descriptor.input_channels)

    @property
    def output_channels(self) -> int:
        return int(self.descriptor.output_channels)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)


def import_spandrel() -> Any:
    """``import spandrel``, also where torchvision cannot be imported.

    spandrel's registry imports torchvision for two architectures only (LaMa inpainting and
    RestoreFormer faces: ``rotate``, ``normalize``, ``InterpolationMode``). A CPU-only torch
    has no matching torchvision wheel on PyPI (they are built for CUDA torch and fail to load),
    so where ``import torchvision`` fails, a stand-in module offers those three names and its two
    functions raise an error naming what to install. Every other architecture is unaffected.
    """
    import sys

    if "spandrel" not in sys.modules:
        try:
            import torchvision.transforms.functional  # noqa: F401  (pyflakes: used by spandrel)
        except Exception:  # absent, or a CUDA build that cannot load beside this torch
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            sys.modules.update(_torchvision_stand_in())
    try:
        import spandrel
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("upscale models need spandrel: pip install --no-deps spandrel==0.4.2 einops "
                                  "(--no-deps keeps pip from replacing a CPU torch with a CUDA build)") from error
    return spandrel


def _torchvision_stand_in() -> dict[str, Any]:
    """Modules ``torchvision``, ``.transforms`` and ``.transforms.functional`` with the names spandrel imports."""
    import enum
    import types
    from importlib.machinery import ModuleSpec

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError("this upscale model's architecture (LaMa or RestoreFormer) needs torchvision, "
                                  "which cannot be imported here; install the torchvision that matches your torch")

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    modules = {}
    for name, package in (("torchvision", True), ("torchvision.transforms", True),
                          ("torchvision.transforms.functional", False)):
        module = types.ModuleType(name, "latentflow's stand-in: torchvision could not be imported")
        module.__spec__ = ModuleSpec(name, None, is_package=package)
        if package:
            module.__path__ = []
        modules[name] = module
    functional = modules["torchvision.transforms.functional"]
    functional.rotate = functional.normalize = unavailable  # type: ignore[attr-defined]
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    modules["torchvision"].transforms = modules["torchvision.transforms"]  # type: ignore[attr-defined]
    modules["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    return modules


def read_upscale_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscale model file; pickles only through ``torch.load(weights_only=True)``.

    Wrappers found in the wild (``params_ema``, ``params``, ``state_dict``, ``module.`` prefixes)
    are removed by spandrel's canonicalisation."""
    canonicalize_state_dict = import_spandrel().canonicalize_state_dict

    from sgm.io.state_dict import load_pickle, read_state_dict

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UpscaleModelError(f"{path.name}: unsupported file type {path.suffix!r}; an upscale model is one of "
                                f"{', '.join(SUFFIXES)}")
    if path.suffix.lower() == ".safetensors":
        state_dict: Any = read_state_dict(path)[0]
    else:
        if not path.is_file():
            raise FileNotFoundError(f"upscale model not found: {path}")
        state_dict = load_pickle(path)
        if not isinstance(state_dict, dict):
            raise UpscaleModelError(f"{path.name}: expected a dict of tensors, found {type(state_dict).__name__}")
    state_dict = canonicalize_state_dict(state_dict)
    return {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def upscale_model_from_state_dict(state_dict: dict[str, torch.Tensor], name: str = "") -> UpscaleModel:
    """Detect the architecture of ``state_dict`` (spandrel) and build the model, in eval mode, fp32."""
    spandrel = import_spandrel()
    ImageModelDescriptor, ModelLoader = spandrel.ImageModelDescriptor, spandrel.ModelLoader
    UnsupportedModelError = spandrel.UnsupportedModelError

    what = name or "the state dict"
    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except UnsupportedModelError as error:
        raise UpscaleModelError(
            f"{what} is not an upscale model architecture spandrel knows (keys such as "
            f"{', '.join(sorted(state_dict)[:3])}); use an ESRGAN / Real-ESRGAN / SwinIR / DAT / ... file "
            "(spandrel's list of architectures)") from error
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscaleModelError(
            f"{what} is a {descriptor.architecture.name} model for {descriptor.purpose}, which needs more than an "
            "image (e.g. a mask); the upscale nodes take image-to-image models (super-resolution, restoration)")
    descriptor.model.requires_grad_(False)
    return UpscaleModel(descriptor.eval(), name)


def load_upscale_model(path: str | Path, dtype: torch.dtype | None = None) -> UpscaleModel:
    """Load an upscale model file by content; ``dtype`` is used where the architecture supports it
    (else fp32: spandrel marks which run in half precision / bf16)."""
    path = Path(path)
    model = upscale_model_from_state_dict(read_upscale_state_dict(path), path.name)
    if dtype is not None and dtype != torch.float32 and supports_dtype(model, dtype):
        model.descriptor.to(dtype)
    return model


def supports_dtype(model: UpscaleModel, dtype: torch.dtype) -> bool:
    if dtype == torch.float16:
        return bool(model.descriptor.supports_half)
    if dtype == torch.bfloat16:
        return bool(model.descriptor.supports_bfloat16)
    return dtype == torch.float32


# ---------------------------------------------------------------------------------------- running


def tile_spans(size: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """(start, length) of the tiles along an axis of ``size`` pixels: ``tile`` pixels long,
    neighbours overlapping by at least ``overlap``, starts on multiples of ``align`` (a window
    transformer's windows then fall where they fall in an untiled run). The last tile ends at the
    border (up to ``align - 1`` pixels longer); one tile when the axis fits."""
    if size <= tile:
        return [(0, size)]
    stride = (tile - overlap) // align * align
    if stride < 1:
        raise ValueError(f"tile {tile} minus overlap {overlap} leaves no {align}-aligned step")
    starts = list(range(0, size - tile, stride))
    last = (size - tile) // align * align
    if last > starts[-1]:
        starts.append(last)
    return [(start, tile) for start in starts[:-1]] + [(starts[-1], size - starts[-1])]


def edge_weights(length: int, scale: int, overlap: int, inner_start: bool, inner_end: bool) -> torch.Tensor:
    """Blend weights along one axis of a tile's output (``length`` input pixels, times ``scale``).

    At an inner edge: 0 over the outer quarter of the overlap (those pixels saw padding), a
    linear ramp over the middle half, 1 beyond. Image borders keep weight 1."""
    weights = torch.ones(length * scale)
    drop = (overlap // 4) * scale
    ramp = max(1, (overlap - 2 * (overlap // 4)) * scale)
    profile = torch.cat([torch.zeros(drop), torch.arange(1, ramp + 1) / (ramp + 1)])[: length * scale]
    if inner_start:
        weights[: len(profile)] = torch.minimum(weights[: len(profile)], profile)
    if inner_end:
        end = profile.flip(0)
        weights[-len(end):] = torch.minimum(weights[-len(end):], end)
    return weights


def _run_tile(model: UpscaleModel, x: torch.Tensor) -> torch.Tensor:
    """One tile through the network: (1, C, h, w) -> (1, C', h*s, w*s), clamped to [0, 1].
    spandrel pads to the model's size requirements (multiple_of / minimum / square) and crops back."""
    return model.descriptor(x)


def _channels_in(model: UpscaleModel, image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with the model's input channel count (RGB -> luma for 1-channel models,
    grey -> RGB, RGBA -> RGB)."""
    channels, wanted = image.shape[1], model.input_channels
    if channels == wanted:
        return image
    if wanted == 1 and channels in (3, 4):
        luma = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        return (image[:, :3] * luma).sum(1, keepdim=True)
    if wanted == 3 and channels == 1:
        return image.expand(-1, 3, -1, -1)
    if wanted == 3 and channels == 4:
        return image[:, :3]
    raise UpscaleModelError(f"{model.name or 'the upscale model'} takes {wanted}-channel images; this image has "
                            f"{channels} channels")


def upscale_image(model: UpscaleModel, image: torch.Tensor, *, tile: int = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP, min_tile: int = MIN_TILE,
                  on_progress: ProgressCallback | None = None) -> torch.Tensor:
    """Upscale ``image`` (B, H, W, C) in [0, 1] by ``model.scale`` -> (B, H*s, W*s, C') float32 on the CPU.

    Runs on the device the model's weights are on, in their dtype. Tiles of ``tile`` x ``tile``
    input pixels overlap by ``overlap``; on out-of-memory the run restarts with half the tile size
    until it would drop below ``min_tile``. ``on_progress(done, total)`` is called after each tile;
    the interrupt check (:mod:`sgm.nets.interrupt`) runs before each."""
    if image.dim() != 4:
        raise UpscaleModelError(f"expected an IMAGE batch (B, H, W, C), got shape {tuple(image.shape)}")
    if overlap < 0 or tile <= overlap:
        raise UpscaleModelError(f"tile ({tile}) must be larger than overlap ({overlap}) and overlap >= 0")
    while True:
        try:
            return _upscale_tiled(model, image, tile, overlap, on_progress)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if tile // 2 < max(min_tile, overlap + 1):
                raise UpscaleMemoryError(
                    f"upscaling with {model.name or 'the model'} ran out of memory even with {tile}-pixel tiles; "
                    "free memory (smaller batch, other models offloaded) or use a smaller image") from error
            tile //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def tile_alignment(model: UpscaleModel) -> int:
    """Where tiles may start: a multiple of the size requirement, of 16 and of the model's
    attention window (SwinIR / HAT / Swin2SR ``window_size``), so shifted windows line up."""
    align = math.lcm(int(model.descriptor.size_requirements.multiple_of), ALIGN)
    window = getattr(model.module, "window_size", None)
    return math.lcm(align, window) if isinstance(window, int) and window > 0 else align


def _upscale_tiled(model: UpscaleModel, image: torch.Tensor, tile: int, overlap: int,
                   on_progress: ProgressCallback | None) -> torch.Tensor:
    requirements = model.descriptor.size_requirements
    # Whole tiles meet the size requirements and need no padding of their own (rounded down
    # to a multiple, at least the minimum); only tiles at the border may, as the untiled run.
    tile = max(requirements.minimum, tile - tile % requirements.multiple_of, requirements.multiple_of)
    overlap = min(overlap, tile - 1)
    align = tile_alignment(model)
    if tile - overlap < align:
        align = requirements.multiple_of  # small tiles: give up window alignment, keep the step
    device, dtype = model.descriptor.device, model.descriptor.dtype
    pixels = _channels_in(model, image.movedim(-1, 1).float())  # (B, C, H, W)
    batch, _, height, width = pixels.shape
    s = model.scale
    rows, columns = tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)
    total, done = batch * len(rows) * len(columns), 0
    out = torch.zeros(batch, model.output_channels, height * s, width * s)  # (B, C', H*s, W*s)
    for b in range(batch):
        weight_sum = torch.zeros(1, 1, height * s, width * s)
        for top, h in rows:
            row_weight = edge_weights(h, s, overlap, top > 0, top + h < height)
            for left, w in columns:
                check_interrupt()
                x = pixels[b:b + 1, :, top:top + h, left:left + w].to(device=device, dtype=dtype)
                y = _run_tile(model, x).float().cpu()  # (1, C', h*s, w*s)
                weight = row_weight[:, None] * edge_weights(w, s, overlap, left > 0, left + w < width)[None, :]
                rows_out, columns_out = slice(top * s, (top + h) * s), slice(left * s, (left + w) * s)
                out[b:b + 1, :, rows_out, columns_out] += y * weight
                weight_sum[..., rows_out, columns_out] += weight
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        out[b:b + 1] /= weight_sum
    if model.output_channels == 1 and image.shape[-1] == 3:
        out = out.expand(-1, 3, -1, -1)
    return out.movedim(1, -1).contiguous()  # (B, H*s, W*s, C')
