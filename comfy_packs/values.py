"""Values at the boundary between our nodes and a pack's: ComfyUI's conventions in, ours out.

=============  ===============================================  =======================================
type           ComfyUI (what a pack gets and returns)            ours (``nodes.values``)
=============  ===============================================  =======================================
IMAGE / MASK   (B, H, W, C) / (B, H, W) float 0..1 tensors       the same tensors (CPU float32), no copy
LATENT         ``{"samples", "noise_mask"?, "batch_index"?}``    :class:`LatentValue` (same tensors)
CONDITIONING   ``[[context, {"pooled_output", "area", ...}]]``   list of ``Condition`` (same tensors)
MODEL/CLIP/VAE :mod:`comfy_packs.models` wrappers                ModelValue / ClipValue / VaeValue
=============  ===============================================  =======================================

Our LATENT samples are scaled by the VAE's factor (ComfyUI's are not): packs doing latent
math are unaffected, and the VAE wrapper's encode/decode use the same scale. A dict or
conditioning entry made here remembers the value it came from, so a pack that hands it on
unchanged gives our nodes back the very same value (with what ComfyUI's shape cannot carry).
"""

from __future__ import annotations

import math
from typing import Any

from comfy_packs.models import ComfyClip, ComfyModel, ComfyVae, NotSupportedError
from engine.api import ItemList


# The values of an output that is a list (``OUTPUT_IS_LIST``, or a node mapped over a list
# input, as ComfyUI maps it): nodes downstream get them item by item (the engine's ItemList).
ComfyList = ItemList


class LatentDict(dict):
    """A LATENT dict made from our value (``origin``)."""

    origin: Any = None


class ConditionDict(dict):
    """The options dict of a conditioning entry made from our ``Condition`` (``origin``)."""

    origin: Any = None


# Conditioning keys our guiders cannot honour: refused rather than dropped.
UNSUPPORTED_CONDITIONING = {
    "control": "ControlNet", "gligen": "GLIGEN", "hooks": "hooks", "concat_latent_image": "concat latents",
    "unclip_conditioning": "unCLIP", "start_percent": "timestep ranges", "end_percent": "timestep ranges",
}


def to_comfy(value: Any) -> Any:
    """Our value -> what a ComfyUI node expects (told by the value's class)."""
    from nodes.values import ClipValue, LatentValue, ModelValue, VaeValue

    if isinstance(value, LatentValue):
        return latent_to_comfy(value)
    if isinstance(value, ModelValue):
        return ComfyModel(value)
    if isinstance(value, ClipValue):
        return ComfyClip(value)
    if isinstance(value, VaeValue):
        return ComfyVae(value)
    if isinstance(value, list) and value and _is_condition(value[0]):
        return conditioning_to_comfy(value)
    return value


def from_comfy(value: Any, type_name: str, where: str) -> Any:
    """A ComfyUI node's output of socket type ``type_name`` -> our value."""
    if isinstance(value, ComfyModel):
        return value.to_value(where)
    if isinstance(value, (ComfyClip, ComfyVae)):
        return value.value
    types = set(type_name.split(","))
    if isinstance(value, dict) and "samples" in value and ("LATENT" in types or "*" in types):
        return latent_from_comfy(value)
    if "CONDITIONING" in types and isinstance(value, list):
        return conditioning_from_comfy(value, where)
    if types & {"IMAGE", "MASK"} and _is_tensor(value):
        return value.to("cpu", dtype=_float32()) if value.device.type != "cpu" or not value.is_floating_point() \
            else value
    return value


def latent_to_comfy(value: Any) -> LatentDict:
    latent = LatentDict(samples=value.samples)
    if value.noise_mask is not None:
        latent["noise_mask"] = value.noise_mask
    if value.batch_index is not None:
        latent["batch_index"] = list(value.batch_index)
    latent.origin = value
    return latent


def latent_from_comfy(latent: dict) -> Any:
    from dataclasses import replace

    from nodes.values import LatentValue

    origin = getattr(latent, "origin", None)
    samples, mask = latent["samples"], latent.get("noise_mask")
    batch_index = tuple(int(i) for i in latent["batch_index"]) if latent.get("batch_index") is not None else None
    if origin is not None and origin.samples is samples:
        if origin.noise_mask is mask and origin.batch_index == batch_index:
            return origin  # handed on unchanged
        return replace(origin, noise_mask=mask, batch_index=batch_index)
    return LatentValue(samples, noise_mask=mask, batch_index=batch_index)


def conditioning_to_comfy(conditions: list) -> list:
    out = []
    for condition in conditions:
        options = ConditionDict(pooled_output=condition.pooled)
        if condition.area is not None:
            area = condition.area
            options["area"] = (area.height, area.width, area.y, area.x)  # latent pixels, ComfyUI's order
        if condition.strength != 1.0:
            options["strength"] = condition.strength
        if condition.mask is not None:
            options["mask"] = condition.mask
        options.origin = condition
        out.append([condition.context, options])
    return out


def conditioning_from_comfy(entries: list, where: str) -> list:
    from sgm.text.conditioning import Area, Condition

    if entries and _is_condition(entries[0]):
        return entries
    out = []
    for entry in entries:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise TypeError(f"{where}: a CONDITIONING output must be [[tensor, {{...}}], ...], got an entry "
                            f"{type(entry).__name__}")
        context, options = entry
        refused = [key for key in options if key in UNSUPPORTED_CONDITIONING
                   and not (key == "start_percent" and options[key] == 0.0)
                   and not (key == "end_percent" and options[key] == 1.0)]
        if refused:
            raise NotSupportedError(f"{where}: conditioning with {', '.join(sorted(refused))}",
                                    f"{UNSUPPORTED_CONDITIONING[refused[0]]} conditioning (its samplers)")
        area = options.get("area")
        if area is not None:
            if len(area) != 4 or not all(isinstance(v, int) for v in area):
                raise NotSupportedError(f"{where}: conditioning area {area!r}", "percentage areas")
            area = Area(x=area[3], y=area[2], width=area[1], height=area[0])
        origin = getattr(options, "origin", None)
        base = origin if origin is not None else Condition(context=context)
        out.append(base.with_(context=context, pooled=options.get("pooled_output"), area=area,
                              strength=float(options.get("strength", 1.0)), mask=options.get("mask")))
    return out


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _is_condition(value: Any) -> bool:
    return type(value).__name__ == "Condition" and hasattr(value, "context")


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "device") and hasattr(value, "is_floating_point")


def _float32() -> Any:
    import torch

    return torch.float32
