"""State dicts on disk: reading a file, the single-file key prefixes, telling a file's family.

The bottom of ``sgm.io``: checkpoint loading and format conversion both build on it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A file whose layout or keys do not fit what the loader expects (message says what was found)."""


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint file (memory-mapped for safetensors) and its metadata.

    Pickle formats go through ``torch.load(weights_only=True)`` (no code execution); a
    Lightning-style ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            # safetensors >= 0.6 returns tensors backed by the file mapping (copy-on-write).
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    if path.suffix in _PICKLE_SUFFIXES:
        loaded = load_pickle(path)
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(loaded).__name__}")
        return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}, {}
    raise CheckpointError(
        f"{path}: unsupported file type {path.suffix!r}; expected .safetensors or one of {_PICKLE_SUFFIXES}"
    )


def load_pickle(path: Path) -> object:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    import pickle

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's text advises weights_only=False, i.e. running the file's code: never do that.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path.name} contains code{what}, not only weights, and was not loaded; convert it from a trusted "
            "source or use a .safetensors file") from None
    except (EOFError, ValueError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                              f"{str(error)[:200]}); re-download it or use a .safetensors file") from None


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` with the prefix removed (a new dict; tensors shared)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------- family


def detect_family(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The model family from metadata (``latentflow.family``), text-encoder keys, then UNet shapes."""
    if metadata.get("latentflow.family"):
        return metadata["latentflow.family"]
    keys = state_dict.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    in_channels = state_dict[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1] if UNET_PREFIX + "input_blocks.0.0.weight" in state_dict else 4
    if has("conditioner.embedders.0.transformer."):
        base = "sdxl"
    elif has("conditioner.embedders.0.model."):
        base = "sdxl-refiner"
    elif has("cond_stage_model.transformer."):
        base = "sd1"
    elif has("cond_stage_model.model."):
        base = "sd2"
    elif UNET_PREFIX + "label_emb.0.0.weight" in state_dict:
        context = next((v.shape[1] for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")), None)
        # SDXL base: 2048-wide context, refiner: 1280; SD 2.1 unCLIP is an SD 2.x UNet (OpenCLIP-H's
        # 1024) with a vector input for the image embedding.
        base = {1280: "sdxl-refiner", 1024: "sd2"}.get(context, "sdxl")
    elif any(k.startswith(UNET_PREFIX) and k.endswith("proj_in.weight") and v.ndim == 2 for k, v in state_dict.items()):
        base = "sd2"
    elif has(UNET_PREFIX):
        base = "sd1"
    elif has(VAE_PREFIX):
        return "vae"  # a VAE-only file (e.g. a fine-tuned SD VAE in a full-checkpoint layout)
    else:
        raise CheckpointError(
            f"unknown checkpoint layout: no {UNET_PREFIX!r}, text-encoder or known keys "
            f"(first keys: {sorted(keys)[:8]}); set metadata latentflow.family to load a custom model"
        )
    if in_channels == 9:
        return f"{base}-inpaint"
    if base == "sd2" and in_channels == 4 and _looks_v_prediction(state_dict):
        return "sd2-v"
    return base


def _looks_v_prediction(state_dict: dict[str, torch.Tensor]) -> bool:
    # SD 2.x 768-v and 512-base share every shape. Fine-tuning toward v moves the late
    # decoder LayerNorm biases far from zero; measured on the released files, the std of
    # this bias is ~0.2 for 768-v and ~0.03 for 512-base, so 0.09 separates them.
    bias = state_dict.get(UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias")
    if bias is None or bias.is_meta:  # meta: shapes only (architecture probing)
        return False
    return float(bias.float().std(unbiased=False)) > 0.09
