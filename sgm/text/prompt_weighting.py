"""Prompt weighting syntax and textual-inversion embeddings.

Syntax (A1111 / ComfyUI conventions, weights multiply when nested):

* ``(text)`` multiplies the weight of ``text`` by 1.1; ``[text]`` divides it by 1.1;
* ``(text:1.3)`` multiplies it by 1.3 (any float, also negative);
* ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal characters;
* an unmatched bracket is literal text (``a (b`` weighs everything 1.0), so half-typed
  prompts still mean what they say; ``(a:b)`` with a non-number after the colon is
  ``(a:b)`` weighted 1.1, which keeps ``(embedding:name)`` working;
* ``embedding:NAME`` inserts the vectors of a textual-inversion file ``NAME`` from the
  embeddings folder (``.safetensors``, ``.pt``, ``.pth`` or ``.bin``).

The weights are applied by the text conditioner as z' = z_empty + w (z - z_empty)
(ComfyUI's default), where z_empty is the encoding of the empty prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHT_STEP = 1.1
EMBEDDING_PREFIX = "embedding:"
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin")

_WEIGHT_SUFFIX = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$")
_EMBEDDING = re.compile(re.escape(EMBEDDING_PREFIX) + r"([^\s,:()\[\]]+)")


@dataclass(frozen=True)
class PromptPart:
    """A run of prompt text with one weight, or one embedding reference (``text`` is '')."""

    text: str
    weight: float
    embedding: str | None = None


@dataclass
class _Group:
    """A bracket being parsed: its opener and the (text, weight) items inside so far."""

    opener: str
    items: list[tuple[str, float]]


def _close_round(items: list[tuple[str, float]]) -> tuple[list[tuple[str, float]], float]:
    """Split an explicit ``:weight`` suffix off a round group's last text item."""
    if items:
        text, weight = items[-1]
        match = _WEIGHT_SUFFIX.search(text)
        if match:
            head = text[: match.start()]
            kept = items[:-1] + ([(head, weight)] if head else [])
            return kept, float(match.group(1))
    return items, WEIGHT_STEP


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """Prompt text -> (text, weight) runs with brackets and escapes resolved.

    Adjacent runs with equal weights are merged; empty text is dropped.
    """
    stack: list[_Group] = [_Group("", [])]
    i = 0
    while i < len(prompt):
        char = prompt[i]
        if char == "\\" and i + 1 < len(prompt):
            stack[-1].items.append((prompt[i + 1], 1.0))
            i += 2
            continue
        if char in "([":
            stack.append(_Group(char, []))
        elif (char == ")" and stack[-1].opener == "(") or (char == "]" and stack[-1].opener == "["):
            group = stack.pop()
            items = _merge(group.items)
            if char == ")":
                items, factor = _close_round(items)
            else:
                factor = 1.0 / WEIGHT_STEP
            stack[-1].items.extend((text, weight * factor) for text, weight in items)
        else:
            stack[-1].items.append((char, 1.0))  # includes unmatched closers: literal
        i += 1
    # Unclosed groups: the opener is literal and the content keeps its weight.
    while len(stack) > 1:
        group = stack.pop()
        stack[-1].items.append((group.opener, 1.0))
        stack[-1].items.extend(group.items)
    return _merge(stack[0].items)


def _merge(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
    merged: list[tuple[str, float]] = []
    for text, weight in items:
        if not text:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged


def parse_prompt(prompt: str) -> list[PromptPart]:
    """Prompt text -> weighted parts, with ``embedding:NAME`` references split out."""
    parts: list[PromptPart] = []
    for text, weight in parse_weights(prompt):
        position = 0
        for match in _EMBEDDING.finditer(text):
            name = match.group(1).rstrip(".")
            if match.start() > position:
                parts.append(PromptPart(text[position : match.start()], weight))
            parts.append(PromptPart("", weight, embedding=name))
            position = match.start() + len(EMBEDDING_PREFIX) + len(name)
        if position < len(text):
            parts.append(PromptPart(text[position:], weight))
    return parts


# ------------------------------------------------------------------ textual inversion


def find_embedding(name: str, embeddings_dir: Path) -> Path:
    """The file of embedding ``name`` inside ``embeddings_dir`` (never outside it)."""
    root = embeddings_dir.resolve()
    candidates = [root / name] + [root / (name + ext) for ext in EMBEDDING_EXTENSIONS]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.parent != root and root not in resolved.parents:
            raise ValueError(f"embedding name {name!r} points outside the embeddings folder {root}")
        if resolved.is_file() and resolved.suffix in EMBEDDING_EXTENSIONS:
            return resolved
    available = (
        sorted(p.stem for p in root.iterdir() if p.suffix in EMBEDDING_EXTENSIONS) if root.is_dir() else []
    )
    raise FileNotFoundError(
        f"textual-inversion embedding {name!r} not found in {root} (tried "
        f"{', '.join(EMBEDDING_EXTENSIONS)}); available: {available or 'none'}. Put the file in "
        "that folder or fix the name after 'embedding:'."
    )


def load_embedding(path: Path) -> dict[str, torch.Tensor]:
    """Vectors of a textual-inversion file, keyed by what they are for.

    Returns ``{"clip_l": (n, 768), "clip_g": (n, 1280)}`` for SDXL files and ``{"*": (n, C)}``
    for single-encoder files (A1111 ``string_to_param``/``emb_params``, diffusers
    ``learned_embeds``). Pickle files load only with ``weights_only=True``.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data: dict[str, object] = dict(load_file(str(path)))
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickles with arbitrary objects are refused on purpose
            raise ValueError(
                f"{path.name} cannot be loaded safely ({error}); convert it to .safetensors"
            ) from error
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a dict of tensors, found {type(data).__name__}")
    if "clip_l" in data or "clip_g" in data:
        pair = {k: _as_matrix(data[k], path) for k in ("clip_l", "clip_g") if k in data}
        if len({v.shape[0] for v in pair.values()}) > 1:
            raise ValueError(f"{path.name}: clip_l and clip_g must hold the same number of vectors")
        return pair
    if "string_to_param" in data:
        params = data["string_to_param"]
        if isinstance(params, dict) and params:
            return {"*": _as_matrix(next(iter(params.values())), path)}
    if "emb_params" in data:
        return {"*": _as_matrix(data["emb_params"], path)}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:  # diffusers: {"<token>": (C,) or (n, C)}
        return {"*": _as_matrix(tensors[0], path)}
    raise ValueError(
        f"{path.name}: unknown textual-inversion layout (keys {sorted(map(str, data))[:6]}); "
        "expected string_to_param, emb_params, clip_l/clip_g or one tensor"
    )


def _as_matrix(value: object, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2):
        raise ValueError(f"{path.name}: embedding vectors must be a (n, C) or (C,) tensor")
    return value.detach().float().reshape(-1, value.shape[-1]).clone()  # (n, C)


def embedding_for_width(
    vectors: dict[str, torch.Tensor], width: int, name: str, *, prefer: str | None = None
) -> torch.Tensor:
    """The (n, width) vectors of an embedding for an encoder of ``width`` channels.

    ``prefer`` names the key for this encoder in SDXL files (``clip_l`` or ``clip_g``); it
    wins when its width fits, so towers of equal width still get their own vectors.
    """
    if prefer in vectors and vectors[prefer].shape[-1] == width:
        return vectors[prefer]
    matches = [v for v in vectors.values() if v.shape[-1] == width]
    if not matches:
        widths = {k: v.shape[-1] for k, v in vectors.items()}
        raise ValueError(
            f"embedding {name!r} has vectors of width {widths} but this text encoder needs "
            f"{width}: it was trained for another model family (SD 1.x: 768, SD 2.x: 1024, "
            "SDXL: clip_l 768 + clip_g 1280)"
        )
    return matches[0]
