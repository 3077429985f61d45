"""Tiny CLIP vision towers and SD 2.1 unCLIP stand-in checkpoints with the released key names.

``to_open_clip`` writes a transformers-layout tower in open_clip's names, from the correspondence
open_clip documents (``visual.conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
``ln_post``, ``proj`` = the projection transposed), independently of the loader's conversion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sgm.nets.clip_vision import ClipVisionConfig, ClipVisionModel
from tests.sgm.model_factories import randomize_

TINY_VISION = ClipVisionConfig(width=64, layers=2, heads=2, mlp_width=128, patch_size=14, image_size=28,
                               projection_dim=32, activation="gelu")
VISION_HINTS = {"heads": TINY_VISION.heads}


def tiny_clip_vision(config: ClipVisionConfig = TINY_VISION, seed: int = 0) -> ClipVisionModel:
    torch.manual_seed(seed)
    model = ClipVisionModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.add_(1.0)
    return randomize_(model, seed, std=0.01).eval()  # type: ignore[return-value]


def to_open_clip(state_dict: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """transformers' names -> open_clip's (the text half of a full CLIPModel file is not expected)."""
    hf = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    out = {
        prefix + "class_embedding": hf.pop("vision_model.embeddings.class_embedding"),
        prefix + "conv1.weight": hf.pop("vision_model.embeddings.patch_embedding.weight"),
        prefix + "positional_embedding": hf.pop("vision_model.embeddings.position_embedding.weight"),
        prefix + "proj": hf.pop("visual_projection.weight").t().contiguous(),
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for leaf in ("weight", "bias"):
            out[f"{prefix}{theirs}.{leaf}"] = hf.pop(f"vision_model.{ours}.{leaf}")
    layers = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("vision_model.encoder.layers."))
    for n in range(layers):
        src, dst = f"vision_model.encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat([hf.pop(f"{src}self_attn.{p}_proj.{leaf}") for p in "qkv"])
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{theirs}.{leaf}"] = hf.pop(f"{src}{ours}.{leaf}")
    assert hf == {}, sorted(hf)
    return out


def write_clip_vision_file(path: Path, model: ClipVisionModel, *, layout: str = "transformers",
                           hints: dict[str, Any] | None = None) -> Path:
    """A standalone CLIP vision file (``models/clip_vision/``) in ``layout``."""
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if layout == "open_clip":
        state_dict = to_open_clip(state_dict)
    metadata = {"latentflow.config": json.dumps({"clip_vision": hints or VISION_HINTS})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(path), metadata=metadata)
    return path


def noise_augmentor_buffers() -> dict[str, torch.Tensor]:
    """The persistent ``noise_augmentor.*`` schedule buffers an SD 2.1 unCLIP checkpoint carries."""
    from sgm.sampling.unclip import squaredcos_cap_v2_alphas_cumprod

    alphas_cumprod = squaredcos_cap_v2_alphas_cumprod()
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    betas = 1 - alphas_cumprod / previous
    return {f"noise_augmentor.{k}": v.float() for k, v in {
        "betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(), "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
    }.items()}


def write_tiny_unclip_checkpoint(path: Path, text_state_dict: dict[str, torch.Tensor], *, context_dim: int,
                                 vision: ClipVisionModel | None, seed: int = 0) -> Path:
    """An SD 2.1 unCLIP stand-in: an SD 2.x UNet with a vector input (num_classes "sequential",
    adm_in_channels = 2 x the embedding width), OpenCLIP text, a VAE, the noise augmentor's
    buffers and (unless ``vision`` is None) the image tower as ``embedder.model.visual.*``."""
    from tests.sgm.model_factories import write_tiny_checkpoint

    embed_dim = vision.config.projection_dim if vision is not None else TINY_VISION.projection_dim
    extra = {**text_state_dict, **noise_augmentor_buffers()}
    if vision is not None:
        hf = {k: v.detach().contiguous() for k, v in vision.state_dict().items()}
        extra.update(to_open_clip(hf, "embedder.model.visual."))
    return write_tiny_checkpoint(path, "sd2", seed=seed, context_dim=context_dim, text_state_dict=extra,
                                 config={"clip_vision": VISION_HINTS}, num_classes="sequential",
                                 adm_in_channels=2 * embed_dim)
