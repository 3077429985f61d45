"""Tiny random-weight models and checkpoint files for tests (shared by every test layer).

Import as ``from tests.sgm.model_factories import ...`` (the root conftest puts the
repository on ``sys.path``). Everything is deterministic: weights come from a fixed
``torch.Generator`` seed, so two calls give identical models.

Our models (no diffusers needed):
  tiny_unet_config(family, ...)      UNetModel kwargs of a reduced-width model of the family
  tiny_unet(family, ...)              that UNetModel with random weights
  tiny_vae(...) / TINY_VAE_CONFIG     AutoencoderKL with 4 levels (f = 8, like the real one)
  write_tiny_checkpoint(path, ...)    a single-file .safetensors with original key names
                                      that ``sgm.io.checkpoints.load_checkpoint`` loads

Diffusers references (parity tests only):
  tiny_diffusers_unet(family), tiny_diffusers_vae(), write_diffusers_folder(path, ...)

Shapes: latents have 4 channels and 1/8 the image size; SDXL's vector ``y`` has
``pooled_dim + 6 * 256`` features, as in SDXL (6 size/crop values, 256-d Fourier features).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgm.nets.autoencoder import AutoencoderKL
from sgm.io.checkpoints import save_checkpoint
from sgm.nets.unet import UNetModel

FAMILIES = ("sd1", "sd2", "sdxl")
TINY_CONTEXT_DIM = 32
TINY_POOLED_DIM = 32
SDXL_SIZE_FEATURES = 6 * 256
TINY_VAE_CONFIG: dict[str, Any] = dict(
    ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, in_channels=3, out_ch=3, z_channels=4, embed_dim=4
)


def randomize_(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Perturb every parameter (norms included) deterministically, so that a mapping that swaps
    two same-shaped tensors (e.g. norm1 and norm2) changes the output and is caught."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return module


def tiny_unet_config(
    family: str = "sd1",
    *,
    in_channels: int = 4,
    context_dim: int = TINY_CONTEXT_DIM,
    pooled_dim: int = TINY_POOLED_DIM,
) -> dict[str, Any]:
    """UNetModel kwargs for a reduced-width model shaped like ``family`` (sd1 / sd2 / sdxl)."""
    if family == "sd1":
        return dict(in_channels=in_channels, model_channels=32, out_channels=4, num_res_blocks=1,
                    attention_resolutions=[1, 2], channel_mult=[1, 2], num_heads=8, context_dim=context_dim)
    if family == "sd2":
        return dict(in_channels=in_channels, model_channels=32, out_channels=4, num_res_blocks=1,
                    attention_resolutions=[1, 2], channel_mult=[1, 2], num_head_channels=16,
                    context_dim=context_dim, use_linear_in_transformer=True)
    if family == "sdxl":
        return dict(in_channels=in_channels, model_channels=32, out_channels=4, num_res_blocks=1,
                    attention_resolutions=[2, 4], channel_mult=[1, 2, 2], num_head_channels=16,
                    transformer_depth=[0, 1, 2], context_dim=context_dim, use_linear_in_transformer=True,
                    num_classes="sequential", adm_in_channels=pooled_dim + SDXL_SIZE_FEATURES)
    raise ValueError(f"tiny_unet_config: unknown family {family!r}; use one of {FAMILIES}")


def tiny_unet(family: str = "sd1", *, seed: int = 0, **config_overrides: Any) -> UNetModel:
    """Our UNetModel of ``tiny_unet_config(family)`` with deterministic random weights, eval mode."""
    torch.manual_seed(seed)  # default initialisers use the global generator
    config = tiny_unet_config(family, **{k: v for k, v in config_overrides.items() if k in ("in_channels", "context_dim", "pooled_dim")})
    config.update({k: v for k, v in config_overrides.items() if k not in ("in_channels", "context_dim", "pooled_dim")})
    return randomize_(UNetModel(**config), seed).eval()  # type: ignore[return-value]


def tiny_vae(*, seed: int = 0, residual_scale: float = 1.0) -> AutoencoderKL:
    """Our AutoencoderKL (4 levels, f = 8, widths 32-64) with deterministic random weights.

    ``residual_scale`` < 1 shrinks every residual branch (ResnetBlock ``conv2``, attention
    ``proj_out``): a random decoder is chaotic (padding effects reach across the image), a
    trained one is local and smooth; a small scale mimics the latter for tiling tests.
    """
    torch.manual_seed(seed)
    vae = randomize_(AutoencoderKL(**TINY_VAE_CONFIG), seed).eval()
    if residual_scale != 1.0:
        with torch.no_grad():
            for name, module in vae.named_modules():
                if name.endswith(("conv2", "proj_out")):
                    module.weight.mul_(residual_scale)
    return vae  # type: ignore[return-value]


def unet_metadata_hints(family: str) -> dict[str, Any]:
    """The head layout of ``tiny_unet_config(family)`` (shapes cannot tell it), for latentflow.config."""
    config = tiny_unet_config(family)
    if config.get("num_head_channels", -1) != -1:
        return {"num_head_channels": config["num_head_channels"]}
    return {"num_heads": config["num_heads"]}


def write_tiny_checkpoint(
    path: str | Path,
    family: str = "sd1",
    *,
    inpaint: bool = False,
    seed: int = 0,
    text_state_dict: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
    prediction: str = "eps",
    with_vae: bool = True,
    config: dict[str, Any] | None = None,
    **unet_overrides: Any,
) -> Path:
    """Write a tiny single-file checkpoint of ``family`` with original key names; returns the path.

    ``text_state_dict`` (keys prefixed ``cond_stage_model.``/``conditioner.embedders.``) is
    stored as given. ``config`` entries join the ``latentflow.config`` hints (e.g.
    ``zero_terminal_snr``). ``metadata`` entries are added next to ``latentflow.config``;
    pass ``{"latentflow.family": "..."}`` to name a custom family.
    """
    unet = tiny_unet(family, seed=seed, in_channels=9 if inpaint else 4, **unet_overrides)
    vae = tiny_vae(seed=seed + 1) if with_vae else None
    hints = {"unet": unet_metadata_hints(family), "prediction": prediction, **(config or {})}
    full_metadata = {"latentflow.config": json.dumps(hints), **(metadata or {})}
    return save_checkpoint(path, unet=unet, vae=vae, text_state_dict=text_state_dict, metadata=full_metadata)


# ------------------------------------------------------------------ diffusers references

def tiny_diffusers_unet_kwargs(family: str) -> dict[str, Any]:
    """diffusers UNet2DConditionModel kwargs equivalent to ``tiny_unet_config(family)``."""
    common: dict[str, Any] = dict(sample_size=16, cross_attention_dim=TINY_CONTEXT_DIM, norm_num_groups=32)
    if family == "sd1":
        return dict(common, block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
    if family == "sd2":
        # SD2 shape: linear projections, 64-channel heads (diffusers counts heads per level).
        return dict(common, block_out_channels=(64, 128), layers_per_block=2,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(1, 2),
                    use_linear_projection=True)
    if family == "sdxl":
        return dict(common, block_out_channels=(32, 64, 64), layers_per_block=1,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(2, 4, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1, 2),
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=TINY_POOLED_DIM + SDXL_SIZE_FEATURES)
    raise ValueError(f"tiny_diffusers_unet_kwargs: unknown family {family!r}; use one of {FAMILIES}")


def tiny_diffusers_unet(family: str, *, seed: int = 0) -> nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return randomize_(UNet2DConditionModel(**tiny_diffusers_unet_kwargs(family)), seed).eval()


def tiny_diffusers_vae(*, seed: int = 0) -> nn.Module:
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(seed)
    widths = tuple(TINY_VAE_CONFIG["ch"] * m for m in TINY_VAE_CONFIG["ch_mult"])
    vae = DiffusersVAE(block_out_channels=widths, layers_per_block=1, latent_channels=4, norm_num_groups=32,
                       down_block_types=("DownEncoderBlock2D",) * len(widths),
                       up_block_types=("UpDecoderBlock2D",) * len(widths), sample_size=64)
    return randomize_(vae, seed).eval()


def write_diffusers_folder(
    path: str | Path, *, unet: nn.Module | None = None, vae: nn.Module | None = None,
    prediction_type: str = "epsilon",
) -> Path:
    """A diffusers-style pipeline folder (unet/, vae/, scheduler/, model_index.json)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name, model in (("unet", unet), ("vae", vae)):
        if model is not None:
            model.save_pretrained(folder / name, safe_serialization=True)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "EulerDiscreteScheduler", "prediction_type": prediction_type})
    )
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def sdxl_vector(pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL's ``y``: pooled text (B, P) and 6 size/crop values (B, 6) -> (B, P + 6*256)."""
    from sgm.nets.unet import timestep_embedding

    features = timestep_embedding(time_ids.flatten(), 256).reshape(time_ids.shape[0], -1)
    return torch.cat([pooled, features], dim=1)
