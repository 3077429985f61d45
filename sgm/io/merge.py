"""Model merging (weighted, per block, add, difference) as recorded patches.

A merge of model A with model B computes, for every weight ``k`` both models have,

    W'_k = a_k * W^A_k + b_k * W^B_k

with ``(a_k, b_k)`` given per key: a weighted merge is ``(r, 1 - r)`` (r = 1 gives A, r = 0
gives B, exactly), a per-block merge picks ``r`` by the longest matching key prefix, "add"
is ``(1, 1)`` and "subtract" (the difference A - B, scaled) is ``(m, -m)``. These are the rules
ComfyUI's ModelMerge* and CLIPMerge* nodes apply; "add difference" (A + (B - C)) is a
subtract followed by an add.

Nothing is copied when a merge is made: :func:`merge_targets` returns one small
:class:`MergeTarget` per weight that *records* the other model's tensor (by module and key)
and the factors. Like a LoRA, the targets travel on MODEL / CLIP (``model.loras``) and are
applied by ``sgm.io.lora.patched`` only while sampling or encoding, which restores the base
weights afterwards; ``sgm.io.save_checkpoint`` materialises them one tensor at a time. Patches
already on model B (its LoRAs, an earlier merge) are part of what B contributes; patches on A
before the merge are applied first, later ones on top (as ComfyUI orders them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sgm.io.lora import PatchList, index_patches, patched_tensor

logger = logging.getLogger(__name__)

# key -> (factor of this model's weight, factor of the other model's weight)
MergeWeights = Callable[[str], tuple[float, float]]
# ComfyUI leaves these CLIP entries as they are (ids and a training-only scale).
CLIP_IGNORED_SUFFIXES = (".position_ids", ".logit_scale")


def weighted(ratio: float) -> MergeWeights:
    """``ratio`` of this model and ``1 - ratio`` of the other (ModelMergeSimple)."""
    ratio = float(ratio)
    return lambda key: (ratio, 1.0 - ratio)


def addition() -> MergeWeights:
    """This model plus the other (ModelMergeAdd)."""
    return lambda key: (1.0, 1.0)


def difference(multiplier: float = 1.0) -> MergeWeights:
    """``multiplier * (this - other)`` (ModelMergeSubtract)."""
    multiplier = float(multiplier)
    return lambda key: (multiplier, -multiplier)


def by_blocks(ratios: Mapping[str, float], default: float | None = None) -> MergeWeights:
    """A weighted merge whose ratio is chosen per key by the longest prefix in ``ratios``
    (``{"input": 0.3, "middle": 1.0, "out": 0.7}``, or ComfyUI's per-block names such as
    ``"input_blocks.4."``); keys no prefix matches get ``default``, else the first ratio given
    (ComfyUI's rule: e.g. ``time_embed`` follows ``input``)."""
    if not ratios:
        raise ValueError("by_blocks needs at least one (prefix, ratio) pair")
    table = sorted(((str(k), float(v)) for k, v in ratios.items()), key=lambda kv: -len(kv[0]))
    fallback = float(next(iter(ratios.values())) if default is None else default)

    def weights(key: str) -> tuple[float, float]:
        ratio = next((r for prefix, r in table if key.startswith(prefix)), fallback)
        return ratio, 1.0 - ratio

    return weights


@dataclass(frozen=True, eq=False)
class MergeTarget:
    """One merged weight, recorded: ``self_factor * W + other_factor * strength * W_other``.

    ``source`` / ``source_key`` name the other model's parameter (looked up when applied, so a
    model the cache moved between devices is read where it is now); ``source_patches`` are the
    other model's own patches on that weight (``sgm.io.lora.index_patches`` entries).
    """

    module: str
    key: str
    source: nn.Module
    source_key: str
    self_factor: float
    other_factor: float
    source_patches: tuple[tuple[Any, float], ...] = ()
    rows: tuple[int, int] | None = None

    def other_weight(self, device: torch.device, pristine: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The other model's weight with its own patches, float32 on ``device``."""
        tensor = pristine(self.source.get_parameter(self.source_key))
        return patched_tensor(tensor, self.source_patches, device=device, dtype=torch.float32)

    def patched_weight(self, current: torch.Tensor, strength: float,
                       pristine: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        other = self.other_weight(current.device, pristine)
        # float32 arithmetic, one rounding to the weight's dtype (fp16 models keep their precision)
        merged = other * (self.other_factor * strength)  # a new tensor: `other` may be the other model's own
        merged.add_(current.float(), alpha=self.self_factor)
        return merged.to(current.dtype)


@dataclass(frozen=True)
class MergeMatch:
    """What a merge records: the targets, and the keys it left as they are."""

    targets: tuple[MergeTarget, ...]
    mismatched: tuple[str, ...] = ()  # same name, other shape (e.g. a 9-channel inpainting input conv)
    missing: tuple[str, ...] = ()  # not in the other model


def merge_targets(base: nn.Module, other: nn.Module, weights: MergeWeights, *, module: str = "unet",
                  other_patches: PatchList = (), other_module: str | None = None,
                  ignore_suffixes: tuple[str, ...] = ()) -> MergeMatch:
    """Record the merge of ``base`` (the model part patched as ``module``) with ``other``.

    ``other_patches`` are the other model's recorded patches ((targets, strength), ...; its
    ``model.loras``), found under ``other_module`` (default: ``module``). Weights of another
    shape are left unmerged, as ComfyUI leaves them (the merge of an inpainting model's
    9-channel input convolution with a 4-channel one keeps the inpainting one): they are
    listed in ``mismatched`` and logged. A ``(1, 0)`` weight needs no target.
    """
    other_params = dict(other.named_parameters())
    index = index_patches(other_patches)
    source_name = module if other_module is None else other_module
    targets: list[MergeTarget] = []
    mismatched: list[str] = []
    missing: list[str] = []
    for key, param in base.named_parameters():
        if not param.is_floating_point() or key.endswith(ignore_suffixes):
            continue
        source = other_params.get(key)
        if source is None:
            missing.append(key)
            continue
        if source.shape != param.shape:
            mismatched.append(key)
            continue
        a, b = weights(key)
        if a == 1.0 and b == 0.0:
            continue
        targets.append(MergeTarget(module, key, other, key, float(a), float(b),
                                   tuple(index.get((source_name, key), ()))))
    if mismatched:
        logger.warning("merge of %s: %d weight(s) of another shape left unmerged, e.g. %s",
                       module, len(mismatched), mismatched[:3])
    return MergeMatch(tuple(targets), tuple(mismatched), tuple(missing))


def merge_parts(base: Mapping[str, nn.Module], other: Mapping[str, nn.Module], weights: MergeWeights, *,
                other_patches: PatchList = (), ignore_suffixes: tuple[str, ...] = ()) -> MergeMatch:
    """:func:`merge_targets` for every model part both sides have (``{"te0": ..., "te1": ...}``:
    text towers pair up by position)."""
    matches = [merge_targets(base[name], other[name], weights, module=name, other_patches=other_patches,
                             ignore_suffixes=ignore_suffixes)
               for name in base if name in other]
    return MergeMatch(tuple(t for m in matches for t in m.targets),
                      tuple(k for m in matches for k in m.mismatched),
                      tuple(k for m in matches for k in m.missing))


def merged_state_dict(module: nn.Module, name: str, patches: PatchList) -> dict[str, torch.Tensor]:
    """``module``'s state dict with ``patches`` applied (materialised, CPU): for tests and small
    models; a checkpoint file is written tensor by tensor (``sgm.io.save_checkpoint``)."""
    index = index_patches(patches)
    return {key: patched_tensor(value, index.get((name, key), ()), device=torch.device("cpu"))
            for key, value in module.state_dict().items()}
