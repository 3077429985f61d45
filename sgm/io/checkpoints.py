"""Load and save single-file checkpoints (SD 1.x / 2.x / SDXL / refiner / inpaint / our own).

Architecture is read from tensor shapes (``infer_unet_config``/``infer_vae_config``), so
reduced-width test checkpoints load through the same code as the released ones.
Models are built on the meta device and their parameters are *assigned* the tensors read
from a memory-mapped safetensors file: a load holds one copy of the weights, and only the
pages actually used become resident. ``.ckpt``/``.pt`` files load only through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from sgm.nets.autoencoder import AutoencoderKL
from sgm.devices import default_dtype
from sgm.io.state_dict import (
    TEXT_PREFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointError,
    detect_family,
    read_state_dict,
    strip_prefix,
)
from sgm.nets.unet import UNetModel

logger = logging.getLogger(__name__)

SCALE_FACTORS = {"sdxl": 0.13025, "sd": 0.18215}
Prediction = Literal["eps", "v"]


def config_hints(metadata: dict[str, str]) -> dict[str, Any]:
    """A file's ``latentflow.config`` metadata (hints shapes cannot tell: head layout, prediction, ...), {} if none."""
    raw = metadata.get("latentflow.config")
    if not raw:
        return {}
    try:
        hints = json.loads(raw)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"metadata latentflow.config is not valid JSON ({error}): {raw[:200]!r}") from error
    if not isinstance(hints, dict):
        raise CheckpointError(f"metadata latentflow.config must be a JSON object, found {type(hints).__name__}")
    return hints


# ---------------------------------------------------------------------------- architecture


def _count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive integer children ``prefix.0``, ``prefix.1``, ... present."""
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)
               and k[len(prefix):].split(".", 1)[0].isdigit()}
    return max(indices) + 1 if indices else 0


_UNET_HINT_FIELDS = {"num_heads", "num_head_channels", "dropout", "use_checkpoint"}


def infer_unet_config(
    state_dict: dict[str, torch.Tensor], family: str = "sd1", hints: dict[str, Any] | None = None
) -> dict[str, Any]:
    """UNetModel keyword arguments read from an (unprefixed, original-layout) UNet state dict.

    Head count cannot be read from shapes: SD1 uses 8 heads, SD2/SDXL 64-channel heads;
    ``hints`` (from ``latentflow.config``'s ``"unet"``) override that.
    """
    if "input_blocks.0.0.weight" not in state_dict or "out.2.weight" not in state_dict:
        found = sorted(state_dict)[:8]
        raise CheckpointError(
            "not an ldm/sgm UNet: input_blocks.0.0.weight / out.2.weight missing "
            f"(first keys found: {found}); diffusers-layout UNets convert with `python main.py convert`"
        )
    conv_in = state_dict["input_blocks.0.0.weight"]  # (mc, in, 3, 3)
    model_channels, in_channels = conv_in.shape[:2]
    n_input = _count(state_dict, "input_blocks.")
    downsamplers = [n for n in range(n_input) if f"input_blocks.{n}.0.op.weight" in state_dict]
    num_res_blocks = downsamplers[0] - 1 if downsamplers else n_input - 1
    levels = len(downsamplers) + 1
    channel_mult, depths, attention_resolutions = [], [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        out_ch = state_dict[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]
        channel_mult.append(out_ch // model_channels)
        depth = _count(state_dict, f"input_blocks.{first}.1.transformer_blocks.")
        depths.append(depth)
        if depth:
            attention_resolutions.append(2**level)
    attn2 = next((v for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in state_dict.items() if k.endswith(".1.proj_in.weight")), None)
    config: dict[str, Any] = dict(
        in_channels=in_channels,
        model_channels=model_channels,
        out_channels=state_dict["out.2.weight"].shape[0],
        num_res_blocks=num_res_blocks,
        attention_resolutions=attention_resolutions,
        channel_mult=channel_mult,
        transformer_depth=depths,
        transformer_depth_middle=_count(state_dict, "middle_block.1.transformer_blocks."),
        context_dim=None if attn2 is None else attn2.shape[1],
        use_linear_in_transformer=proj_in is not None and proj_in.ndim == 2,
    )
    if "label_emb.0.0.weight" in state_dict:
        config.update(num_classes="sequential", adm_in_channels=state_dict["label_emb.0.0.weight"].shape[1])
    elif "label_emb.weight" in state_dict:
        config.update(num_classes=state_dict["label_emb.weight"].shape[0])
    if family.startswith("sd1"):
        config.update(num_heads=8, num_head_channels=-1)
    else:
        config.update(num_heads=-1, num_head_channels=64)
    hints = dict(hints or {})
    unknown = set(hints) - _UNET_HINT_FIELDS
    if unknown:
        raise CheckpointError(f"latentflow.config unet hints {sorted(unknown)} unknown; allowed: {sorted(_UNET_HINT_FIELDS)}")
    if "num_heads" in hints and "num_head_channels" not in hints:
        hints["num_head_channels"] = -1
    if "num_head_channels" in hints and "num_heads" not in hints:
        hints["num_heads"] = -1
    config.update(hints)
    return config


def infer_vae_config(state_dict: dict[str, torch.Tensor], hints: dict[str, Any] | None = None) -> dict[str, Any]:
    """AutoencoderKL keyword arguments read from an (unprefixed, original-layout) VAE state dict."""
    required = ("encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"not an ldm AutoencoderKL: {missing} missing (first keys found: {sorted(state_dict)[:8]})"
        )
    ch, in_channels = state_dict["encoder.conv_in.weight"].shape[:2]
    levels = _count(state_dict, "encoder.down.")
    resolution = 256  # only the *relative* resolution of attention levels matters
    config: dict[str, Any] = dict(
        ch=ch,
        ch_mult=[state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
        num_res_blocks=_count(state_dict, "encoder.down.0.block."),
        in_channels=in_channels,
        out_ch=state_dict["decoder.conv_out.weight"].shape[0],
        z_channels=state_dict["encoder.conv_out.weight"].shape[0] // 2,
        embed_dim=state_dict["quant_conv.weight"].shape[0] // 2,
        resolution=resolution,
        attn_resolutions=[resolution // 2**i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state_dict],
    )
    config.update({k: v for k, v in (hints or {}).items() if k in config or k == "dropout"})
    return config


def detect_prediction(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], family: str) -> Prediction:
    hint = config_hints(metadata).get("prediction")
    spec = metadata.get("modelspec.prediction_type", "")
    value = hint or {"epsilon": "eps", "eps": "eps", "v": "v", "v_prediction": "v"}.get(spec)
    if value is None:
        value = "v" if ("v_pred" in state_dict or family.endswith("-v")) else "eps"
    if value not in ("eps", "v"):
        raise CheckpointError(f'prediction must be "eps" or "v", metadata says {value!r}')
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------- build


def _target_dtype(tensors: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    stored = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    if device.type == "cpu" and stored == torch.float16:
        return default_dtype(device)  # fp16 kernels on CPU are slow or missing
    return stored


def assign_weights(
    module: nn.Module, state_dict: dict[str, torch.Tensor], *, device: torch.device | str, dtype: torch.dtype | None, what: str
) -> nn.Module:
    """Give a meta-device ``module`` the tensors of ``state_dict`` without an extra copy.

    Tensors already on ``device`` in ``dtype`` are used as they are (memory-mapped ones stay
    mapped); others are converted one by one. Missing or unexpected keys raise, by name.
    """
    device = torch.device(device)
    expected = module.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: {len(missing)} missing key(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}; "
            "the file does not match the architecture read from its shapes (a different or damaged model?)"
        )
    dtype = _target_dtype(state_dict, device, dtype)
    tensors = {}
    for key, tensor in state_dict.items():
        want = expected[key].shape
        if tensor.shape != want:
            if tensor.numel() == want.numel() and (tensor.ndim == 2 or len(want) == 2):
                tensor = tensor.reshape(want)  # (C, C) linear <-> (C, C, 1, 1) conv of the same map
            else:
                raise CheckpointError(f"{what}: {key} has shape {tuple(tensor.shape)}, expected {tuple(want)}")
        target = dtype if tensor.is_floating_point() else tensor.dtype
        tensors[key] = tensor.to(device=device, dtype=target)
    module.load_state_dict(tensors, strict=True, assign=True)
    return module.eval()


def controlnet_config(state_dict: dict[str, torch.Tensor], hints: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ControlNet`` keyword arguments read from bare cldm keys (heads from ``hints`` or the family:
    8 heads for SD 1.x, 64-channel heads for SD 2.x / SDXL, as in ``infer_unet_config``)."""
    if "label_emb.0.0.weight" in state_dict:
        family = "sdxl"
    elif any(k.endswith("proj_in.weight") and v.ndim == 2 for k, v in state_dict.items()):
        family = "sd2"
    else:
        family = "sd1"
    shapes = dict(state_dict)
    shapes["out.2.weight"] = torch.empty(4, 1, 1, 1, device="meta")  # a ControlNet has no output layer
    config = infer_unet_config(shapes, family, hints)
    config.pop("out_channels")
    config["hint_channels"] = state_dict["input_hint_block.0.weight"].shape[1]
    return config


def build_unet(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any], *, device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> UNetModel:
    with torch.device("meta"):
        unet = UNetModel(**config)
    return assign_weights(unet, state_dict, device=device, dtype=dtype, what="UNet")  # type: ignore[return-value]


def build_vae(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any], *, device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> AutoencoderKL:
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    return assign_weights(vae, state_dict, device=device, dtype=dtype, what="VAE")  # type: ignore[return-value]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded model: its parts, family and the constants sampling needs."""

    path: Path
    family: str
    prediction: Prediction
    scale_factor: float
    unet: UNetModel | None
    vae: AutoencoderKL | None
    conditioner: Any | None = None
    text_encoders: list[nn.Module] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Trained on the zero-terminal-SNR rescaled schedule (Lin et al. 2024); from the file's
    # latentflow.config "zero_terminal_snr" (v-prediction models only).
    zero_terminal_snr: bool = False

    def model_sampling(self, prediction: Prediction | None = None) -> Any:
        """The noise schedule this model was trained on (``sgm.sampling.denoisers.DiscreteModelSampling``).

        ``prediction`` overrides the file's; an eps override drops the zero-terminal-SNR
        rescale (undefined for eps).
        """
        from sgm.sampling.denoisers import model_sampling_for

        prediction = prediction or self.prediction
        return model_sampling_for(prediction, zero_terminal_snr=self.zero_terminal_snr and prediction == "v")

    def encode_text(self, prompts: list[str], **kwargs: Any) -> Any:
        """Encode prompts with this checkpoint's text encoders (see ``sgm.text.encoders``)."""
        if self.conditioner is None:
            raise RuntimeError(
                f"{self.path.name} ({self.family}) has no text encoder loaded: the file carries no "
                "cond_stage_model./conditioner.embedders. weights, or sgm.text.encoders is not installed; "
                "load a full checkpoint or pair this model with a separate text encoder"
            )
        return self.conditioner.encode_text(prompts, **kwargs)


def _build_conditioner(
    text_state_dict: dict[str, torch.Tensor], family: str, metadata: dict[str, str], path: Path,
    device: torch.device | str, dtype: torch.dtype | None,
) -> Any | None:
    try:
        from sgm.text.encoders import build_conditioner
    except ImportError as error:
        logger.warning("text encoders not loaded (%s); Checkpoint.encode_text will be unavailable", error)
        return None
    return build_conditioner(text_state_dict, family, metadata, model_path=path, device=device, dtype=dtype)


def load_checkpoint(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
    load_text: bool = True,
) -> Checkpoint:
    """Load a single-file checkpoint; architecture, family and prediction come from the file.

    ``dtype=None`` keeps the stored precision (fp16 files on CPU get the CPU policy dtype).
    """
    path = Path(path)
    state_dict, metadata = read_state_dict(path)
    family = detect_family(state_dict, metadata)
    hints = config_hints(metadata)
    unet_sd, vae_sd = strip_prefix(state_dict, UNET_PREFIX), strip_prefix(state_dict, VAE_PREFIX)
    unet = build_unet(unet_sd, infer_unet_config(unet_sd, family, hints.get("unet")), device=device, dtype=dtype) if unet_sd else None
    vae = build_vae(vae_sd, infer_vae_config(vae_sd, hints.get("vae")), device=device, dtype=dtype) if vae_sd else None
    text_sd = {k: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIXES)}
    conditioner = _build_conditioner(text_sd, family, metadata, path, device, dtype) if (load_text and text_sd) else None
    default_scale = SCALE_FACTORS["sdxl"] if family.startswith("sdxl") else SCALE_FACTORS["sd"]
    prediction = detect_prediction(state_dict, metadata, family)
    if family == "sd2" and prediction == "v":
        family = "sd2-v"  # the 768-v model: same shapes as sd2, told apart by metadata
    return Checkpoint(
        path=path,
        family=family,
        prediction=prediction,
        scale_factor=float(hints.get("scale_factor", default_scale)),
        unet=unet,
        vae=vae,
        conditioner=conditioner,
        text_encoders=list(getattr(conditioner, "modules", []) or []),
        metadata=metadata,
        zero_terminal_snr=_zero_terminal_snr(hints, prediction, path),
    )


def _zero_terminal_snr(hints: dict[str, Any], prediction: Prediction, path: Path) -> bool:
    value = hints.get("zero_terminal_snr", False)
    if not isinstance(value, bool):
        raise CheckpointError(f"{path.name}: latentflow.config zero_terminal_snr must be true or false, found {value!r}")
    if value and prediction != "v":
        raise CheckpointError(f"{path.name}: latentflow.config has zero_terminal_snr true with {prediction!r} "
                              "prediction; a zero-terminal-SNR model must be a v-prediction model")
    return value


def load_vae(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> AutoencoderKL:
    """A standalone VAE file: original keys (with or without ``first_stage_model.``) or diffusers keys."""
    state_dict, metadata = read_state_dict(path)
    if any(k.startswith(VAE_PREFIX) for k in state_dict):
        state_dict = strip_prefix(state_dict, VAE_PREFIX)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state_dict):
        from sgm.io.convert import vae_diffusers_to_original

        state_dict = vae_diffusers_to_original(state_dict)
    # Training checkpoints of the VAE carry a discriminator and LPIPS under loss.*.
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("loss.", "model_ema."))}
    hints = config_hints(metadata).get("vae")
    return build_vae(state_dict, infer_vae_config(state_dict, hints), device=device, dtype=dtype)


def load_unet(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
    family: str | None = None,
) -> UNetModel:
    """A UNet-only file: original keys with or without ``model.diffusion_model.``, or diffusers keys."""
    state_dict, metadata = read_state_dict(path)
    if any(k.startswith(UNET_PREFIX) for k in state_dict):
        state_dict = strip_prefix(state_dict, UNET_PREFIX)
    if "conv_in.weight" in state_dict and "time_embedding.linear_1.weight" in state_dict:
        from sgm.io.convert import unet_diffusers_to_original

        state_dict = unet_diffusers_to_original(state_dict)
    if family is None:
        family = detect_family({UNET_PREFIX + k: v for k, v in state_dict.items()}, metadata)
    config = infer_unet_config(state_dict, family, config_hints(metadata).get("unet"))
    return build_unet(state_dict, config, device=device, dtype=dtype)


def save_checkpoint(
    path: str | Path,
    *,
    unet: nn.Module | None = None,
    vae: nn.Module | None = None,
    text_state_dict: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a single-file safetensors with the original key names; returns the path.

    ``text_state_dict`` keys must already carry their ``cond_stage_model.`` /
    ``conditioner.embedders.`` prefixes. Metadata values must be strings.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in ((UNET_PREFIX, unet), (VAE_PREFIX, vae)):
        if module is not None:
            tensors.update({prefix + k: v for k, v in module.state_dict().items()})
    tensors.update(text_state_dict or {})
    if not tensors:
        raise ValueError("save_checkpoint: nothing to save (give unet, vae and/or text_state_dict)")
    bad = {k: type(v).__name__ for k, v in (metadata or {}).items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"save_checkpoint: metadata values must be str (json.dumps them), got {bad}")
    out = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().to("cpu").contiguous()
        for k, v in tensors.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=dict(metadata or {}))
    return path
