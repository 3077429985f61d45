"""Byte sizes of node results, for the result cache's byte bound.

``ResultCache(size_of=result_size)`` counts tensors and models held by a result. Models
are shared with the model cache, so they are counted once per result that holds them:
the bound is conservative (it evicts early rather than late).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

_MAX_DEPTH = 4


def result_size(value: Any) -> int:
    """Bytes of tensors (and torch modules) reachable from ``value``; 0 for plain data."""
    return _size(value, 0, set())


def _size(value: Any, depth: int, seen: set[int]) -> int:
    if value is None or isinstance(value, (bool, int, float, str, bytes)) or depth > _MAX_DEPTH:
        return 0
    if id(value) in seen:
        return 0
    seen.add(id(value))
    torch = sys.modules.get("torch")  # a result can only hold tensors if torch was imported
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, torch.nn.Module):
            tensors = list(value.parameters()) + list(value.buffers())
            return sum(t.numel() * t.element_size() for t in tensors if id(t) not in seen and not seen.add(id(t)))
    if isinstance(value, dict):
        return sum(_size(v, depth + 1, seen) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(_size(v, depth + 1, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_size(getattr(value, f.name), depth + 1, seen) for f in dataclasses.fields(value))
    for name in ("modules", "towers", "encoder"):  # text conditioners are plain objects
        part = getattr(value, name, None)
        if part is not None:
            return _size(part, depth + 1, seen)
    return 0
