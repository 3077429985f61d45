"""Models loaded once per process and shared by every workflow that names them.

A :class:`ModelCache` is an object (created per registry / settings, never a module
global). Entries are keyed by the file's resolved path, its modification time, what part
of it was loaded (``kind``) and the dtype, so an edited file is loaded afresh and two
workflows that name the same file share one copy of the weights.

On an accelerator, modules live in RAM until a node uses them: :meth:`ModelCache.use`
moves them to the compute device, and when the device runs short of memory the least
recently used modules go back to RAM first. :meth:`ModelCache.retry_on_oom` runs a
node's work and, on an out-of-memory error, frees every cached model from the device,
empties the allocator cache and retries once, then tries the node's fallbacks (the VAE
nodes decode and encode in ever smaller tiles); the last failure becomes a
:class:`ModelMemoryError` that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from torch import nn

from sgm.devices import default_device

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Headroom kept free on the device for activations when deciding whether a module fits.
DEVICE_RESERVE_BYTES = 1 << 30


class ModelMemoryError(RuntimeError):
    """Out of memory even after freeing every cached model."""


@dataclass(frozen=True)
class CacheKey:
    path: str
    mtime_ns: int
    kind: str
    dtype: str


def cache_key(path: str | Path, kind: str, dtype: torch.dtype | None = None) -> CacheKey:
    """The key of ``path`` as it is on disk now (a changed file gets a new key)."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"model file not found: {resolved}")
    return CacheKey(str(resolved), resolved.stat().st_mtime_ns, kind, "auto" if dtype is None else str(dtype))


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def modules_of(value: Any) -> list[nn.Module]:
    """The torch modules held by a loaded value (a module, a checkpoint, a conditioner...)."""
    if isinstance(value, nn.Module):
        return [value]
    found: list[nn.Module] = []
    for name in ("unet", "vae", "modules", "text_encoders", "encoder"):
        part = getattr(value, name, None)
        if isinstance(part, nn.Module):
            found.append(part)
        elif isinstance(part, (list, tuple)):
            found.extend(p for p in part if isinstance(p, nn.Module))
    conditioner = getattr(value, "conditioner", None)
    if conditioner is not None and conditioner is not value:
        found.extend(modules_of(conditioner))
    unique: dict[int, nn.Module] = {}
    for module in found:
        unique.setdefault(id(module), module)
    return list(unique.values())


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class ModelCache:
    """Loaded models by file (path + mtime + kind + dtype), plus device placement.

    ``max_models`` bounds how many loaded files are kept in RAM (least recently used
    dropped first); ``None`` keeps every file that was loaded until :meth:`clear`.
    """

    def __init__(self, device: torch.device | str | None = None, max_models: int | None = 8) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.max_models = max_models
        self._entries: OrderedDict[CacheKey, Any] = OrderedDict()
        self._on_device: OrderedDict[int, nn.Module] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader actually ran (tests, diagnostics)

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, path: str | Path, kind: str, loader: Callable[[], T], dtype: torch.dtype | None = None) -> T:
        """The value ``loader()`` returned for this file version, loading it on first use."""
        key = cache_key(path, kind, dtype)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            stale = [k for k in self._entries if k.path == key.path and k.kind == key.kind and k.dtype == key.dtype]
            for old in stale:  # the file changed on disk: drop the old weights
                self._forget(old)
            value = loader()
            self.loads += 1
            self._entries[key] = value
            while self.max_models is not None and len(self._entries) > self.max_models:
                self._forget(next(iter(self._entries)))
            logger.info("loaded %s (%s) from %s", kind, key.dtype, key.path)
            return value

    def _forget(self, key: CacheKey) -> None:
        value = self._entries.pop(key)
        for module in modules_of(value):
            self._on_device.pop(id(module), None)

    def clear(self) -> None:
        """Drop every cached model (values already handed out stay valid for their holders)."""
        with self._lock:
            self._entries.clear()
            self._on_device.clear()
        self._empty_device_cache()

    # ------------------------------------------------------------------ devices

    @contextlib.contextmanager
    def use(self, *modules: nn.Module) -> Iterator[torch.device]:
        """Place ``modules`` on the compute device for the duration of a node's work.

        On the CPU this does nothing. On an accelerator, modules stay there afterwards
        (the next use is free) until memory runs short for another module.
        """
        if self.device.type == "cpu":
            yield self.device
            return
        with self._lock:
            for module in modules:
                self._to_device(module, keep=set(map(id, modules)))
        yield self.device

    def _to_device(self, module: nn.Module, keep: set[int]) -> None:
        if id(module) in self._on_device:
            self._on_device.move_to_end(id(module))
            return
        needed = module_bytes(module)
        while self._free_bytes() < needed + DEVICE_RESERVE_BYTES:
            victim = next((i for i in self._on_device if i not in keep), None)
            if victim is None:
                break  # nothing left to offload: try anyway; an OOM is handled by retry_on_oom
            self._on_device.pop(victim).to("cpu")
            self._empty_device_cache()
        module.to(self.device)
        self._on_device[id(module)] = module

    def _free_bytes(self) -> int:
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free)
        return 1 << 62

    def offload_all(self) -> None:
        """Move every module that is on the device back to RAM."""
        with self._lock:
            while self._on_device:
                _, module = self._on_device.popitem(last=False)
                module.to("cpu")
        self._empty_device_cache()

    def _empty_device_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def retry_on_oom(self, work: Callable[[], T], what: str,
                     fallbacks: Sequence[tuple[str, Callable[[], T]]] = ()) -> T:
        """Run ``work``; on out-of-memory offload every cached model and retry once, then try
        each ``(description, work)`` of ``fallbacks`` in order (e.g. tiled VAE decodes with
        shrinking tiles: slower, less memory) before giving up with a :class:`ModelMemoryError`."""
        try:
            return work()
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            logger.warning("%s ran out of memory (%s); offloading cached models and retrying once", what, error)
        attempts = [("", work), *fallbacks]
        for index, (description, attempt) in enumerate(attempts):
            self.offload_all()
            if description:
                logger.warning("%s ran out of memory again; retrying with %s", what, description)
            try:
                return attempt()
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                if index + 1 < len(attempts):
                    continue
                self.offload_all()
                tried = f" and trying {', '.join(d for d, _ in fallbacks)}" if fallbacks else ""
                raise ModelMemoryError(
                    f"{what} ran out of memory on {self.device} even after moving every cached model back "
                    f"to RAM{tried} ({error}); use a smaller image size or batch, tiled decode/encode, or a "
                    f"smaller dtype (fp16/bf16)"
                ) from error
        raise AssertionError("unreachable")  # the loop returns or raises
