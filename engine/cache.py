"""A bounded least-recently-used cache of node results.

Bounded by entry count and by bytes measured with a pluggable size function (the model
packs register one that counts tensor storage; the default counts nothing, so only the
entry bound applies). The cache lives for the process and is shared by every run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class CacheEntry:
    values: tuple[Any, ...]
    ui: dict[str, Any] | None
    size: int


class ResultCache:
    """Results of executed nodes by cache key; see the module docstring for the bounds."""

    def __init__(self, max_entries: int = 4096, max_bytes: int | None = None,
                 size_of: Callable[[Any], int] | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_of = size_of or (lambda value: 0)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` (marking it most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def peek(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    @classmethod
    def for_registry(cls, registry: Any, settings: Any) -> "ResultCache":
        """The cache an installation uses: its settings' bounds, its nodes' size measure."""
        return cls(settings.cache_max_entries, settings.cache_max_bytes,
                   size_of=getattr(registry, "result_size", None))

    def put(self, key: str, values: tuple[Any, ...], ui: dict[str, Any] | None = None) -> CacheEntry:
        size = sum(self.size_of(v) for v in values)
        entry = CacheEntry(values, ui, size)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += size
            self._evict(keep=key)
        return entry

    def _evict(self, keep: str) -> None:
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self._bytes > self.max_bytes and len(self._entries) > 1
        ):
            oldest = next(iter(self._entries))
            if oldest == keep:  # never evict what was just stored
                break
            self._bytes -= self._entries.pop(oldest).size
            self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
