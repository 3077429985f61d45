"""Load ControlNet and T2I-Adapter files by content (``sgm.nets.controlnet``, ``sgm.nets.t2i_adapter``).

Layouts recognised from the keys:

ControlNet, ldm/cldm    ``control_model.<key>`` (a full cldm checkpoint) or the bare keys
                        (``control_v11p_sd15_*.safetensors``, SDXL ControlNets in ldm form):
                        ``input_blocks.*``, ``middle_block.*``, ``zero_convs.N.0``,
                        ``middle_block_out.0``, ``input_hint_block.{0,2,..,14}``, ``time_embed``,
                        ``label_emb``.
ControlNet, diffusers   ``controlnet_cond_embedding.conv_in / blocks.i / conv_out`` =
                        ``input_hint_block.0 / 2(i+1) / 14``, ``controlnet_down_blocks.N`` =
                        ``zero_convs.N.0``, ``controlnet_mid_block`` = ``middle_block_out.0``,
                        and the UNet encoder's names (``sgm.io.convert``).
"diff" ControlNet       a cldm file with a ``difference`` marker: its encoder weights are stored
                        as differences from a UNet's and need that UNet (DiffControlNetLoader).
Union ControlNet        either ControlNet layout plus ``task_embedding``, ``control_add_embedding.*``,
                        ``transformer_layes.N.*`` and ``spatial_ch_projs`` (``sgm.nets.controlnet_union``).
                        xinsir's released single files use the diffusers names (attention as
                        ``attn.in_proj_weight``); ComfyUI's renamed ``attn.in_proj.weight`` is read too.
Control-LoRA            Stability AI's ``control-lora-*``: a ``lora_controlnet`` marker, ``<layer>.up`` /
                        ``<layer>.down`` low-rank factors of the difference between a ControlNet layer
                        and the UNet's, and full tensors (hint encoder, zero convolutions, biases,
                        norms). Completed by the UNet it is sampled with (``sgm.io.control_lora.ControlLoRA``).
T2I-Adapter, full       ``conv_in``, ``body.N.block1/block2/in_conv/skep`` (TencentARC) or
                        diffusers' ``adapter.conv_in``, ``adapter.body.L.in_conv``,
                        ``adapter.body.L.resnets.j.block1/2`` (= ``body.{L R + j}``); SD (8x
                        unshuffle) and SDXL (16x, ``full_adapter_xl``).
T2I-Adapter, light      ``body.L.in_conv / body.L.body.j.block1/2 / body.L.out_conv`` or diffusers'
                        ``adapter.body.L.in_conv / resnets.j / out_conv``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgm.io.checkpoints import assign_weights, config_hints, controlnet_config
from sgm.io.convert import unet_diffusers_to_original
from sgm.io.state_dict import CheckpointError, read_state_dict
from sgm.io.control_lora import CONTROL_LORA_MARKER, ControlLoRA
from sgm.nets.controlnet import ControlNet
from sgm.nets.controlnet_union import UNION_PREFIXES, UnionControlNet
from sgm.nets.t2i_adapter import LightT2IAdapter, T2IAdapter

LDM_PREFIX = "control_model."
DIFF_MARKER = "difference"


def control_kind(state_dict: dict[str, torch.Tensor]) -> str:
    """"controlnet-ldm", "controlnet-diffusers", "control-lora", "t2i-adapter[-light][-diffusers]".

    A union ControlNet is one of the ControlNet layouts (``is_union``)."""
    keys = state_dict.keys()
    if CONTROL_LORA_MARKER in keys:
        return "control-lora"
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "controlnet-diffusers"
    if LDM_PREFIX + "input_hint_block.0.weight" in keys or "input_hint_block.0.weight" in keys:
        return "controlnet-ldm"
    if "adapter.body.0.out_conv.weight" in keys and "adapter.body.0.resnets.0.block1.weight" in keys:
        return "t2i-adapter-light-diffusers"
    if "body.0.out_conv.weight" in keys and "body.0.body.0.block1.weight" in keys:
        return "t2i-adapter-light"
    if "adapter.conv_in.weight" in keys and "adapter.body.0.resnets.0.block1.weight" in keys:
        return "t2i-adapter-diffusers"
    if "conv_in.weight" in keys and "body.0.block1.weight" in keys:
        return "t2i-adapter"
    raise CheckpointError(
        "not a ControlNet or T2I-Adapter file this loader knows: expected input_hint_block.* (ldm), "
        "controlnet_cond_embedding.* (diffusers) or conv_in/body.* (T2I-Adapter); first keys found: "
        f"{sorted(keys)[:8]} (style T2I-Adapters are not supported)")


def controlnet_diffusers_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``ControlNetModel`` keys -> bare cldm keys (tensors shared)."""
    out: dict[str, torch.Tensor] = {}
    encoder: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("controlnet_cond_embedding."):
            rest = key[len("controlnet_cond_embedding."):]
            name, _, param = rest.rpartition(".")
            if name == "conv_in":
                index = 0
            elif name == "conv_out":
                index = 14
            elif re.fullmatch(r"blocks\.\d+", name):
                index = 2 * (int(name.split(".")[1]) + 1)
            else:
                raise CheckpointError(f"diffusers ControlNet key {key!r}: unknown hint-encoder layer")
            out[f"input_hint_block.{index}.{param}"] = tensor
        elif key.startswith("controlnet_down_blocks."):
            index, param = key[len("controlnet_down_blocks."):].split(".", 1)
            out[f"zero_convs.{index}.0.{param}"] = tensor
        elif key.startswith("controlnet_mid_block."):
            out[f"middle_block_out.0.{key[len('controlnet_mid_block.'):]}"] = tensor
        elif key.startswith(UNION_PREFIXES):
            out[key] = tensor
        elif key.startswith("add_embedding.") or key.startswith(("time_embedding.", "conv_in.", "down_blocks.",
                                                                    "mid_block.", "class_embedding.")):
            encoder[key] = tensor
        else:
            raise CheckpointError(f"diffusers ControlNet key {key!r} has no counterpart in the cldm ControlNet")
    out.update(unet_diffusers_to_original(encoder))
    return out


def is_union(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether bare or diffusers ControlNet keys hold a union ControlNet (control-type embedding)."""
    return "control_add_embedding.linear_1.weight" in state_dict


def union_config(state_dict: dict[str, torch.Tensor], hints: dict[str, Any]) -> dict[str, Any]:
    """The ``UnionControlNet`` arguments beyond the ControlNet's, read from its union keys (the token
    transformer's head count from ``hints["union_heads"]``, else 8 as in every released model)."""
    types, channels = state_dict["task_embedding"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("transformer_layes."))
    type_inputs = state_dict["control_add_embedding.linear_1.weight"].shape[1]
    if type_inputs % types:
        raise CheckpointError(f"union ControlNet: control_add_embedding takes {type_inputs} features, not a "
                              f"multiple of its {types} control types")
    return dict(num_control_types=types, token_channels=channels, token_layers=layers,
                token_heads=int(hints.get("union_heads", 8)), type_features=type_inputs // types)


def _union_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's ``attn.in_proj.weight`` -> torch's ``attn.in_proj_weight`` (the released files' name)."""
    return {k.replace(".attn.in_proj.", ".attn.in_proj_"): v for k, v in state_dict.items()}


def _hints(metadata: dict[str, str], hints: dict[str, Any] | None) -> dict[str, Any]:
    found = dict(config_hints(metadata).get("unet", {}))
    found.update(hints or {})
    return found


def t2i_adapter_diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``T2IAdapter`` (full_adapter) keys -> TencentARC keys (tensors shared)."""
    per_level = 1 + max(int(m.group(1)) for k in state_dict
                        if (m := re.fullmatch(r"adapter\.body\.0\.resnets\.(\d+)\.block1\.weight", k)))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("adapter.conv_in."):
            out[key[len("adapter."):]] = tensor
            continue
        match = re.fullmatch(r"adapter\.body\.(\d+)\.(?:resnets\.(\d+)\.)?(.+)", key)
        if match is None:
            raise CheckpointError(f"diffusers T2I-Adapter key {key!r} is not part of a full adapter")
        level, block, rest = int(match.group(1)), int(match.group(2) or 0), match.group(3)
        out[f"body.{level * per_level + block}.{rest}"] = tensor
    return out


def t2i_adapter_config(state_dict: dict[str, torch.Tensor], unet_res_blocks: int = 2) -> dict[str, Any]:
    """``T2IAdapter`` keyword arguments read from TencentARC keys."""
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("body."))
    in_convs = sorted(int(k.split(".")[1]) for k in state_dict if re.fullmatch(r"body\.\d+\.in_conv\.weight", k))
    skip_conv = "body.0.skep.weight" in state_dict
    widths = [state_dict[f"body.{n}.block1.weight"].shape[0] for n in range(n_blocks)]
    if skip_conv:
        per_level = n_blocks
        changes = [n for n in range(1, n_blocks) if widths[n] != widths[n - 1]]
        per_level = changes[0] if changes else n_blocks
    else:
        per_level = in_convs[0] if in_convs else n_blocks
    if n_blocks % per_level:
        raise CheckpointError(f"T2I-Adapter with {n_blocks} blocks cannot be split in levels of {per_level}")
    conv_in = state_dict["conv_in.weight"]  # (channels[0], hint * d^2, 3, 3)
    hint_inputs = conv_in.shape[1]
    # SD adapters unshuffle by 8 (64 or 192 inputs), SDXL ones by 16 (256 or 768).
    xl = hint_inputs in (256, 768)
    downscale = 16 if xl else 8
    if hint_inputs % (downscale**2):
        raise CheckpointError(f"T2I-Adapter conv_in takes {hint_inputs} channels: not 1 or 3 hint channels "
                              "unshuffled by 8 (SD) or 16 (SDXL)")
    return dict(hint_channels=hint_inputs // downscale**2, channels=widths[::per_level], num_res_blocks=per_level,
                kernel_size=state_dict["body.0.block2.weight"].shape[-1], skip_conv=skip_conv,
                downscale=downscale, unet_res_blocks=unet_res_blocks, xl=xl)


def light_adapter_config(state_dict: dict[str, torch.Tensor], unet_res_blocks: int = 2) -> dict[str, Any]:
    """``LightT2IAdapter`` keyword arguments read from TencentARC keys (``body.L.in_conv / body.j / out_conv``)."""
    levels = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("body."))
    blocks = 1 + max(int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"body\.0\.body\.(\d+)\.block1\.weight", k)))
    hint_inputs = state_dict["body.0.in_conv.weight"].shape[1]
    if hint_inputs % 64:
        raise CheckpointError(f"light T2I-Adapter takes {hint_inputs} input channels, not a hint unshuffled by 8")
    return dict(hint_channels=hint_inputs // 64, channels=[state_dict[f"body.{i}.out_conv.weight"].shape[0]
                                                          for i in range(levels)],
                num_res_blocks=blocks, unet_res_blocks=unet_res_blocks)


def _undo_difference(state_dict: dict[str, torch.Tensor], unet_state: dict[str, torch.Tensor] | None,
                     what: str) -> dict[str, torch.Tensor]:
    if unet_state is None:
        raise CheckpointError(f"{what} is a 'diff' ControlNet (weights stored as differences from a UNet); "
                              "load it with DiffControlNetLoader and the model it was made for")
    out = {}
    for key, tensor in state_dict.items():
        base = unet_state.get(key)
        out[key] = tensor + base.to(tensor) if base is not None and base.shape == tensor.shape else tensor
    return out


def load_control_model(
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    *,
    hints: dict[str, Any] | None = None,
    unet_state: dict[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    what: str = "control model",
) -> nn.Module:
    """A ``ControlNet`` or ``T2IAdapter`` from a state dict in any known layout.

    hints: UNet head layout (``num_heads`` / ``num_head_channels``) where the family default is
    wrong; also read from the file's ``latentflow.config`` metadata. unet_state: the bare
    (``input_blocks.*``) UNet state dict a "diff" ControlNet is added to.
    """
    metadata = metadata or {}
    kind = control_kind(state_dict)
    if kind.startswith("t2i-adapter-light"):
        tensors = {k.removeprefix("adapter.").replace(".resnets.", ".body."): v for k, v in state_dict.items()}
        config = light_adapter_config(tensors, int(_hints(metadata, hints).get("unet_res_blocks", 2)))
        with torch.device("meta"):
            light = LightT2IAdapter(**config)
        return assign_weights(light, tensors, device=device, dtype=dtype, what=f"{what} (light T2I-Adapter)")
    if kind.startswith("t2i-adapter"):
        tensors = t2i_adapter_diffusers_to_original(state_dict) if kind.endswith("diffusers") else dict(state_dict)
        config = t2i_adapter_config(tensors, int(_hints(metadata, hints).get("unet_res_blocks", 2)))
        with torch.device("meta"):
            adapter = T2IAdapter(**config)
        return assign_weights(adapter, tensors, device=device, dtype=dtype, what=f"{what} (T2I-Adapter)")
    if kind == "control-lora":
        return ControlLoRA({k: v for k, v in state_dict.items() if k != CONTROL_LORA_MARKER}, what=what).to(
            device=device, dtype=dtype)
    if kind == "controlnet-diffusers":
        tensors = controlnet_diffusers_to_ldm(state_dict)
    else:
        diff = DIFF_MARKER in state_dict
        if any(k.startswith(LDM_PREFIX) for k in state_dict):
            # a full cldm checkpoint also holds the UNet, VAE, text encoder and schedule buffers
            tensors = {k[len(LDM_PREFIX):]: v for k, v in state_dict.items() if k.startswith(LDM_PREFIX)}
        else:
            tensors = {k: v for k, v in state_dict.items() if k != DIFF_MARKER}
        if diff:
            tensors = _undo_difference(tensors, unet_state, what)
    hints = _hints(metadata, hints)
    if is_union(tensors):
        tensors = _union_names(tensors)
        encoder = {k: v for k, v in tensors.items() if not k.startswith(UNION_PREFIXES)}
        unet_hints = {k: v for k, v in hints.items() if k != "union_heads"}
        config = {**controlnet_config(encoder, unet_hints), **union_config(tensors, hints)}
        with torch.device("meta"):
            union = UnionControlNet(**config)
        return assign_weights(union, tensors, device=device, dtype=dtype, what=f"{what} (union ControlNet)")
    config = controlnet_config(tensors, hints)
    with torch.device("meta"):
        model = ControlNet(**config)
    return assign_weights(model, tensors, device=device, dtype=dtype, what=f"{what} (ControlNet)")


def wants_global_average_pooling(path: str | Path) -> bool:
    """Whether a ControlNet file is a shuffle model, whose residuals are averaged over the feature map.

    Nothing in the weights tells; as ComfyUI does, the name decides: the name without its extension ends
    in ``_shuffle`` or ``_shuffle_fp16`` (``control_v11e_sd15_shuffle.pth``)."""
    return Path(path).stem.endswith(("_shuffle", "_shuffle_fp16"))


def load_control_file(path: str | Path, *, hints: dict[str, Any] | None = None,
                      unet_state: dict[str, torch.Tensor] | None = None, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None, global_average_pooling: bool | None = None) -> nn.Module:
    """``load_control_model`` of a file (safetensors, or .pth/.ckpt read with weights_only).

    global_average_pooling: average a ControlNet's residuals over the feature map (shuffle models);
    None decides by the file name (``wants_global_average_pooling``)."""
    state_dict, metadata = read_state_dict(path)
    if "adapter" in state_dict and isinstance(state_dict["adapter"], dict):  # pragma: no cover - old .pth nesting
        state_dict = state_dict["adapter"]  # type: ignore[assignment]
    model = load_control_model(state_dict, metadata, hints=hints, unet_state=unet_state, device=device, dtype=dtype,
                               what=Path(path).name)
    if global_average_pooling and type(model) is not ControlNet:
        raise CheckpointError(f"{Path(path).name}: global average pooling (shuffle ControlNets) applies to plain "
                              f"ControlNets, this file is a {type(model).__name__}")
    if global_average_pooling is None:  # by name; only plain ControlNets have shuffle versions
        global_average_pooling = type(model) is ControlNet and wants_global_average_pooling(path)
    if global_average_pooling:
        model.global_average_pooling = True  # an instance setting, on the freshly built model
    return model


def controlnet_from_unet(unet: nn.Module, hints: dict[str, Any] | None = None, hint_channels: int = 3) -> ControlNet:
    """A new ControlNet for ``unet``: its encoder copied from the UNet's weights, hint encoder and zero
    convolutions freshly initialised (the last ones zero, so it starts as "no control"), as
    ControlNet training begins (Zhang et al. 2023, sec. 3.2). ``hints``: head layout where the family
    default (read from the shapes, as ``controlnet_config``) is wrong."""
    state = unet.state_dict()
    config = controlnet_config({**state, "input_hint_block.0.weight": torch.empty(16, hint_channels, 3, 3,
                                                                                  device="meta")},
                               hints)
    param = next(unet.parameters())
    with torch.device(param.device):
        model = ControlNet(**config).to(param.dtype)
    encoder = {k: v for k, v in state.items() if k in model.state_dict()}
    missing = model.load_state_dict(encoder, strict=False).missing_keys
    unexpected_missing = [k for k in missing if not k.startswith(("input_hint_block.", "zero_convs.", "middle_block_out."))]
    if unexpected_missing:
        raise CheckpointError(f"the UNet lacks encoder weights the ControlNet needs: {unexpected_missing[:5]}")
    return model
