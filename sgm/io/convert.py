"""Key mappings between diffusers and the original (ldm/sgm) layouts (UNet and VAE).

File conversion built on them is ``sgm.io.convert_files``.

Our own mapping, written from the two layouts (diffusers is only a test reference):

UNet (original, under ``model.diffusion_model.``)       diffusers ``unet/``
  time_embed.0/2                                       time_embedding.linear_1/2
  label_emb.0.0/0.2                                    add_embedding.linear_1/2
  input_blocks.0.0                                     conv_in
  input_blocks.{1+l(R+1)+j}.0 / .1                     down_blocks.l.resnets.j / attentions.j
  input_blocks.{(l+1)(R+1)}.0.op                       down_blocks.l.downsamplers.0.conv
  middle_block.0 / .1 / .2                             mid_block.resnets.0 / attentions.0 / resnets.1
  output_blocks.{l(R+1)+j}.0 / .1                      up_blocks.l.resnets.j / attentions.j
  output_blocks.{l(R+1)+R}.{1|2}.conv                  up_blocks.l.upsamplers.0.conv
  out.0 / out.2                                        conv_norm_out / conv_out
  ResBlock in_layers.0/.2, emb_layers.1, out_layers.0/.3, skip_connection
      = norm1/conv1, time_emb_proj, norm2/conv2, conv_shortcut
(R = num_res_blocks; transformer internals have the same names in both.)

VAE: encoder.down.l.block.j = encoder.down_blocks.l.resnets.j; decoder.up.l is
decoder.up_blocks.(L-1-l) (ldm counts decoder levels from full resolution);
mid.block_1/attn_1/block_2 = mid_block.resnets.0/attentions.0/resnets.1; attention
q/k/v/proj_out (1x1 conv) = to_q/to_k/to_v/to_out.0 (linear); nin_shortcut = conv_shortcut;
norm_out = conv_norm_out.
"""

from __future__ import annotations

import re
from typing import Any

import torch

_RESNET_TO_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_TO_ORIGINAL = {v: k for k, v in _RESNET_TO_DIFFUSERS.items()}
_UNET_SIMPLE_TO_DIFFUSERS = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "label_emb.0.0.": "add_embedding.linear_1.",
    "label_emb.0.2.": "add_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}
_UNET_SIMPLE_TO_ORIGINAL = {v: k for k, v in _UNET_SIMPLE_TO_DIFFUSERS.items()}
# A projection class embedding (diffusers' name for the vector input of Lotus and other SD 2.x
# fine-tunes) is the same MLP as SDXL's add_embedding: read it as label_emb.0 too.
_UNET_SIMPLE_TO_ORIGINAL.update({"class_embedding.linear_1.": "label_emb.0.0.",
                                 "class_embedding.linear_2.": "label_emb.0.2."})


class KeyMappingError(ValueError):
    """A key that belongs to no known part of the layout being converted."""


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_res_blocks_original(state_dict: dict[str, torch.Tensor]) -> int:
    for n in range(1, 64):
        if f"input_blocks.{n}.0.op.weight" in state_dict:
            return n - 1
    return sum(1 for k in state_dict if re.fullmatch(r"input_blocks\.\d+\.0\.in_layers\.0\.weight", k))


def unet_original_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unprefixed original UNet keys -> diffusers ``UNet2DConditionModel`` keys (tensors shared)."""
    per_level = _unet_res_blocks_original(state_dict) + 1
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        simple = next((new + key[len(old):] for old, new in _UNET_SIMPLE_TO_DIFFUSERS.items() if key.startswith(old)), None)
        if simple is not None:
            out[simple] = tensor
            continue
        if key == "label_emb.weight":
            out["class_embedding.weight"] = tensor
            continue
        match = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.+)", key)
        if match is None:
            raise KeyMappingError(f"UNet key {key!r} is not part of the ldm/sgm UNet layout")
        part, n, m, rest = match.group(1), int(match.group(2)), match.group(3), match.group(4)
        if part == "middle_block":
            # middle_block.N.<rest>: N=0/2 resnets, N=1 attention (no inner index)
            rest = key.split(".", 2)[2]
            new = (f"mid_block.attentions.0.{rest}" if n == 1
                   else f"mid_block.resnets.{n // 2}.{_rename(rest, _RESNET_TO_DIFFUSERS)}")
        elif part == "input_blocks":
            level, j = (n - 1) // per_level, (n - 1) % per_level
            if rest.startswith("op."):
                new = f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
            elif m == "0":
                new = f"down_blocks.{level}.resnets.{j}.{_rename(rest, _RESNET_TO_DIFFUSERS)}"
            else:
                new = f"down_blocks.{level}.attentions.{j}.{rest}"
        else:
            level, j = n // per_level, n % per_level
            if m == "0":
                new = f"up_blocks.{level}.resnets.{j}.{_rename(rest, _RESNET_TO_DIFFUSERS)}"
            elif rest.startswith("conv."):
                new = f"up_blocks.{level}.upsamplers.0.{rest}"
            else:
                new = f"up_blocks.{level}.attentions.{j}.{rest}"
        out[new] = tensor
    return out


def unet_diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` keys -> unprefixed original UNet keys (tensors shared)."""
    per_level = sum(1 for k in state_dict if re.fullmatch(r"down_blocks\.0\.resnets\.\d+\.conv1\.weight", k)) + 1
    levels_with_attention = {int(k.split(".")[1]) for k in state_dict if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        simple = next((new + key[len(old):] for old, new in _UNET_SIMPLE_TO_ORIGINAL.items() if key.startswith(old)), None)
        if simple is not None:
            out[simple] = tensor
            continue
        if key == "class_embedding.weight":
            out["label_emb.weight"] = tensor
            continue
        match = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
        mid = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
        if mid is not None:
            kind, index, rest = mid.groups()
            new = (f"middle_block.1.{rest}" if kind == "attentions"
                   else f"middle_block.{2 * int(index)}.{_rename(rest, _RESNET_TO_ORIGINAL)}")
        elif match is not None:
            part, level, kind, j, rest = match.group(1), int(match.group(2)), match.group(3), int(match.group(4)), match.group(5)
            if part == "down_blocks":
                n = 1 + level * per_level + j
                new = {
                    "resnets": f"input_blocks.{n}.0.{_rename(rest, _RESNET_TO_ORIGINAL)}",
                    "attentions": f"input_blocks.{n}.1.{rest}",
                    "downsamplers": f"input_blocks.{(level + 1) * per_level}.0.op.{rest.removeprefix('conv.')}",
                }.get(kind, "")
            else:
                n = level * per_level + j
                upsample_slot = 2 if level in levels_with_attention else 1
                new = {
                    "resnets": f"output_blocks.{n}.0.{_rename(rest, _RESNET_TO_ORIGINAL)}",
                    "attentions": f"output_blocks.{n}.1.{rest}",
                    "upsamplers": f"output_blocks.{level * per_level + per_level - 1}.{upsample_slot}.{rest}",
                }.get(kind, "")
            if not new:
                raise KeyMappingError(f"diffusers UNet key {key!r}: unexpected {kind} in {part}")
        else:
            raise KeyMappingError(
                f"diffusers UNet key {key!r} has no counterpart in the ldm/sgm UNet "
                "(features such as encoder_hid_proj or class embeddings beyond SD/SDXL are not supported)"
            )
        out[new] = tensor
    return out


# ---------------------------------------------------------------------------------- VAE

_VAE_ATTN_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_VAE_ATTN_TO_ORIGINAL = {v: k for k, v in _VAE_ATTN_TO_DIFFUSERS.items()}
# Older diffusers releases (< 0.14) named the VAE attention query/key/value/proj_attn.
_VAE_ATTN_TO_ORIGINAL.update({"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"})
_VAE_SIMPLE = {"encoder.norm_out.": "encoder.conv_norm_out.", "decoder.norm_out.": "decoder.conv_norm_out."}


def _vae_levels(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    return len({int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)})


def vae_original_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unprefixed original VAE keys -> diffusers ``AutoencoderKL`` keys; attention 1x1 convs become linears."""
    levels = _vae_levels(state_dict, "decoder.up.")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = next((n + key[len(o):] for o, n in _VAE_SIMPLE.items() if key.startswith(o)), key)
        m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)", key)
        mid = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)", key)
        if m is not None:
            side, direction, level, kind, rest = m.groups()
            level_d = int(level) if side == "encoder" else levels - 1 - int(level)
            blocks = "down_blocks" if side == "encoder" else "up_blocks"
            if kind in ("downsample", "upsample"):
                new = f"{side}.{blocks}.{level_d}.{kind}rs.0.{rest}"
            else:
                index, rest = rest.split(".", 1)
                if kind == "block":
                    new = f"{side}.{blocks}.{level_d}.resnets.{index}.{_rename(rest, {'nin_shortcut': 'conv_shortcut'})}"
                else:
                    new = f"{side}.{blocks}.{level_d}.attentions.{index}.{_rename(rest, _VAE_ATTN_TO_DIFFUSERS)}"
        elif mid is not None:
            side, part, rest = mid.groups()
            if part == "attn_1":
                new = f"{side}.mid_block.attentions.0.{_rename(rest, _VAE_ATTN_TO_DIFFUSERS)}"
            else:
                rest = _rename(rest, {"nin_shortcut": "conv_shortcut"})
                new = f"{side}.mid_block.resnets.{0 if part == 'block_1' else 1}.{rest}"
        if ".attentions." in new and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # (C, C, 1, 1) conv -> (C, C) linear: same map
        out[new] = tensor
    return out


def vae_diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> unprefixed original VAE keys; attention linears become 1x1 convs."""
    levels = _vae_levels(state_dict, "decoder.up_blocks.")
    simple = {v: k for k, v in _VAE_SIMPLE.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = next((n + key[len(o):] for o, n in simple.items() if key.startswith(o)), key)
        m = re.fullmatch(r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
        mid = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
        if m is not None:
            side, _, level, kind, index, rest = m.groups()
            level_o = int(level) if side == "encoder" else levels - 1 - int(level)
            direction = "down" if side == "encoder" else "up"
            if kind in ("downsamplers", "upsamplers"):
                new = f"{side}.{direction}.{level_o}.{kind[:-2]}.{rest}"
            elif kind == "resnets":
                new = f"{side}.{direction}.{level_o}.block.{index}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
            else:
                new = f"{side}.{direction}.{level_o}.attn.{index}.{_rename(rest, _VAE_ATTN_TO_ORIGINAL)}"
        elif mid is not None:
            side, kind, index, rest = mid.groups()
            if kind == "attentions":
                new = f"{side}.mid.attn_1.{_rename(rest, _VAE_ATTN_TO_ORIGINAL)}"
            else:
                new = f"{side}.mid.block_{int(index) + 1}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
        elif not key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            raise KeyMappingError(f"diffusers VAE key {key!r} is not part of AutoencoderKL")
        if (".attn_1." in new or ".attn." in new) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # (C, C) linear -> (C, C, 1, 1) conv
        out[new] = tensor
    return out


# ------------------------------------------------------------------------ diffusers configs


def _heads_to_diffusers(config: dict[str, Any], widths: list[int]) -> list[int]:
    if config.get("num_head_channels", -1) != -1:
        return [w // config["num_head_channels"] for w in widths]
    return [config["num_heads"]] * len(widths)


def unet_diffusers_config(config: dict[str, Any], sample_size: int = 64) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config.json for our UNetModel kwargs."""
    mc = config["model_channels"]
    widths = [mc * m for m in config["channel_mult"]]
    levels = len(widths)
    depths = config["transformer_depth"]
    depths = [depths] * levels if isinstance(depths, int) else list(depths)
    attention = [2**i in config["attention_resolutions"] and depths[i] > 0 for i in range(levels)]
    middle = config.get("transformer_depth_middle")
    middle = depths[-1] if middle is None else middle
    # diffusers reads the middle block's depth from the last level's entry.
    layers = [d if d > 0 else 1 for d in depths[:-1]] + [depths[-1] if attention[-1] else middle]
    if layers[-1] != middle:
        raise KeyMappingError(
            f"diffusers cannot express a middle transformer depth ({middle}) different from the last level's ({depths[-1]})"
        )
    out: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": widths,
        "layers_per_block": config["num_res_blocks"],
        "cross_attention_dim": config["context_dim"],
        "attention_head_dim": _heads_to_diffusers(config, widths),
        "use_linear_projection": bool(config.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": layers,
        "norm_num_groups": 32,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }
    if config.get("num_classes") == "sequential":
        adm = config["adm_in_channels"]
        # SDXL: y = [pooled text (P) | 6 size/crop values x 256-d Fourier features]
        out.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=adm)
    elif isinstance(config.get("num_classes"), int):
        out.update(num_class_embeds=config["num_classes"])
    return out


def unet_config_from_diffusers(diffusers_config: dict[str, Any]) -> dict[str, Any]:
    """Only the head layout (which shapes cannot tell) of a diffusers UNet config, as UNet hints."""
    widths = list(diffusers_config["block_out_channels"])
    heads = diffusers_config.get("num_attention_heads") or diffusers_config.get("attention_head_dim", 8)
    heads = [heads] * len(widths) if isinstance(heads, int) else list(heads)
    if len(set(heads)) == 1:
        return {"num_heads": heads[0]}
    channels = {w // h for w, h in zip(widths, heads)}
    if len(channels) == 1:
        return {"num_head_channels": channels.pop()}
    raise KeyMappingError(f"diffusers UNet heads {heads} for widths {widths}: neither a constant count nor constant width")


def vae_diffusers_config(config: dict[str, Any], scaling_factor: float) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` config.json for our AutoencoderKL kwargs."""
    if config["z_channels"] != config["embed_dim"]:
        raise KeyMappingError(f"diffusers AutoencoderKL needs z_channels == embed_dim, got {config['z_channels']} and {config['embed_dim']}")
    if config.get("attn_resolutions"):
        raise KeyMappingError("diffusers' DownEncoderBlock2D has no per-level attention; this VAE has attn_resolutions")
    levels = len(config["ch_mult"])
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config["in_channels"],
        "out_channels": config["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [config["ch"] * m for m in config["ch_mult"]],
        "layers_per_block": config["num_res_blocks"],
        "latent_channels": config["embed_dim"],
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": scaling_factor,
    }
