"""Hypernetworks in A1111's format (the "hypernetworks" of stable-diffusion-webui, 2022).

A hypernetwork file (``torch.save`` of a dict; ``.pt``) holds, per input width ``d`` (an int
key: 320, 640, 768, 1024, 1280, ...), two small MLPs: one for the inputs of attention's key
projection and one for its value projection. An attention layer whose k/v input has width
``d`` computes

    k = to_k(c + s * f_k(c)),   v = to_v(c + s * f_v(c))

with ``s`` the strength (A1111's multiplier). As A1111 and ComfyUI do, this applies to both
attentions of a transformer block whose input width has an entry: cross-attention (c = the text
context, width 768 for SD 1.x) and self-attention (c = the image tokens, 320 / 640 / 1280).

Each MLP is a ``linear.<i>`` sequence: Linear layers (2-D weights) with, after each, the file's
activation (not after the last unless ``activate_output``) and a LayerNorm where
``is_layer_norm`` (1-D weights); dropout is a training device and is left out at inference.

Applied as :class:`HypernetworkPatch`, a hook patch that ``sgm.io.lora.patched`` attaches as
forward pre-hooks on every matching ``to_k`` / ``to_v`` while sampling and removes afterwards.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

# A1111's names (its "swish" is torch's Hardswish); A1111 also accepts every activation class
# of torch.nn by its lower-case name, which is added below.
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish,
}
for _name, _cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
    if _cls.__module__ == "torch.nn.modules.activation" and issubclass(_cls, nn.Module):
        _ACTIVATIONS.setdefault(_name.lower(), _cls)


class HypernetworkError(ValueError):
    """A file that is not an A1111 hypernetwork we can run (the message says what was found)."""


@dataclass(frozen=True)
class HypernetworkOptions:
    activation: str = "linear"
    layer_norm: bool = False
    activate_output: bool = False


def build_mlp(state_dict: Mapping[str, torch.Tensor], options: HypernetworkOptions, what: str) -> nn.Sequential:
    """One k or v network from its ``linear.<i>.weight`` / ``.bias`` tensors."""
    indices = sorted({int(key.split(".")[1]) for key in state_dict
                      if key.startswith("linear.") and key.split(".")[1].isdigit()})
    if not indices:
        raise HypernetworkError(f"{what}: no linear.<i>.weight tensors (keys: {sorted(state_dict)[:6]})")
    linears = [i for i in indices if state_dict[f"linear.{i}.weight"].ndim == 2]
    layers: list[nn.Module] = []
    for i in indices:
        weight = state_dict[f"linear.{i}.weight"].float()
        bias = state_dict.get(f"linear.{i}.bias")
        if weight.ndim == 2:
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            layer.load_state_dict({"weight": weight, **({} if bias is None else {"bias": bias.float()})})
            layers.append(layer)
            if options.activation != "linear" and (i != linears[-1] or options.activate_output):
                layers.append(_ACTIVATIONS[options.activation]())
        elif weight.ndim == 1:  # LayerNorm: follows its Linear (and activation) in the file's order
            norm = nn.LayerNorm(weight.shape[0])
            shift = torch.zeros_like(weight) if bias is None else bias.float()
            norm.load_state_dict({"weight": weight, "bias": shift})
            layers.append(norm)
        else:
            raise HypernetworkError(f"{what}: linear.{i}.weight has shape {tuple(weight.shape)}; expected a Linear "
                                    "(2-D) or LayerNorm (1-D) weight")
    return nn.Sequential(*layers).eval().requires_grad_(False)


@dataclass(frozen=True)
class Hypernetwork:
    """The loaded networks: input width -> (k network, v network)."""

    name: str
    layers: Mapping[int, tuple[nn.Module, nn.Module]]
    options: HypernetworkOptions


def parse_hypernetwork(data: Mapping[Any, Any], name: str = "hypernetwork") -> Hypernetwork:
    """A hypernetwork from the dict A1111 saves (int width -> [k state dict, v state dict], plus
    ``activation_func``, ``is_layer_norm``, ``activate_output``, ...)."""
    activation = str(data.get("activation_func", "linear") or "linear").lower()
    if activation not in _ACTIVATIONS:
        raise HypernetworkError(f"{name}: activation_func {activation!r} is unknown; known: {sorted(_ACTIVATIONS)}")
    options = HypernetworkOptions(activation, bool(data.get("is_layer_norm", False)),
                                  bool(data.get("activate_output", False)))
    layers: dict[int, tuple[nn.Module, nn.Module]] = {}
    for key, value in data.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue  # options and training notes (name, layer_structure, step, ...)
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise HypernetworkError(f"{name}: entry {key!r} must be [k network, v network], "
                                    f"found {type(value).__name__}")
        nets = [build_mlp(value[i], options, f"{name} [{width}][{i}]") for i in (0, 1)]
        for net in nets:
            probe = next(m for m in net if isinstance(m, nn.Linear))
            if probe.in_features != width:
                raise HypernetworkError(f"{name}: the network for width {width} takes {probe.in_features} features")
        layers[width] = (nets[0], nets[1])
    if not layers:
        raise HypernetworkError(f"{name}: no per-width networks (integer keys) found; keys: "
                                f"{[str(k) for k in list(data)[:8]]}. Is it an A1111 hypernetwork?")
    return Hypernetwork(name, layers, options)


def load_hypernetwork(path: str | Path) -> Hypernetwork:
    """Read a ``.pt`` (through ``torch.load(weights_only=True)``: no code runs) or a ``.safetensors``
    hypernetwork (keys ``<width>.<0|1>.linear.<i>.weight``, options in the metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hypernetwork not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        data: dict[Any, Any] = {k: _json_value(v) for k, v in meta.items()}
        for key, tensor in tensors.items():
            width, index, rest = (key.split(".", 2) + ["", ""])[:3]
            if not (width.isdigit() and index in ("0", "1") and rest):
                raise HypernetworkError(f"{path.name}: key {key!r} is not <width>.<0|1>.linear.<i>.<weight|bias>")
            data.setdefault(int(width), [{}, {}])[int(index)][rest] = tensor
        return parse_hypernetwork(data, path.name)
    from sgm.io.state_dict import load_pickle

    loaded = load_pickle(path)
    if not isinstance(loaded, dict):
        raise HypernetworkError(f"{path.name}: expected a dict, found {type(loaded).__name__}")
    return parse_hypernetwork(loaded, path.name)


def _json_value(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True, eq=False)
class HypernetworkPatch:
    """A hook patch (``sgm.io.lora.HookPatch``) applying ``hypernetwork`` to a UNet's attention."""

    hypernetwork: Hypernetwork
    module: str = "unet"

    def attach(self, root: nn.Module, strength: float) -> list[Any]:
        from sgm.nets.attention import CrossAttention

        handles = []
        for layer in root.modules():
            if not isinstance(layer, CrossAttention):
                continue
            nets = self.hypernetwork.layers.get(layer.to_k.in_features)
            if nets is None:
                continue
            for projection, net in ((layer.to_k, nets[0]), (layer.to_v, nets[1])):
                handles.append(projection.register_forward_pre_hook(_pre_hook(net, strength)))
        return handles


def _pre_hook(net: nn.Module, strength: float) -> Any:
    moved: dict[torch.device, nn.Module] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        c = args[0]  # (B, S, d)
        if c.device not in moved:  # one copy per device for the run (the loaded one stays on the CPU)
            moved[c.device] = net if next(net.parameters()).device == c.device else copy.deepcopy(net).to(c.device)
        x = c.float()  # in float32 whatever the UNet's precision (as A1111 runs them)
        return ((x + moved[c.device](x) * strength).to(c.dtype), *args[1:])

    return hook
