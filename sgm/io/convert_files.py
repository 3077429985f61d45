"""File conversion: single file <-> diffusers folder, ``.ckpt`` -> ``.safetensors``, EMA, dtypes.

Built on the key mappings of ``sgm.io.convert`` (UNet, VAE) and ``sgm.io.convert_text``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sgm.io.convert import (
    unet_config_from_diffusers,
    unet_diffusers_config,
    unet_diffusers_to_original,
    unet_original_to_diffusers,
    vae_diffusers_config,
    vae_diffusers_to_original,
    vae_original_to_diffusers,
)


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Training-only state that inference never reads: EMA shadows, losses (VAE discriminator,
# LPIPS), optimizer and scheduler states.
_TRAINING_PREFIXES = ("model_ema.", "loss.", "optimizer", "lr_scheduler", "ema.")


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion wrote and what it left out (with why)."""

    destination: Path
    family: str
    tensors_written: int
    dropped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return dict(state_dict)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        # safetensors refuses tensors sharing memory (tied weights in pickles): store copies.
        out[key] = tensor.clone() if ident in seen else tensor
        seen.add(ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=metadata)


def apply_ema(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Replace ``model.*`` weights by their ldm EMA shadows; returns (new dict, count replaced).

    ldm's LitEma stores ``model.diffusion_model.a.b`` as ``model_ema.diffusion_modelab``
    (dots removed), so the shadow name is derived, not looked up.
    """
    out = dict(state_dict)
    replaced = 0
    for key in state_dict:
        if key.startswith("model."):
            shadow = "model_ema." + key[len("model."):].replace(".", "")
            if shadow in state_dict:
                out[key] = state_dict[shadow]
                replaced += 1
    return out, replaced


def convert_single_file(
    src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None, ema: bool = False
) -> ConversionReport:
    """``.ckpt``/``.pt``/``.safetensors`` -> ``.safetensors``: EMA, dtype, training state dropped."""
    from sgm.io.state_dict import detect_family, read_state_dict

    state_dict, metadata = read_state_dict(src)
    warnings: list[str] = []
    if ema:
        state_dict, replaced = apply_ema(state_dict)
        if not replaced:
            warnings.append("--ema: the file has no model_ema.* weights; kept the model weights")
    dropped = tuple(sorted(k for k in state_dict if k.startswith(_TRAINING_PREFIXES)))
    kept = {k: v for k, v in state_dict.items() if not k.startswith(_TRAINING_PREFIXES)}
    family = detect_family(kept, metadata) if any(k.startswith("model.diffusion_model.") for k in kept) else "unknown"
    metadata = {**metadata, "latentflow.converted_from": Path(src).name}
    _write_safetensors(Path(dst), _cast(kept, dtype), metadata)
    return ConversionReport(Path(dst), family, len(kept), dropped, tuple(warnings))


def _read_component(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Weights and config.json of ``folder/name`` (e.g. ``unet``), or None where absent."""
    from sgm.io.state_dict import read_state_dict

    part = folder / name
    if not part.is_dir():
        return None
    candidates = [p for stem in ("diffusion_pytorch_model", "model") for suffix in (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin")
                  if (p := part / f"{stem}{suffix}").is_file()]
    if not candidates:
        raise FileNotFoundError(f"{part}: no diffusion_pytorch_model/model .safetensors or .bin weights")
    state_dict, _ = read_state_dict(candidates[0])
    config_path = part / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return state_dict, config


def diffusers_to_single_file(
    src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None
) -> ConversionReport:
    """A diffusers pipeline folder (unet/, vae/, text_encoder/, text_encoder_2/) -> one safetensors."""
    from sgm.io.state_dict import UNET_PREFIX, VAE_PREFIX, detect_family

    folder = Path(src)
    if not (folder / "model_index.json").is_file() and not (folder / "unet").is_dir():
        raise FileNotFoundError(f"{folder}: not a diffusers folder (no model_index.json and no unet/)")
    tensors: dict[str, torch.Tensor] = {}
    hints: dict[str, Any] = {}
    warnings: list[str] = []
    unet = _read_component(folder, "unet")
    if unet is not None:
        tensors.update({UNET_PREFIX + k: v for k, v in unet_diffusers_to_original(unet[0]).items()})
        if unet[1]:
            hints["unet"] = unet_config_from_diffusers(unet[1])
    vae = _read_component(folder, "vae")
    if vae is not None:
        tensors.update({VAE_PREFIX + k: v for k, v in vae_diffusers_to_original(vae[0]).items()})
        if "scaling_factor" in vae[1]:
            hints["scale_factor"] = float(vae[1]["scaling_factor"])
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        prediction = json.loads(scheduler.read_text()).get("prediction_type", "epsilon")
        hints["prediction"] = "v" if prediction == "v_prediction" else "eps"
    te1, te2 = _read_component(folder, "text_encoder"), _read_component(folder, "text_encoder_2")
    if te1 is None and te2 is not None:
        family = "sdxl-refiner"
    elif te2 is not None:
        family = "sdxl"
    else:
        family = detect_family({k: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}, {}) if unet else "unknown"
    if te1 is not None or te2 is not None:
        try:
            from sgm.io.convert_text import text_diffusers_to_original
        except ImportError as error:
            warnings.append(f"text encoders skipped: sgm.io.convert_text unavailable ({error})")
        else:
            tensors.update(text_diffusers_to_original(family, te1[0] if te1 else None, te2[0] if te2 else None))
    if hints.get("prediction") == "v" and family == "sd2":
        family = "sd2-v"
    metadata = {"latentflow.converted_from": "diffusers", "latentflow.config": json.dumps(hints)}
    _write_safetensors(Path(dst), _cast(tensors, dtype), metadata)
    return ConversionReport(Path(dst), family, len(tensors), (), tuple(warnings))


def single_file_to_diffusers(
    src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None, ema: bool = False
) -> ConversionReport:
    """One single-file checkpoint -> a diffusers folder (unet/, vae/, text encoders, configs)."""
    from sgm.io.checkpoints import (
        SCALE_FACTORS, UNET_PREFIX, VAE_PREFIX, TEXT_PREFIXES, config_hints, detect_family,
        detect_prediction, infer_unet_config, infer_vae_config, read_state_dict, strip_prefix,
    )

    state_dict, metadata = read_state_dict(src)
    warnings: list[str] = []
    if ema:
        state_dict, replaced = apply_ema(state_dict)
        if not replaced:
            warnings.append("--ema: the file has no model_ema.* weights; kept the model weights")
    family = detect_family(state_dict, metadata)
    hints = config_hints(metadata)
    folder = Path(dst)
    written = 0
    unet_sd = strip_prefix(state_dict, UNET_PREFIX)
    if unet_sd:
        config = infer_unet_config(unet_sd, family, hints.get("unet"))
        _write_part(folder / "unet", "diffusion_pytorch_model", _cast(unet_original_to_diffusers(unet_sd), dtype),
                    unet_diffusers_config(config))
        written += len(unet_sd)
    vae_sd = strip_prefix(state_dict, VAE_PREFIX)
    scale = float(hints.get("scale_factor", SCALE_FACTORS["sdxl" if family.startswith("sdxl") else "sd"]))
    if vae_sd:
        config = infer_vae_config(vae_sd, hints.get("vae"))
        _write_part(folder / "vae", "diffusion_pytorch_model", _cast(vae_original_to_diffusers(vae_sd), dtype),
                    vae_diffusers_config(config, scale))
        written += len(vae_sd)
    text_sd = {k: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIXES)}
    if text_sd:
        try:
            from sgm.io.convert_text import text_original_to_diffusers
        except ImportError as error:
            warnings.append(f"text encoders skipped: sgm.io.convert_text unavailable ({error})")
        else:
            try:
                from sgm.io.convert_text import diffusers_text_config
            except ImportError:
                diffusers_text_config = None  # type: ignore[assignment]
            for index, (name, part) in enumerate(zip(("text_encoder", "text_encoder_2"), text_original_to_diffusers(family, text_sd))):
                if part:
                    config = diffusers_text_config(family, part, second=index == 1) if diffusers_text_config else None
                    _write_part(folder / name, "model", _cast(part, dtype), config)
                    written += len(part)
            warnings.append("tokenizer/ folders are not written (single files carry no tokenizer): copy them from the base model")
    prediction = detect_prediction(state_dict, metadata, family)
    pipeline = "StableDiffusionXLPipeline" if family.startswith("sdxl") else "StableDiffusionPipeline"
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
        "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction" if prediction == "v" else "epsilon",
    }, indent=2))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "latentflow_family": family}, indent=2))
    return ConversionReport(folder, family, written, (), tuple(warnings))


def _write_part(folder: Path, stem: str, tensors: dict[str, torch.Tensor], config: dict[str, Any] | None) -> None:
    _write_safetensors(folder / f"{stem}.safetensors", tensors, {"format": "pt"})
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))


def convert(src: str | Path, dst: str | Path, *, dtype: torch.dtype | None = None, ema: bool = False) -> ConversionReport:
    """Dispatch on the formats: folder -> file, file -> folder, or file -> ``.safetensors`` file."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        if ema:
            raise ValueError("--ema applies to single-file training checkpoints, not diffusers folders")
        if dst.suffix != ".safetensors":
            raise ValueError(f"converting the diffusers folder {src} needs a .safetensors destination, got {dst}")
        return diffusers_to_single_file(src, dst, dtype=dtype)
    if not src.is_file():
        raise FileNotFoundError(f"source {src} does not exist")
    if dst.suffix == ".safetensors":
        return convert_single_file(src, dst, dtype=dtype, ema=ema)
    if dst.suffix:
        raise ValueError(f"destination {dst} must be a .safetensors file or a folder (no suffix)")
    return single_file_to_diffusers(src, dst, dtype=dtype, ema=ema)
