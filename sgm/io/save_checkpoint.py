"""Write a model (with its recorded patches: merges, LoRAs) as one single-file checkpoint.

The file is a ``.safetensors`` with the released checkpoints' key names
(``model.diffusion_model.``, the family's text-encoder prefixes, ``first_stage_model.``), so
our loader (``sgm.io.checkpoints.load_checkpoint``) and other tools read it back. Patched
weights are computed and written **one tensor at a time** (``sgm.io.lora.patched_tensor``): a
merged SDXL model is never held twice in memory. safetensors' own writer wants every tensor at
once, so the format (an 8-byte header length, a JSON header, the raw little-endian bytes) is
written here directly; the header is complete before any tensor is computed because shapes and
dtypes are known.

What shapes cannot tell goes into ``latentflow.config`` (head layout, prediction, latent
scale) and ``latentflow.family``, as ``tests.sgm.model_factories`` writes it; a text encoder
of our own (tiny-shapes) adds its metadata. The workflow travels in the metadata as ComfyUI
writes it (``prompt``, ``workflow``: JSON strings).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from sgm.io.lora import PatchList, index_patches, patched_tensor
from sgm.io.state_dict import UNET_PREFIX, VAE_PREFIX
from sgm.nets.quant import QuantizedWeight

_DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
MAX_NUMBER = 99999


@dataclass(frozen=True)
class TensorSource:
    """One tensor of the file: its key, shape and dtype (known up front) and how to compute it."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    compute: Callable[[], torch.Tensor]


@dataclass(frozen=True)
class ModelPart:
    """A model part to save: the file prefix of its keys, the module, and the name its recorded
    patches use for it (``unet``, ``te0``, ``te1``, ``vae``)."""

    prefix: str
    module: nn.Module
    name: str


def part_tensors(part: ModelPart, patches: PatchList = (), dtype: torch.dtype | None = None) -> list[TensorSource]:
    """The tensors of ``part`` (its state dict, with ``patches`` applied), computed lazily on the CPU."""
    if any(isinstance(m, QuantizedWeight) for m in part.module.modules()):
        raise ValueError(f"the {part.name} weights are stored in one byte (weight_dtype fp8/int8) and cannot be "
                         "saved as a checkpoint; load the model with weight_dtype default to save it")
    index = index_patches(patches)
    sources = []
    for key, tensor in part.module.state_dict(keep_vars=True).items():
        target = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype

        def compute(tensor: torch.Tensor = tensor, key: str = key, target: torch.dtype = target) -> torch.Tensor:
            return patched_tensor(tensor, index.get((part.name, key), ()), device=torch.device("cpu"), dtype=target)

        sources.append(TensorSource(part.prefix + key, tuple(tensor.shape), target, compute))
    return sources


def write_safetensors(path: str | Path, sources: Iterable[TensorSource], metadata: Mapping[str, str] | None = None,
                      ) -> Path:
    """Write ``sources`` as a ``.safetensors`` file, computing and writing one tensor at a time.

    The file is written under a temporary name and linked into place: a reader never sees a
    partial file, and an existing file is never overwritten (``FileExistsError``).
    """
    sources = list(sources)
    bad = {k: type(v).__name__ for k, v in (metadata or {}).items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"write_safetensors: metadata values must be str (json.dumps them), got {bad}")
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ValueError(f"write_safetensors: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})} if metadata else {}
    offset = 0
    for source in sources:
        if source.dtype not in _DTYPE_CODES:
            raise TypeError(f"write_safetensors: {source.key} has dtype {source.dtype}, which safetensors cannot "
                            f"store; supported: {sorted(str(d) for d in _DTYPE_CODES)}")
        size = _numel(source.shape) * torch.empty((), dtype=source.dtype).element_size()
        header[source.key] = {"dtype": _DTYPE_CODES[source.dtype], "shape": list(source.shape),
                              "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        with open(temporary, "xb") as stream:
            stream.write(len(encoded).to_bytes(8, "little"))
            stream.write(encoded)
            for source in sources:
                tensor = source.compute()
                if tuple(tensor.shape) != source.shape or tensor.dtype != source.dtype:
                    raise ValueError(f"write_safetensors: {source.key} computed as {tuple(tensor.shape)} "
                                     f"{tensor.dtype}, declared {source.shape} {source.dtype}")
                stream.write(_raw_bytes(tensor))
                del tensor
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    data = flat.view(torch.uint8).numpy()
    if sys.byteorder != "little" and flat.element_size() > 1:
        data = flat.view(torch.uint8).reshape(-1, flat.element_size()).flip(1).reshape(-1).numpy()
    return memoryview(data)


# ---------------------------------------------------------------------------- checkpoints


def text_parts(conditioner: Any) -> list[ModelPart]:
    """The text towers of a conditioner with their file prefixes (``te0``, ``te1`` in order)."""
    towers = getattr(conditioner, "towers", None)
    if towers and all(isinstance(t, tuple) and hasattr(t[0], "prefix") for t in towers):  # sgm.text.encoders
        return [ModelPart(role.prefix, tower, f"te{i}") for i, (role, tower) in enumerate(towers)]
    from sgm.text.tiny_text import PREFIX, TinyTextConditioner

    if isinstance(conditioner, TinyTextConditioner):
        return [ModelPart(PREFIX, conditioner.encoder, "te0")]
    raise ValueError(f"cannot save a {type(conditioner).__name__} text encoder: its checkpoint key layout is "
                     "unknown (supported: the SD 1.x / 2.x / SDXL CLIP towers and tiny-shapes' encoder)")


def unet_head_hints(unet: nn.Module) -> dict[str, int]:
    """The attention head layout of a UNet (tensor shapes cannot tell it): ``num_heads`` when
    every attention has the same head count (SD 1.x), else ``num_head_channels``."""
    from sgm.nets.attention import CrossAttention

    layers = [m for m in unet.modules() if isinstance(m, CrossAttention)]
    if not layers:
        return {}
    heads = {m.heads for m in layers}
    if len(heads) == 1:
        return {"num_heads": heads.pop()}
    widths = {m.to_q.out_features // m.heads for m in layers}
    if len(widths) != 1:
        raise ValueError(f"the UNet's attention layers have neither one head count {sorted(heads)} nor one head "
                         f"width {sorted(widths)}; our loader cannot rebuild it")
    return {"num_head_channels": widths.pop()}


def checkpoint_metadata(*, unet: nn.Module | None, family: str, prediction: str | None = None,
                        zero_terminal_snr: bool = False, scale_factor: float | None = None,
                        conditioner: Any = None, prompt: Any = None,
                        extra_pnginfo: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata our loader needs to rebuild the model exactly, plus the workflow (ComfyUI's
    ``prompt`` and each ``extra_pnginfo`` entry, e.g. ``workflow``, as JSON strings)."""
    config: dict[str, Any] = {}
    if unet is not None:
        config["unet"] = unet_head_hints(unet)
    if prediction is not None:
        config["prediction"] = prediction
    if zero_terminal_snr:
        config["zero_terminal_snr"] = True
    if scale_factor is not None:
        config["scale_factor"] = float(scale_factor)
    metadata = {"latentflow.config": json.dumps(config), "latentflow.family": family}
    if prediction in ("eps", "v"):  # what ComfyUI writes (it reads the v_pred key, see prediction_keys)
        metadata["modelspec.predict_key"] = "epsilon" if prediction == "eps" else "v"
    own = getattr(conditioner, "metadata", None)
    if callable(own):  # a text encoder of our own says how to rebuild it
        metadata.update({str(k): str(v) for k, v in own().items()})
    if prompt is not None:
        metadata["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        if key not in metadata:
            metadata[str(key)] = json.dumps(value)
    return metadata


def save_patched_checkpoint(path: str | Path, parts: Sequence[tuple[ModelPart, PatchList]],
                            metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None,
                            extra: Sequence[TensorSource] = ()) -> Path:
    """Write the model ``parts`` (each with its recorded patches) as one checkpoint file, tensor
    by tensor; ``dtype`` casts floating tensors (None keeps each as it is); ``extra`` adds
    tensors as they are (e.g. :func:`prediction_keys`)."""
    sources = [source for part, patches in parts for source in part_tensors(part, patches, dtype)] + list(extra)
    if not sources:
        raise ValueError("save_patched_checkpoint: nothing to save (no model part given)")
    return write_safetensors(path, sources, metadata)


def prediction_keys(prediction: str | None, zero_terminal_snr: bool = False) -> list[TensorSource]:
    """The empty marker tensors ComfyUI writes for v-prediction (``v_pred``) and zero-terminal-SNR
    (``ztsnr``) models, so that other tools read the prediction from the file too."""
    if prediction != "v":
        return []
    names = ["v_pred", *(["ztsnr"] if zero_terminal_snr else [])]
    return [TensorSource(name, (0,), torch.float32, lambda: torch.zeros(0)) for name in names]


# Which CLIP a text tower of a family is, as ComfyUI names standalone text-encoder files.
_TOWER_NAMES = {"sd1": ("clip_l",), "sd2": ("clip_h",), "sdxl": ("clip_l", "clip_g"), "sdxl-refiner": ("clip_g",)}


def text_encoder_files(conditioner: Any, family: str, patches: PatchList = ()) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Each text tower (with its recorded patches) as a standalone text-encoder file's tensors in
    transformers' layout (``text_model.*``), named as ComfyUI's CLIPSave names them (``clip_l``,
    ``clip_h``, ``clip_g``); one tower at a time is materialised. Our LoadTextEncoder / ComfyUI's
    CLIPLoader read them back (SD 2.x's unused last layer is not part of that layout)."""
    from sgm.io.convert_text import text_original_to_diffusers, with_text_model_prefix
    from sgm.text.encoders import base_family

    base = base_family(family)
    if base not in _TOWER_NAMES:
        raise ValueError(f"the {family} text encoder has no standalone file layout (CLIP-L / OpenCLIP towers of "
                         "SD 1.x, 2.x and SDXL only); save it inside a checkpoint with CheckpointSave")
    files = []
    for part, name in zip(text_parts(conditioner), _TOWER_NAMES[base]):
        index = index_patches(patches)
        single = {part.prefix + key: patched_tensor(value, index.get((part.name, key), ()), device=torch.device("cpu"))
                  for key, value in part.module.state_dict().items()}
        first, second = text_original_to_diffusers(family, single)
        tensors = first if first is not None else second
        if tensors is None:
            raise ValueError(f"the {family} text tower {part.name} did not convert (keys {sorted(single)[:3]})")
        files.append((name, {k: v.contiguous() for k, v in with_text_model_prefix(tensors).items()}))
    return files


def unet_part(unet: nn.Module) -> ModelPart:
    return ModelPart(UNET_PREFIX, unet, "unet")


def vae_part(vae: nn.Module) -> ModelPart:
    return ModelPart(VAE_PREFIX, vae, "vae")


def numbered_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    """``<folder>/<stem>_<NNNNN>_<suffix>`` with the next number after the highest present
    (ComfyUI's output naming: ``checkpoints/ComfyUI_00001_.safetensors``)."""
    highest = 0
    for existing in folder.glob(f"{stem}_*_{suffix}"):
        digits = existing.name[len(stem) + 1:-len(f"_{suffix}")]
        if digits.isdigit():
            highest = max(highest, int(digits))
    if highest >= MAX_NUMBER:
        raise FileExistsError(f"no free file number for {folder / stem}_*_{suffix}")
    return folder / f"{stem}_{highest + 1:05d}_{suffix}"


def save_numbered(folder: Path, stem: str, write: Callable[[Path], Path], suffix: str = ".safetensors") -> Path:
    """Call ``write(path)`` with the next free numbered path, trying the next number when another
    writer took it first (``write`` must raise ``FileExistsError`` rather than overwrite)."""
    for _ in range(100):
        try:
            return write(numbered_path(folder, stem, suffix))
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free file number for {folder / stem}_*_{suffix}")
