"""Device and dtype policy: where models run and in which precision, always overridable.

CUDA runs fp16 (bf16 where the GPU supports it natively and ``prefer_bf16``); a CPU with
native bf16 matrix units (Intel AMX or AVX512-BF16) runs bf16 with channels_last, which is
several times faster than fp32 there; any other CPU runs fp32.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# oneDNN reorders a bf16 convolution weight into its blocked layout only with these (on an
# AVX2-only CPU the reorder fails: "bf16 path needs the cpu support avx512bw, avx512vl and avx512dq").
_PACK_CPU_FLAGS = ("avx512bw", "avx512vl", "avx512dq")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True where oneDNN can run bf16 matmuls/convolutions on dedicated units (AMX, AVX512-BF16)."""
    if not torch.backends.mkldnn.is_available():
        return False
    return any(flag in cpu_flags() for flag in _BF16_CPU_FLAGS)


def default_device() -> torch.device:
    """The first CUDA device if there is one, else the CPU (MPS where available)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str | None = None, prefer_bf16: bool = False) -> torch.dtype:
    """The inference dtype the policy picks for ``device`` (default: ``default_device()``)."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        if prefer_bf16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def use_channels_last(device: torch.device | str, dtype: torch.dtype, module: nn.Module | None = None) -> bool:
    """channels_last pays off for oneDNN bf16 on CPU and for tensor cores on CUDA half precision.

    A module class may opt out on CUDA with ``cuda_channels_last = False``: PyTorch's CUDA
    ``group_norm`` makes its input contiguous (NCHW), so in a network where a GroupNorm feeds
    nearly every convolution at full image resolution (the VAE decoder) each norm costs two
    layout copies of a large tensor. The UNet (mostly attention and linear layers at 1/8 the
    resolution) was measured faster channels_last on an H200: 19-24 vs 33 ms a CFG step.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return dtype == torch.bfloat16 and cpu_has_native_bf16()
    if device.type == "cuda":
        return dtype in (torch.float16, torch.bfloat16) and getattr(module, "cuda_channels_last", True)
    return False


# Below this many parameters a model's CPU kernels are too short to split across threads: the
# embedded model (4.1M) ran 20 CFG steps in 272 ms on one thread vs 434 ms on two (idle 2-core
# Xeon, OMP_WAIT_POLICY=PASSIVE), and one thread never waits for a core another process holds.
SMALL_MODEL_PARAMETERS = 32_000_000


def cpu_threads_for(parameters: int, available: int) -> int:
    """CPU threads for running models of up to ``parameters`` parameters: 1 for small models,
    else ``available`` (torch's default: the cores)."""
    if available < 1:
        raise ValueError(f"available threads must be at least 1, got {available}")
    return 1 if parameters < SMALL_MODEL_PARAMETERS else available


def can_pack_weights() -> bool:
    """True where oneDNN can prepack bf16 convolution weights on this CPU (AVX512BW/VL/DQ)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and all(flag in cpu_flags() for flag in _PACK_CPU_FLAGS)
    )


def use_packed_weights(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Prepacked oneDNN convolution weights: CPU bf16 with native bf16 units only."""
    return (
        torch.device(device).type == "cpu"
        and dtype == torch.bfloat16
        and cpu_has_native_bf16()
        and can_pack_weights()
    )


def prepare_module(
    module: nn.Module,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    pack_weights: bool | None = None,
) -> nn.Module:
    """Move ``module`` to the policy's (or the given) device, dtype and memory format; eval mode.

    ``pack_weights`` (policy: CPU bf16 with AMX) makes convolutions keep a oneDNN-blocked copy
    of their weight for inference; see ``pack_conv_weights``. Returns the same module
    (modules are moved in place: their weights are not caller data).
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    channels_last = use_channels_last(device, dtype, module) if channels_last is None else channels_last
    pack_weights = use_packed_weights(device, dtype) if pack_weights is None else pack_weights
    if pack_weights and (device.type != "cpu" or not can_pack_weights()):
        # Packing only changes speed, never results: where the CPU cannot do it, run plain.
        logger.warning("not packing convolution weights on %s: oneDNN needs a CPU with %s",
                       device, ", ".join(_PACK_CPU_FLAGS))
        pack_weights = False
    module.to(device=device, dtype=dtype)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if pack_weights:
        pack_conv_weights(module)
    logger.debug("prepared %s on %s as %s (channels_last=%s, packed=%s)", type(module).__name__, device, dtype,
                 channels_last, pack_weights)
    return module.eval()


def pack_conv_weights(module: nn.Module) -> nn.Module:
    """Let every Conv2d of ``module`` run CPU bf16 inference on a prepacked weight.

    Eager oneDNN convolutions reorder their weight into a blocked layout on every call; at
    the UNet's low resolutions that reorder costs more than the convolution (measured 4x on
    a 2560->1280 8x8 conv). Each conv becomes a ``PackedConv2d`` (same parameters and state
    dict keys, still an ``nn.Conv2d``); the packed copy is made on first use and remade
    whenever the weight changes (new storage, in-place edit such as a LoRA merge, device move).
    """
    for conv in module.modules():
        if type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
            conv.__class__ = PackedConv2d
    return module


class _PackCache:
    """Holds a packed (opaque oneDNN) weight; copies and pickles of a module start empty."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.weight: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict) -> "_PackCache":
        return _PackCache()

    def __reduce__(self) -> tuple:
        return (_PackCache, ())


class PackedConv2d(nn.Conv2d):
    """A Conv2d that uses a prepacked oneDNN weight for CPU bf16 inference (identical results).

    Training, autograd, other dtypes and devices take the ordinary ``nn.Conv2d`` path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            self.training
            or x.device.type != "cpu"
            or x.dtype != torch.bfloat16
            or weight.dtype != torch.bfloat16
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            or torch.compiler.is_compiling()  # a compiled graph lays out weights itself (sgm.nets.compile)
        ):
            return super().forward(x)
        cache = self.__dict__.get("_pack_cache")
        if cache is None:
            cache = self.__dict__["_pack_cache"] = _PackCache()
        key = (weight.data_ptr(), weight._version, weight.device, x.shape[1])
        if cache.key != key:
            cache.weight = torch.ops.mkldnn._reorder_convolution_weight(
                weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups, list(x.shape)
            )
            cache.key = key
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._convolution_pointwise(
            x, cache.weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups, "none", [], ""
        )
