"""CLIP vision files: told apart by their keys, sized by their shapes.

Two layouts are in the wild:

* transformers (``models/clip_vision/*.safetensors`` as ComfyUI's users download them):
  ``vision_model.*`` + ``visual_projection.weight``; a full ``CLIPModel`` file's text half is
  ignored.
* open_clip / OpenAI ``clip`` (``visual.*``; inside SD 2.1 unCLIP checkpoints
  ``embedder.model.visual.*``): ``conv1``, ``class_embedding``, ``positional_embedding``,
  ``ln_pre``, ``transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj`` (width x embed, i.e. transposed).

``open_clip_to_transformers`` maps the second onto the first (the packed q/k/v projection is
split in three); ``ClipVisionModel`` (``sgm.nets.clip_vision``) is named like the first.

The head count and the activation cannot be read from shapes: the released sizes (ViT-L/14,
ViT-H/14, ViT-bigG/14) have them in ``CLIP_VISION_CONFIGS``; any other size takes
width / 64 heads and exact GELU unless the file's metadata ``latentflow.config`` says
``{"clip_vision": {"heads": ..., "activation": "quick_gelu" | "gelu"}}``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sgm.io.checkpoints import assign_weights, config_hints
from sgm.io.state_dict import CheckpointError, read_state_dict
from sgm.nets.clip_vision import CLIP_VISION_CONFIGS, ClipVisionConfig, ClipVisionModel

HF_PREFIX = "vision_model."
HF_PROJECTION = "visual_projection.weight"
PACKED_QKV = "transformer.resblocks.0.attn.in_proj_weight"
UNCLIP_PREFIX = "embedder.model.visual."  # the image tower inside SD 2.1 unCLIP checkpoints
# Keys some files carry that no forward pass uses.
_IGNORED = ("vision_model.embeddings.position_ids",)

_RESBLOCK_NAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_TOP_NAMES = {
    "class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias",
}


def open_clip_prefix(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The prefix of an open_clip-layout image tower in ``state_dict`` ("visual.",
    "embedder.model.visual.", ...), or None where there is none."""
    for key in state_dict:
        if key.endswith(PACKED_QKV):
            prefix = key[: -len(PACKED_QKV)]
            if prefix + "conv1.weight" in state_dict:
                return prefix
    return None


def open_clip_to_transformers(state_dict: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """The image tower under ``prefix`` in transformers' names (a new dict; other keys dropped)."""
    tower = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if "proj" not in tower:
        raise CheckpointError(f"CLIP vision: {prefix}proj (the image projection) is missing; the file holds an "
                              "image tower without its projection, which unCLIP and Revision need")
    out: dict[str, torch.Tensor] = {HF_PROJECTION: tower.pop("proj").t().contiguous()}
    for key, value in tower.items():
        if key in _TOP_NAMES:
            out[HF_PREFIX + _TOP_NAMES[key]] = value
            continue
        if not key.startswith("transformer.resblocks."):
            raise CheckpointError(f"CLIP vision: unexpected key {prefix}{key} (attention pooling or a ResNet "
                                  "tower?); only ViT image towers are supported")
        index, rest = key[len("transformer.resblocks."):].split(".", 1)
        layer = f"{HF_PREFIX}encoder.layers.{index}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}.{kind}"] = part
            continue
        stem, leaf = rest.rsplit(".", 1)
        if stem not in _RESBLOCK_NAMES:
            raise CheckpointError(f"CLIP vision: unexpected key {prefix}{key}")
        out[f"{layer}{_RESBLOCK_NAMES[stem]}.{leaf}"] = value
    return out


def _layers(state_dict: dict[str, torch.Tensor]) -> int:
    stem = HF_PREFIX + "encoder.layers."
    indices = {int(k[len(stem):].split(".", 1)[0]) for k in state_dict if k.startswith(stem)}
    return max(indices) + 1 if indices else 0


def infer_clip_vision_config(state_dict: dict[str, torch.Tensor], hints: dict[str, Any] | None = None) -> ClipVisionConfig:
    """The architecture of a transformers-layout image tower from its shapes (and ``hints``)."""
    required = (HF_PREFIX + "embeddings.patch_embedding.weight", HF_PREFIX + "embeddings.position_embedding.weight",
                HF_PREFIX + "encoder.layers.0.mlp.fc1.weight", HF_PROJECTION)
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise CheckpointError(f"not a CLIP vision model: {missing} missing (first keys found: {sorted(state_dict)[:6]})"
                              "; expected transformers' vision_model.* + visual_projection.weight or open_clip's visual.*")
    patch = state_dict[HF_PREFIX + "embeddings.patch_embedding.weight"]  # (W, 3, p, p)
    positions = state_dict[HF_PREFIX + "embeddings.position_embedding.weight"].shape[0]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise CheckpointError(f"CLIP vision: {positions} positions is not a square grid plus the class token")
    layers = _layers(state_dict)
    known = next((c for c in CLIP_VISION_CONFIGS.values() if (c.width, c.layers) == (width, layers)), None)
    config = ClipVisionConfig(
        width=width, layers=layers,
        heads=known.heads if known else max(1, width // 64),
        mlp_width=int(state_dict[HF_PREFIX + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        patch_size=patch_size, image_size=grid * patch_size,
        projection_dim=int(state_dict[HF_PROJECTION].shape[0]),
        activation=known.activation if known else "gelu",
    )
    hints = dict(hints or {})
    unknown = set(hints) - {"heads", "activation"}
    if unknown:
        raise CheckpointError(f"latentflow.config clip_vision hints {sorted(unknown)} unknown; allowed: heads, activation")
    if hints.get("activation", "gelu") not in ("gelu", "quick_gelu"):
        raise CheckpointError(f'clip_vision activation must be "gelu" or "quick_gelu", found {hints["activation"]!r}')
    return replace(config, **hints)


def clip_vision_hints(metadata: dict[str, str]) -> dict[str, Any]:
    """The ``clip_vision`` entry of a file's ``latentflow.config`` metadata ({} where none)."""
    return dict(config_hints(metadata).get("clip_vision") or {})


def transformers_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The image tower of ``state_dict`` in transformers' names, whichever layout it is stored in;
    None where the file has no CLIP image tower."""
    prefix = open_clip_prefix(state_dict)
    if prefix is not None:
        return open_clip_to_transformers(state_dict, prefix)
    if HF_PREFIX + "embeddings.patch_embedding.weight" in state_dict:
        return {k: v for k, v in state_dict.items()
                if (k.startswith(HF_PREFIX) or k == HF_PROJECTION) and k not in _IGNORED}
    return None


def build_clip_vision(
    state_dict: dict[str, torch.Tensor], *, hints: dict[str, Any] | None = None,
    device: torch.device | str = "cpu", dtype: torch.dtype | None = None, what: str = "CLIP vision",
) -> ClipVisionModel:
    """A ``ClipVisionModel`` from a state dict in either layout (keys as in a standalone file, or
    a whole unCLIP checkpoint's)."""
    tower = transformers_layout(state_dict)
    if tower is None:
        raise CheckpointError(
            f"{what}: no CLIP image tower found (first keys: {sorted(state_dict)[:6]}); expected transformers' "
            "vision_model.* + visual_projection.weight or open_clip's visual.* (conv1, transformer.resblocks.N...)")
    config = infer_clip_vision_config(tower, hints)
    with torch.device("meta"):
        model = ClipVisionModel(config)
    return assign_weights(model, tower, device=device, dtype=dtype, what=what)  # type: ignore[return-value]


def load_clip_vision(path: str | Path, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None) -> ClipVisionModel:
    """A CLIP vision file (``models/clip_vision/``) in either layout; its size is read from shapes."""
    state_dict, metadata = read_state_dict(path)
    return build_clip_vision(state_dict, hints=clip_vision_hints(metadata), device=device, dtype=dtype,
                             what=f"CLIP vision {Path(path).name}")


def has_clip_vision(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint carries an image tower (SD 2.1 unCLIP's ``embedder.model.visual.*``)."""
    return open_clip_prefix(state_dict) is not None or HF_PREFIX + "embeddings.patch_embedding.weight" in state_dict
