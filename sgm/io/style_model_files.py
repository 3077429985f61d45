"""Style model files (``models/style_models/``): TencentARC's T2I style adapter
(``t2iadapter_style_sd14v1.pth``), read by content, and how its tokens join the conditioning.

The adapter's sizes are read from its shapes (``style_embedding`` (1, N, W), ``proj`` (W, C), the count
of ``transformer_layes.*``); the head count is not in the file and is the original's 8. Pickles are read
with ``torch.load(weights_only=True)`` only (``sgm.io.state_dict.load_pickle``). Flux Redux files
(``redux_up`` / ``redux_down``) are recognised and refused with a message saying so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from sgm.io.checkpoints import assign_weights
from sgm.io.state_dict import CheckpointError, read_state_dict
from sgm.nets.style_adapter import STRENGTH_TYPES, StrengthType, StyleAdapter, StyleAdapterConfig
from sgm.text.conditioning import Condition

SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
REDUX_KEYS = ("redux_up.weight", "redux_down.weight")


class StyleModelError(CheckpointError):
    """A file in models/style_models/ that is not a style model we can run (the message says what it is)."""


def style_adapter_config(state_dict: dict[str, torch.Tensor], heads: int = 8, what: str = "style model"
                         ) -> StyleAdapterConfig:
    """The ``StyleAdapterConfig`` of a T2I style adapter state dict (original key names)."""
    if any(key in state_dict for key in REDUX_KEYS):
        raise StyleModelError(
            f"{what} is a Flux Redux image encoder (redux_up / redux_down weights), which conditions Flux "
            "models; only TencentARC's T2I style adapter for SD 1.x (t2iadapter_style_sd14v1) is supported")
    if "style_embedding" not in state_dict or "proj" not in state_dict:
        raise StyleModelError(
            f"{what} is not a T2I style adapter: it has no style_embedding / proj weights (keys such as "
            f"{', '.join(sorted(state_dict)[:4])}); use t2iadapter_style_sd14v1.pth")
    embedding, proj = state_dict["style_embedding"], state_dict["proj"]
    layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"transformer_layes\.(\d+)\.", key))}
    if embedding.ndim != 3 or proj.ndim != 2 or proj.shape[0] != embedding.shape[-1]:
        raise StyleModelError(f"{what}: style_embedding {tuple(embedding.shape)} and proj {tuple(proj.shape)} "
                              "do not fit together (expected (1, N, W) and (W, C)); the file is damaged")
    return StyleAdapterConfig(width=int(embedding.shape[-1]), context_dim=int(proj.shape[1]), heads=heads,
                              layers=len(layers), num_token=int(embedding.shape[1]))


def build_style_adapter(state_dict: dict[str, torch.Tensor], *, heads: int = 8, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, what: str = "style model") -> StyleAdapter:
    """A ``StyleAdapter`` in eval mode holding ``state_dict``'s tensors (missing / extra keys raise);
    ``heads``: the attention head count, which the file does not record."""
    config = style_adapter_config(state_dict, heads=heads, what=what)
    with torch.device("meta"):
        adapter = StyleAdapter(config)
    assign_weights(adapter, state_dict, device=device, dtype=dtype, what=f"{what} (T2I style adapter)")
    adapter.requires_grad_(False)
    return adapter


def load_style_model(path: str | Path, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None) -> StyleAdapter:
    """Load a style model file (.safetensors, or a pickle read with weights only)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise StyleModelError(f"{path.name}: unsupported file type {path.suffix!r}; a style model is one of "
                              f"{', '.join(SUFFIXES)}")
    state_dict, _ = read_state_dict(path)
    return build_style_adapter(state_dict, device=device, dtype=dtype, what=path.name)


def append_style(conditioning: Sequence[Condition], tokens: torch.Tensor, strength: float,
                 strength_type: StrengthType) -> list[Condition]:
    """Each condition with the style tokens (1, N, C) appended to its context (B, T, C) -> (B, T + N, C).

    ``multiply`` scales the tokens by ``strength``. ``attn_bias`` means log(strength) added to the
    attention scores of these tokens; it is honoured at strength 1, where the bias is zero. Other strengths
    raise: the UNet's cross-attention takes no per-token bias (ComfyUI 0.3.64 records the bias as an
    ``attention_mask`` that only Flux-type models read; its SD 1.x models ignore it and get the tokens
    unweighted). Conditions are copied, never changed.
    """
    if strength_type not in STRENGTH_TYPES:
        raise ValueError(f"strength_type must be one of {STRENGTH_TYPES}, got {strength_type!r}")
    if strength_type == "attn_bias" and strength != 1.0:
        raise ValueError(
            f"strength_type 'attn_bias' with strength {strength} is not supported: it weights the style tokens "
            "inside attention, which this UNet's cross-attention cannot do (ComfyUI ignores the weight for SD 1.x "
            "models and appends the tokens unweighted, i.e. strength 1.0); use strength_type 'multiply' to scale "
            "the tokens, or strength 1.0")
    if tokens.ndim != 3 or tokens.shape[0] != 1:
        raise ValueError(f"style tokens must be (1, N, C), got shape {tuple(tokens.shape)}")
    scaled = tokens * strength if strength_type == "multiply" else tokens
    out = []
    for cond in conditioning:
        if cond.context.shape[-1] != scaled.shape[-1]:
            raise ValueError(
                f"the style model gives {scaled.shape[-1]}-wide tokens but the conditioning is "
                f"{cond.context.shape[-1]} wide; the T2I style adapter is for SD 1.x text conditioning (768)")
        extra = scaled.to(device=cond.context.device, dtype=cond.context.dtype)
        extra = extra.expand(cond.context.shape[0], -1, -1)  # one token row for every prompt in the batch
        out.append(cond.with_(context=torch.cat([cond.context, extra], dim=1)))
    return out
