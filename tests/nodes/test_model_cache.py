"""sgm.io.model_cache: one load per file version, reload on change, out-of-memory retry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sgm.io.model_cache import ModelCache, ModelMemoryError, modules_of


def model_file(tmp_path: Path, name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(b"weights v1")
    return path


def test_a_file_is_loaded_once_and_shared(tmp_path: Path) -> None:
    cache = ModelCache(device="cpu")
    path = model_file(tmp_path)
    first = cache.load(path, "checkpoint", lambda: torch.nn.Linear(2, 2))
    second = cache.load(tmp_path / "." / path.name, "checkpoint", lambda: torch.nn.Linear(2, 2))
    assert first is second and cache.loads == 1
    other_kind = cache.load(path, "vae", lambda: torch.nn.Linear(2, 2))
    assert other_kind is not first and cache.loads == 2


def test_a_changed_file_is_reloaded_and_the_old_copy_dropped(tmp_path: Path) -> None:
    cache = ModelCache(device="cpu")
    path = model_file(tmp_path)
    first = cache.load(path, "checkpoint", lambda: "old")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = cache.load(path, "checkpoint", lambda: "new")
    assert (first, second) == ("old", "new") and len(cache) == 1


def test_least_recently_used_files_are_dropped_beyond_the_bound(tmp_path: Path) -> None:
    cache = ModelCache(device="cpu", max_models=2)
    a, b, c = (model_file(tmp_path, f"{n}.safetensors") for n in "abc")
    cache.load(a, "checkpoint", lambda: "a")
    cache.load(b, "checkpoint", lambda: "b")
    cache.load(a, "checkpoint", lambda: "a again")  # a is now the most recent
    cache.load(c, "checkpoint", lambda: "c")
    assert cache.load(a, "checkpoint", lambda: "reloaded") == "a"
    assert cache.load(b, "checkpoint", lambda: "b reloaded") == "b reloaded"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        ModelCache(device="cpu").load(tmp_path / "nothing.safetensors", "checkpoint", lambda: None)


def test_out_of_memory_offloads_and_retries_once_then_explains(tmp_path: Path) -> None:
    cache = ModelCache(device="cpu")
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert cache.retry_on_oom(flaky, "KSampler (sampling)") == "done" and len(calls) == 2

    def always() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ModelMemoryError, match="KSampler .*even after moving every cached model"):
        cache.retry_on_oom(always, "KSampler (sampling)")

    def other() -> None:
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        cache.retry_on_oom(other, "x")


def test_modules_of_finds_the_parts_of_a_checkpoint() -> None:
    class Conditioner:
        def __init__(self) -> None:
            self.modules = [torch.nn.Linear(1, 1)]

    class Checkpoint:
        def __init__(self) -> None:
            self.unet, self.vae, self.conditioner = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), Conditioner()

    found = modules_of(Checkpoint())
    assert len(found) == 3 and all(isinstance(m, torch.nn.Module) for m in found)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_use_moves_modules_to_the_device_and_offload_brings_them_back() -> None:
    cache = ModelCache(device="cuda")
    module = torch.nn.Linear(4, 4)
    with cache.use(module) as device:
        assert device.type == "cuda" and module.weight.device.type == "cuda"
    assert module.weight.device.type == "cuda"  # kept there for the next use
    cache.offload_all()
    assert module.weight.device.type == "cpu"
