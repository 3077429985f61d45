"""Opt-in torch.compile for a model's forward: shape buckets, CUDA graphs where shapes are fixed,
an on-disk cache, and an eager fallback that says why.

:func:`compile_model` returns a shallow copy of the module whose calls go through a
:class:`CompiledForward`; the copy shares every parameter and submodule with the original, so
the model cache's device moves and LoRA patches (in place, or beside quantized weights) reach
both, and the original keeps running eagerly. Nothing here imports ``torch._dynamo`` until the
first compiled call: loading and sampling without ``--compile`` never pays for the compiler stack.

Shape policy (what gets compiled for which input shapes):

* the first ``max_static_shapes`` distinct input signatures (shapes, dtypes, devices of the
  tensor arguments) each get a graph compiled for those exact sizes (``dynamic=False``): the
  fastest kernels, and on CUDA with ``mode="reduce-overhead"`` a CUDA graph;
* every later signature goes to one graph compiled with dynamic batch and spatial sizes (and
  without CUDA graphs, which need fixed shapes), so a server that sees many image sizes
  compiles at most ``max_static_shapes + 1`` times instead of once per size.

Compiled artefacts go to inductor's FX graph cache in ``cache_dir`` (``TORCHINDUCTOR_CACHE_DIR``),
so a second process compiling the same model at the same sizes starts warm.

If compiling fails (no C++ compiler for inductor's CPU backend, no Triton, an operator the
compiler cannot handle), the call runs eagerly, the reason is logged once as a warning and
handed to ``on_fallback``, and the model stays eager from then on: results are identical, only
slower.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)


class CompileMode(str, Enum):
    """torch.compile's modes (``reduce-overhead`` adds CUDA graphs on CUDA for fixed shapes)."""

    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"
    MAX_AUTOTUNE = "max-autotune"
    MAX_AUTOTUNE_NO_CUDAGRAPHS = "max-autotune-no-cudagraphs"

    @property
    def uses_cuda_graphs(self) -> bool:
        return self in (CompileMode.REDUCE_OVERHEAD, CompileMode.MAX_AUTOTUNE)

    def without_cuda_graphs(self) -> "CompileMode":
        return {CompileMode.REDUCE_OVERHEAD: CompileMode.DEFAULT,
                CompileMode.MAX_AUTOTUNE: CompileMode.MAX_AUTOTUNE_NO_CUDAGRAPHS}.get(self, self)


COMPILE_MODE_NAMES: tuple[str, ...] = tuple(m.value for m in CompileMode)


def parse_compile_mode(name: str, where: str = "compile mode") -> CompileMode:
    """The :class:`CompileMode` called ``name``; an unknown name raises a ValueError listing the choices."""
    try:
        return CompileMode(name)
    except ValueError:
        raise ValueError(f"{where} {name!r} is not one of {', '.join(COMPILE_MODE_NAMES)}") from None


@dataclass(frozen=True)
class CompileOptions:
    """How :func:`compile_model` compiles.

    backend: torch.compile's backend ("inductor"; "eager"/"aot_eager" trace without generating
        code: for tests and for telling tracing problems from code generation ones).
    max_static_shapes: input signatures compiled for their exact sizes before new ones share one
        dynamic-shape graph.
    cache_dir: inductor's on-disk cache (None: leave ``TORCHINDUCTOR_CACHE_DIR`` as it is).
    """

    mode: CompileMode = CompileMode.DEFAULT
    backend: str | Callable[..., Any] = "inductor"
    max_static_shapes: int = 4
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.mode, str) and not isinstance(self.mode, CompileMode):
            object.__setattr__(self, "mode", parse_compile_mode(self.mode))
        if self.max_static_shapes < 0:
            raise ValueError(f"max_static_shapes must be 0 or more, got {self.max_static_shapes}")


Signature = tuple[Any, ...]


def input_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
    """What makes two calls need different static graphs: each tensor's shape, dtype and device
    (other arguments by type and value when hashable)."""
    def describe(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.device.index)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return type(value).__name__

    return tuple(describe(a) for a in args) + tuple((k, describe(v)) for k, v in sorted(kwargs.items()))


def use_compile_cache(folder: Path) -> Path:
    """Point inductor's on-disk caches (FX graphs, kernels, Triton) at ``folder`` and switch the FX
    graph cache on, so compiled graphs survive the process. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read on every cache lookup
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder


class CompiledForward:
    """Calls ``module`` through compiled graphs per the shape policy; eager after a failure."""

    def __init__(self, module: nn.Module, options: CompileOptions,
                 on_fallback: Callable[[str], None] | None = None) -> None:
        self.module = module
        self.options = options
        self.on_fallback = on_fallback
        self.fallback_reason: str | None = None
        self.static: dict[Signature, Callable[..., Any]] = {}
        self.dynamic: Callable[..., Any] | None = None
        self.compiles = 0  # graphs requested from torch.compile (tests, diagnostics)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles (deepcopy of a model) start without graphs: those belong to one process
        state = dict(self.__dict__, static={}, dynamic=None, compiles=0)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fallback_reason is not None:
            return self.module(*args, **kwargs)
        signature = input_signature(args, kwargs)
        with self._lock:
            graph, fresh, cuda_graphs = self._graph_for(signature, args)
        if graph is None:
            return self.module(*args, **kwargs)
        try:
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = graph(*args, **kwargs)
            # A CUDA graph's output is overwritten by its next replay: hand out a copy.
            return out.clone() if cuda_graphs and isinstance(out, torch.Tensor) else out
        except Exception as error:
            if not (fresh or _is_compiler_error(error)):
                raise  # an error of the model itself (or a cancel) while running a compiled graph
            out = self.module(*args, **kwargs)  # raises the model's own error if the input is wrong
            self._fall_back(signature, error)
            return out

    def _graph_for(self, signature: Signature, args: tuple[Any, ...]) -> tuple[Callable[..., Any] | None, bool, bool]:
        """(compiled callable, compiled just now, runs as CUDA graph)."""
        on_cuda = any(isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args)
        mode = self.options.mode if on_cuda else self.options.mode.without_cuda_graphs()
        if signature in self.static:
            return self.static[signature], False, on_cuda and mode.uses_cuda_graphs
        try:
            if len(self.static) < self.options.max_static_shapes:
                graph = self._compile(mode, dynamic=False)
                self.static[signature] = graph
                return graph, True, on_cuda and mode.uses_cuda_graphs
            fresh = self.dynamic is None
            if fresh:
                self.dynamic = self._compile(mode.without_cuda_graphs(), dynamic=True)
            return self.dynamic, fresh, False
        except Exception as error:  # torch.compile itself refused (bad backend name, unsupported Python)
            self._fall_back(signature, error)
            return None, False, False

    def _compile(self, mode: CompileMode, dynamic: bool) -> Callable[..., Any]:
        if self.options.cache_dir is not None:
            use_compile_cache(self.options.cache_dir)
        self.compiles += 1
        options: dict[str, Any] = {"backend": self.options.backend, "dynamic": dynamic}
        if self.options.backend == "inductor":
            options["mode"] = mode.value
        logger.info("compiling %s (%s, %s shapes, backend %s)", type(self.module).__name__, mode.value,
                    "dynamic" if dynamic else "static", self.options.backend)
        return torch.compile(self.module, **options)

    def _fall_back(self, signature: Signature, error: BaseException) -> None:
        shapes = [s[1] for s in signature if isinstance(s, tuple) and s[:1] == ("tensor",)]
        backend = self.options.backend
        backend_name = backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)
        self.fallback_reason = (
            f"torch.compile (backend {backend_name}, mode {self.options.mode.value}) failed for "
            f"{type(self.module).__name__} with inputs {shapes}: {type(error).__name__}: "
            f"{_first_line(error)}. Running it uncompiled (eager) from now on: same results, eager speed. "
            "To compile, the inductor backend needs a C++ compiler on the CPU (e.g. apt-get install "
            "build-essential) and Triton on CUDA; or run without --compile / CompileModel.")
        logger.warning("%s", self.fallback_reason)
        if self.on_fallback is not None:
            self.on_fallback(self.fallback_reason)


def _first_line(error: BaseException) -> str:
    """The root cause's type and first line (dynamo wraps a backend's error in its own)."""
    root = error
    while True:
        inner = getattr(root, "inner_exception", None) or root.__cause__  # dynamo's BackendCompilerFailed
        if not isinstance(inner, BaseException) or inner is root:
            break
        root = inner
    text = str(root).strip()
    line = text.splitlines()[0][:300] if text else "(no message)"
    return line if root is error else f"{type(root).__name__}: {line}"


def _is_compiler_error(error: BaseException) -> bool:
    """An error raised by dynamo/inductor (a recompile that failed), not by the model's own code."""
    import sys

    exc = sys.modules.get("torch._dynamo.exc")
    return exc is not None and isinstance(error, exc.TorchDynamoException)


def compile_model(module: nn.Module, options: CompileOptions = CompileOptions(),
                  on_fallback: Callable[[str], None] | None = None) -> nn.Module:
    """A copy of ``module`` that shares its parameters and submodules and runs compiled (see the
    module docstring); ``module`` itself is left as it was. Compiling happens on the first call
    for each shape bucket, not here."""
    if isinstance(compiled_forward(module), CompiledForward):
        raise ValueError("this model is compiled already; compile the model it was made from instead")
    compiled = copy.copy(module)  # shares _parameters, _buffers and _modules with ``module``
    compiled.__dict__.pop("_compiled_copies", None)
    # An instance attribute shadows the class's forward; nn.Module.__call__ looks it up on the instance.
    object.__setattr__(compiled, "forward", CompiledForward(module, options, on_fallback))
    return compiled


def compiled_forward(module: nn.Module) -> CompiledForward | None:
    """The :class:`CompiledForward` of a module made by :func:`compile_model`, else None."""
    forward = module.__dict__.get("forward")
    return forward if isinstance(forward, CompiledForward) else None


def compiled_copy(module: nn.Module, options: CompileOptions,
                  on_fallback: Callable[[str], None] | None = None) -> nn.Module:
    """:func:`compile_model` once per (model, options): the same compiled copy (and its graphs)
    for every caller. A compiled copy given here is recompiled from the model it was made from."""
    forward = compiled_forward(module)
    if forward is not None:
        module = forward.module
    # Kept on the model itself (a reference cycle the garbage collector frees with the model),
    # so a model the cache drops takes its compiled graphs with it.
    copies = module.__dict__.setdefault("_compiled_copies", {})
    if options not in copies:
        copies[options] = compile_model(module, options, on_fallback)
    return copies[options]
