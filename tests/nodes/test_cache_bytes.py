"""The installation's result cache counts tensor bytes, so its byte bound really bounds memory."""

import torch

import main
from engine.cache import ResultCache
from engine.settings import Settings


def test_real_registry_cache_evicts_by_tensor_bytes():
    registry = main.build_registry(entry_points=False)
    cache = ResultCache.for_registry(registry, Settings(cache_max_entries=100, cache_max_bytes=10_000))
    cache.put("a", (torch.zeros(1000),))  # 4000 bytes
    cache.put("b", (torch.zeros(1000),))
    assert cache.bytes == 8000 and list(cache) == ["a", "b"]
    cache.put("c", (torch.zeros(1000),))  # 12000 > 10000: the least recently used goes
    assert list(cache) == ["b", "c"] and cache.bytes == 8000
