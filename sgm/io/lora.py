"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on our models.

A LoRA file stores, per adapted layer, ``down`` (r, in[, kh, kw]), ``up`` (out, r[, 1, 1])
and optionally ``alpha``; the layer's weight becomes

    W' = W + strength * (alpha / r) * up @ down          (Hu et al. 2021, eq. 3)

Key layouts read here (the names in front of the suffix are module paths with ``.`` or ``_``):

* kohya (sd-scripts, A1111, ComfyUI): ``lora_unet_<module>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha``; text encoders ``lora_te_`` (SD 1.x / 2.x), ``lora_te1_`` /
  ``lora_te2_`` (SDXL). ``<module>`` is a diffusers module path (``down_blocks_0_...``)
  or, as sd-scripts writes for SDXL, an ldm path (``input_blocks_4_1_...``).
* diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (``lora.down`` /
  ``lora.up``, ``lora_linear_layer.down`` / ``.up`` and attention-processor
  ``processor.to_q_lora.down`` forms too), ``text_encoder.`` / ``text_encoder_2.``.

Module paths are mapped onto our (ldm / released-checkpoint) names with the UNet mapping of
``sgm.io.convert`` and the CLIP layouts of ``sgm.nets.clip_models``; OpenCLIP's fused attention
input (``in_proj_weight``) receives q, k and v LoRAs as row slices.

Applying is reversible: :func:`patched` adds the deltas to the weights in place, keeping
a copy of every weight it touches, and copies the originals back when the block ends, so
the base model is restored bit for bit without reloading it. Quantized layers
(``sgm.nets.quant``) get the LoRA as a low-rank path beside their stored weight instead.
The same mechanism carries the other recorded patch kinds: model merges (``sgm.io.merge``,
weights computed from two models) and hypernetworks (``sgm.io.hypernetwork``, forward hooks).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

from sgm.nets.quant import LowRankPath, QuantizedWeight

UNET = "unet"
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".alpha", "alpha"),
)
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
# transformers CLIP module names -> OpenCLIP ones (q/k/v go into rows of in_proj_weight).
_OPEN_CLIP_RENAMES = (("self_attn.out_proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


class LoraError(ValueError):
    """A LoRA file that does not fit the model it is applied to."""


@dataclass(frozen=True)
class LoraTarget:
    """One adapted weight: ``module`` names the model part (``unet``, ``te0``, ``te1``),
    ``key`` the parameter inside it, ``rows`` an optional row slice of a fused weight."""

    module: str
    key: str
    up: torch.Tensor  # (out, r[, 1, 1])
    down: torch.Tensor  # (r, in[, kh, kw])
    scale: float  # alpha / r
    rows: tuple[int, int] | None = None

    def delta(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """scale * up @ down, reshaped to the target's ``shape``."""
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)  # (out, r)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)  # (r, in*kh*kw)
        delta = (up @ down) * self.scale
        if delta.numel() != shape.numel():
            raise LoraError(
                f"LoRA for {self.module}.{self.key} gives a {tuple(up.shape[:1]) + tuple(down.shape[1:])} "
                f"update but the weight is {tuple(shape)}; the LoRA was trained for another model"
            )
        return delta.reshape(shape).to(dtype)


@dataclass(frozen=True)
class LoraMatch:
    """A LoRA file matched against one model: the targets per model part and what did not match."""

    targets: tuple[LoraTarget, ...]
    unmatched: tuple[str, ...]

    def for_module(self, module: str) -> tuple[LoraTarget, ...]:
        return tuple(t for t in self.targets if t.module == module)


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file (safetensors, or pickle through ``weights_only=True``)."""
    from sgm.io.state_dict import read_state_dict

    state_dict, _metadata = read_state_dict(path)
    return state_dict


# ---------------------------------------------------------------------------- names


def _underscored(name: str) -> str:
    return name.replace(".", "_")


def _weighted_modules(module: nn.Module) -> list[str]:
    return [name for name, child in module.named_modules()
            if name and isinstance(getattr(child, "weight", None), torch.Tensor)]


def unet_module_names(unet: nn.Module) -> dict[str, str]:
    """Lookup of every adaptable UNet module: ldm and diffusers paths, dotted and
    underscored, -> our (ldm) module path."""
    from sgm.io.convert import KeyMappingError, unet_original_to_diffusers

    names = _weighted_modules(unet)
    lookup: dict[str, str] = {}
    for name in names:
        lookup[name] = name
        lookup[_underscored(name)] = name
    placeholders = {f"{name}.weight": torch.empty(0) for name in names}
    by_id = {id(t): key for key, t in placeholders.items()}
    try:
        converted = unet_original_to_diffusers(placeholders)
    except KeyMappingError:
        converted = {}  # a UNet outside the ldm layout: only its own names apply
    for diffusers_key, tensor in converted.items():
        original = by_id[id(tensor)].removesuffix(".weight")
        diffusers_name = diffusers_key.removesuffix(".weight")
        lookup.setdefault(diffusers_name, original)
        lookup.setdefault(_underscored(diffusers_name), original)
    return lookup


def kohya_unet_names(unet: nn.Module) -> dict[str, str]:
    """Our UNet module path -> its kohya key stem (``lora_unet_down_blocks_0_...``), for every
    adaptable module (what a LoRA trainer writes; :func:`match_lora` reads it back).

    Uses the diffusers path where the ldm layout maps onto it (what sd-scripts writes for
    SD 1.x / 2.x), else our own path.
    """
    from sgm.io.convert import KeyMappingError, unet_original_to_diffusers

    names = _weighted_modules(unet)
    placeholders = {f"{name}.weight": torch.empty(0) for name in names}
    by_id = {id(t): key.removesuffix(".weight") for key, t in placeholders.items()}
    try:
        converted = unet_original_to_diffusers(placeholders)
    except KeyMappingError:
        converted = {}
    stems = {name: "lora_unet_" + _underscored(name) for name in names}
    for diffusers_key, tensor in converted.items():
        stems[by_id[id(tensor)]] = "lora_unet_" + _underscored(diffusers_key.removesuffix(".weight"))
    return stems


def kohya_unet_name(unet: nn.Module, module_name: str) -> str:
    """The kohya key stem of one UNet module (see :func:`kohya_unet_names` for many)."""
    stems = kohya_unet_names(unet)
    if module_name not in stems:
        raise LoraError(f"{module_name!r} is not an adaptable module of this UNet (no weight)")
    return stems[module_name]


def _text_module_names(tower: nn.Module) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """Lookup for one text tower: transformers CLIP paths (as LoRAs name them) and the
    tower's own paths, dotted and underscored -> (parameter key, row slice)."""
    lookup: dict[str, tuple[str, tuple[int, int] | None]] = {}
    params = dict(tower.named_parameters())

    def add(alias: str, key: str, rows: tuple[int, int] | None = None) -> None:
        lookup.setdefault(alias, (key, rows))
        lookup.setdefault(_underscored(alias), (key, rows))

    for name in _weighted_modules(tower):
        add(name, f"{name}.weight")
        if name.startswith("transformer."):  # CLIP-L layout: transformers names under transformer.
            add(name[len("transformer."):], f"{name}.weight")
    layer = re.compile(r"model\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight")
    for key, value in params.items():
        match = layer.fullmatch(key)
        if match is None:
            continue
        index, width = match.group(1), value.shape[0] // 3
        base = f"text_model.encoder.layers.{index}"
        for proj, slot in _QKV.items():
            add(f"{base}.self_attn.{proj}", key, (slot * width, (slot + 1) * width))
        for hf_name, oc_name in _OPEN_CLIP_RENAMES:
            oc_key = f"model.transformer.resblocks.{index}.{oc_name}.weight"
            if oc_key in params:
                add(f"{base}.{hf_name}", oc_key)
    return lookup


# ---------------------------------------------------------------------------- matching


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            processor = _PROCESSOR.search(stem)
            if processor:  # diffusers attention processors: ...attn1.processor.to_q_lora
                name = processor.group(1)
                stem = stem[: processor.start()] + "." + (name + ".0" if name == "to_out" else name)
            return stem, part
    return None


def _route(stem: str, towers: int) -> tuple[str, str] | None:
    """(model part, module path) of a LoRA key stem, or None when the prefix is unknown."""
    text_index = {"te": 0, "te1": 0, "te2": 1 if towers > 1 else 0}
    kohya = re.match(r"lora_(unet|te[12]?)_(.+)", stem)
    if kohya:
        part, rest = kohya.groups()
        return (UNET, rest) if part == "unet" else (f"te{text_index[part]}", rest)
    for prefix, part in (("unet.", UNET), ("text_encoder_2.", f"te{text_index['te2']}"), ("text_encoder.", "te0")):
        if stem.startswith(prefix):
            return part, stem[len(prefix):]
    if re.match(r"(down_blocks|up_blocks|mid_block|input_blocks|middle_block|output_blocks)[._]", stem):
        return UNET, stem  # diffusers attention-processor files without a prefix
    return None


def match_lora(state_dict: Mapping[str, torch.Tensor], unet: nn.Module | None,
               text_towers: Sequence[nn.Module] = ()) -> LoraMatch:
    """Match a LoRA state dict (kohya or diffusers keys) against a UNet and text towers.

    Text towers are numbered as the family orders them (SDXL: 0 = CLIP-L, 1 = bigG).
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unmatched: list[str] = []
    for key, tensor in state_dict.items():
        split = _split_key(key)
        if split is None:
            unmatched.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = tensor
    lookups: dict[str, dict[str, tuple[str, tuple[int, int] | None]]] = {}
    if unet is not None:
        lookups[UNET] = {alias: (f"{name}.weight", None) for alias, name in unet_module_names(unet).items()}
    for index, tower in enumerate(text_towers):
        lookups[f"te{index}"] = _text_module_names(tower)
    targets: list[LoraTarget] = []
    for stem, parts in groups.items():
        route = _route(stem, len(text_towers))
        found = None
        if route is not None and route[0] in lookups:
            found = lookups[route[0]].get(route[1])
        if found is None or "up" not in parts or "down" not in parts:
            unmatched.extend(f"{stem}.{part}" for part in parts)
            continue
        up, down = parts["up"], parts["down"]
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
        targets.append(LoraTarget(route[0], found[0], up, down, alpha / rank, found[1]))  # type: ignore[index]
    return LoraMatch(tuple(targets), tuple(sorted(unmatched)))


# ---------------------------------------------------------------------------- applying


class WeightPatch(Protocol):
    """A patch kind that computes a weight's new value from its current one (``sgm.io.merge``).

    ``pristine(tensor)`` gives a parameter's value before this application of patches began
    (a merge whose other model shares weights with this one must read them unpatched)."""

    module: str
    key: str
    rows: tuple[int, int] | None

    def patched_weight(self, current: torch.Tensor, strength: float,
                       pristine: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor: ...


class HookPatch(Protocol):
    """A patch kind that changes what a model computes through forward hooks
    (``sgm.io.hypernetwork``); ``attach`` returns the handles that remove them."""

    module: str

    def attach(self, root: nn.Module, strength: float) -> list[Any]: ...


PatchList = Sequence[tuple[Sequence[Any], float]]  # ((targets, strength), ...) as model.loras records them


def _is_hook(target: Any) -> bool:
    return callable(getattr(target, "attach", None))


@contextlib.contextmanager
def patched(modules: Mapping[str, nn.Module], patches: PatchList) -> Iterator[None]:
    """Apply ``patches`` ((targets, strength), ...) to ``modules`` for the block's duration.

    Targets are LoRA updates (:class:`LoraTarget`), weight patches that compute a new value
    (:class:`WeightPatch`: merges) or forward hooks (:class:`HookPatch`: hypernetworks), applied
    in order, each on top of the ones before. Every touched weight is saved first and copied back
    on exit (also on errors) and every hook removed, so the modules end bit-identical to how they
    started. Strength 0 touches nothing.
    """
    params = {name: dict(module.named_parameters()) for name, module in modules.items()}
    originals: dict[tuple[str, str], torch.Tensor] = {}
    saved_by_tensor: dict[int, torch.Tensor] = {}  # id(parameter) -> its value before patching
    low_rank: list[tuple[QuantizedWeight, LowRankPath]] = []  # quantized layers: LoRA beside the weight
    handles: list[Any] = []

    def pristine(tensor: torch.Tensor) -> torch.Tensor:
        return saved_by_tensor.get(id(tensor), tensor)

    try:
        with torch.no_grad():
            for targets, strength in patches:
                if strength == 0:
                    continue
                for target in targets:
                    if target.module not in params:
                        continue  # e.g. text targets while sampling: applied where the text is encoded
                    if _is_hook(target):
                        handles.extend(target.attach(modules[target.module], strength))
                        continue
                    weight = params[target.module].get(target.key)
                    if weight is None:
                        raise LoraError(f"patch target {target.module}.{target.key} does not exist in the model")
                    owner = _quantized_owner(modules[target.module], target.key)
                    if owner is not None:
                        if not isinstance(target, LoraTarget):
                            raise LoraError(
                                f"{target.module}.{target.key} is stored in one byte (weight_dtype fp8/int8): "
                                "a model merge cannot change it; load the model with weight_dtype default")
                        low_rank.append((owner, owner.add_low_rank(target.up, target.down, target.scale * strength,
                                                                   target.rows)))
                        continue
                    slot = (target.module, target.key)
                    if slot not in originals:
                        originals[slot] = weight.detach().clone()
                        saved_by_tensor[id(weight)] = originals[slot]
                    view = weight[target.rows[0]:target.rows[1]] if target.rows else weight
                    if isinstance(target, LoraTarget):
                        view.add_(target.delta(view.shape, view.dtype, view.device) * strength)
                    else:
                        view.copy_(target.patched_weight(view, strength, pristine))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()
        for owner, path in reversed(low_rank):
            owner.remove_low_rank(path)
        with torch.no_grad():
            for (module, key), original in originals.items():
                params[module][key].copy_(original)


def index_patches(patches: PatchList) -> dict[tuple[str, str], list[tuple[Any, float]]]:
    """The weight targets of ``patches`` by (module, key), in order, with their strengths
    (hooks and strength-0 patches left out): what :func:`patched_tensor` needs per weight."""
    index: dict[tuple[str, str], list[tuple[Any, float]]] = {}
    for targets, strength in patches:
        if strength == 0:
            continue
        for target in targets:
            if not _is_hook(target):
                index.setdefault((target.module, target.key), []).append((target, strength))
    return index


def patched_tensor(tensor: torch.Tensor, patches: Sequence[tuple[Any, float]], *,
                   device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One weight with ``patches`` (its entries of :func:`index_patches`) applied, out of place:
    ``tensor`` itself (moved / cast when asked) where there are none. Used to save a patched
    model tensor by tensor and to read the other model of a merge."""
    device = tensor.device if device is None else device
    dtype = tensor.dtype if dtype is None else dtype
    if not patches:
        return tensor.detach().to(device=device, dtype=dtype)
    out = tensor.detach().to(device=device, dtype=dtype, copy=True)
    with torch.no_grad():
        for target, strength in patches:
            view = out[target.rows[0]:target.rows[1]] if target.rows else out
            if isinstance(target, LoraTarget):
                view.add_(target.delta(view.shape, view.dtype, view.device) * strength)
            else:
                view.copy_(target.patched_weight(view, strength, lambda t: t))
    return out


def _quantized_owner(module: nn.Module, key: str) -> QuantizedWeight | None:
    """The quantized layer whose ``weight`` is ``key`` (its one-byte weight cannot take a LoRA
    delta in place: the LoRA runs beside it, see ``sgm.nets.quant``), else None."""
    path, _, name = key.rpartition(".")
    owner = module.get_submodule(path) if path else module
    return owner if name == "weight" and isinstance(owner, QuantizedWeight) else None
