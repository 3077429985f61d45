"""What the built-in packs share in one installation: its settings and its model cache.

``NODES(settings)`` in :mod:`nodes.builtin` builds one :class:`Runtime` and hands it to every
domain module's node factory, so a model is loaded once per registry and shared by every
workflow that names it. The model cache (and torch) is created on first use, so listing
or validating nodes never imports torch.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from sgm.io.model_cache import ModelCache

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class Runtime:
    """Settings plus the lazily created :class:`sgm.io.model_cache.ModelCache`."""

    def __init__(self, settings: Any, device: str | None = None) -> None:
        self.settings = settings
        self._device = device
        self._models: "ModelCache | None" = None
        self._lock = threading.Lock()
        self._largest_cpu_model = 0  # parameters of the biggest model loaded for the CPU (thread policy)
        self._default_threads: int | None = None

    @property
    def models(self) -> "ModelCache":
        with self._lock:
            if self._models is None:
                from sgm.io.model_cache import ModelCache

                self._models = ModelCache(device=self._device)
            return self._models

    def load_dtype(self) -> Any:
        """The dtype weights are loaded in: ``settings.extra["dtype"]`` (fp32, fp16, bf16) or, by
        default ("auto"), the device policy of ``sgm.devices`` (bf16 on CPUs with native bf16
        units, fp32 on other CPUs, half precision on accelerators)."""
        import torch

        from sgm.devices import default_dtype

        choice = (getattr(self.settings, "extra", None) or {}).get("dtype", "auto")
        named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if choice in named:
            return named[choice]
        if choice != "auto":
            raise ValueError(f"settings dtype {choice!r} is not one of auto, fp32, fp16, bf16")
        device = self.models.device
        return default_dtype(device, prefer_bf16=True)

    def _extra(self, name: str, default: str | None = None) -> str | None:
        return (getattr(self.settings, "extra", None) or {}).get(name, default)

    def weight_dtype(self) -> Any:
        """How diffusion-model weights are stored: ``settings.extra["weight_dtype"]`` (``--weight-dtype``),
        a :class:`sgm.nets.quant.WeightDtype`; "default" keeps the load dtype."""
        from sgm.nets.quant import parse_weight_dtype

        return parse_weight_dtype(self._extra("weight_dtype", "default"), "settings weight_dtype (--weight-dtype)")

    def preview_method(self) -> str:
        """How live previews are made: ``settings.extra["preview_method"]`` (``--preview-method``:
        auto, none, latent2rgb, taesd); auto unless set."""
        from sgm.nets.speed_names import PREVIEW_METHOD_CHOICES

        method = self._extra("preview_method", "auto")
        if method not in PREVIEW_METHOD_CHOICES:
            raise ValueError(f"settings preview_method (--preview-method) {method!r} is not one of "
                             f"{', '.join(PREVIEW_METHOD_CHOICES)}")
        return method

    def preview_decoder(self, family: str) -> Any:
        """The TAESD decoder for ``family``'s latents from models/vae_approx/ (taesd_decoder for SD
        1.x/2.x, taesdxl_decoder for SDXL), loaded once per file version, or None where there is none."""
        from sgm.io.taesd_files import find_preview_decoder, load_taesd_part

        folders = [folder.path for folder in self.settings.model_paths.folders("vae_approx")]
        path = find_preview_decoder(folders, family)
        if path is None:
            return None
        return self.load_model(Path(path), "taesd-preview-decoder", "live preview",
                               lambda dtype: load_taesd_part(path, "decoder").to(dtype=dtype))

    def compile_options(self, mode: str | None = None) -> Any:
        """:class:`sgm.nets.compile.CompileOptions` for ``mode`` (default: ``settings.extra["compile"]``,
        ``--compile``), or None when compiling is off. The cache lives in user/compile-cache."""
        mode = mode if mode is not None else self._extra("compile")
        if not mode:
            return None
        from sgm.nets.compile import CompileOptions, parse_compile_mode

        return CompileOptions(mode=parse_compile_mode(mode, "settings compile (--compile)"),
                              cache_dir=Path(self.settings.root) / "user" / "compile-cache")

    def compiled(self, unet: Any, mode: str | None = None) -> Any:
        """``unet`` compiled per :meth:`compile_options` (one shared compiled copy per model and
        options), or ``unet`` itself when compiling is off."""
        options = self.compile_options(mode)
        if options is None:
            return unet
        from sgm.nets.compile import compiled_copy

        return compiled_copy(unet, options)

    def apply_thread_policy(self, value: Any) -> None:
        """With ``settings.extra["threads"]`` "auto" (what main.py sets unless --threads is given): one
        CPU thread while every model loaded for the CPU is small, all of them once a big one is
        loaded; a number sets that many. Without the setting (tests, embedding) torch's count stays.

        Why: the embedded model's 20-step image took 434 ms with 2 threads and 272 ms with one on
        an idle 2-core machine, and one thread cannot be slowed by waiting for a busy core."""
        choice = self._extra("threads")
        if choice is None:
            return
        import torch

        from sgm.devices import cpu_threads_for
        from sgm.io.model_cache import modules_of

        if choice != "auto":
            torch.set_num_threads(int(choice))
            return
        if self._default_threads is None:
            self._default_threads = torch.get_num_threads()
        parameters = sum(p.numel() for module in modules_of(value) for p in module.parameters())
        self._largest_cpu_model = max(self._largest_cpu_model, parameters)
        torch.set_num_threads(cpu_threads_for(self._largest_cpu_model, self._default_threads))

    def prepared(self, value: Any, dtype: Any) -> Any:
        """A freshly loaded model with every module in inference form for the device policy.

        On the CPU: channels_last and prepacked convolutions for bf16 where that is faster.
        On an accelerator the model stays in host memory until a node uses it (the model
        cache moves it then, keeping its memory format), so the layout the device wants
        (channels_last for half precision on CUDA) is applied here, on the host: without it
        the engine path ran a CUDA UNet step 1.7x slower than the same weights prepared."""
        from sgm.devices import prepare_module, use_channels_last
        from sgm.io.model_cache import modules_of

        device = self.models.device
        for module in modules_of(value):
            module_dtype = dtype if dtype is not None else next(module.parameters()).dtype
            if device.type == "cpu":
                prepare_module(module, "cpu", module_dtype)
            else:
                prepare_module(module, "cpu", module_dtype, channels_last=use_channels_last(device, module_dtype, module),
                               pack_weights=False)
        if device.type == "cpu":
            self.apply_thread_policy(value)
        return value

    def quantized(self, value: Any, weight_dtype: Any) -> Any:
        """The diffusion model of a freshly loaded ``value`` (a checkpoint or a UNet) with its weights
        stored as ``weight_dtype`` (:func:`sgm.nets.quant.quantize_module`); other parts untouched."""
        from sgm.nets.quant import WeightDtype, quantize_module

        if weight_dtype == WeightDtype.DEFAULT:
            return value
        unet = value if hasattr(value, "input_blocks") else getattr(value, "unet", None)
        if unet is not None:
            quantize_module(unet, weight_dtype)
        return value

    def load_model(self, path: Path, kind: str, node_id: str, build: Callable[[Any], Any],
                   prepare: bool = True, weight_dtype: Any = None) -> Any:
        """``build(dtype)`` once per file version (see ``ModelCache.load``), in the dtype of
        :meth:`load_dtype`, prepared for inference, its diffusion model's weights stored as
        ``weight_dtype`` (a :class:`sgm.nets.quant.WeightDtype`; None: as loaded); errors name the
        node and the file."""
        dtype = self.load_dtype()

        def load() -> Any:
            value = build(dtype)
            value = self.prepared(value, dtype) if prepare else value
            return value if weight_dtype is None else self.quantized(value, weight_dtype)

        if weight_dtype is not None and weight_dtype.value != "default":
            kind = f"{kind}:{weight_dtype.value}"  # a quantized copy is another cache entry
        try:
            return self.models.load(path, kind, load, dtype)
        except (FileNotFoundError, MemoryError):
            raise
        except Exception as error:
            raise ValueError(
                f"{node_id}: cannot load {path.name} ({type(error).__name__}: {error}); the file may be "
                "damaged or incomplete (re-download it), or not be this kind of model") from error

    def folder(self, kind: str) -> Path:
        return Path(self.settings.model_folder(kind))

    def model_files(self, *kinds: str) -> list[str]:
        """Model files of these kinds in all their folders (``settings.model_paths``:
        ``models/<kind>/`` and extra_model_paths.yaml's), subfolders as ``sub/name``, sorted."""
        return self.settings.model_paths.files(*kinds)

    def resolve_model(self, kinds: tuple[str, ...], name: str, node_id: str, input_name: str) -> Path:
        """The file ``name`` in the first folder of these kinds that holds it, confined to them."""
        path = self.settings.model_paths.resolve(kinds, name)
        if path is None:
            message = self.settings.model_paths.not_found_message(kinds, name)
            raise FileNotFoundError(f"{node_id}: {input_name}: {message}")
        return path


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Relative POSIX names of files with ``suffixes`` under ``folder`` (missing folder: none)."""
    if not folder.is_dir():
        return []
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith(".")
    )


def confined(folder: Path, name: str) -> Path | None:
    """``folder / name`` when the name stays inside ``folder`` (no ``..`` or absolute paths),
    else None. Checked on the name, not the resolved path, so models symlinked into the
    folder from elsewhere (a common way to share big checkpoints) still load."""
    if not name or os.path.isabs(name) or "\\" in name:
        return None
    normal = os.path.normpath(name)
    if normal in (".", "..") or normal.startswith("../"):
        return None
    return folder / normal


def file_fingerprint(path: Path | None) -> tuple[str, int] | None:
    """(path, mtime) of a file for a node's cache fingerprint; None when it is missing."""
    if path is None or not path.is_file():
        return None
    return str(path), path.stat().st_mtime_ns


def model_file_fingerprint(model_paths: Any, kinds: tuple[str, ...], *inputs: str) -> Callable[..., Any]:
    """A node's cache fingerprint: the (path, mtime) of the model file each of ``inputs`` names
    in the folders of ``kinds``, so an edited or replaced file loads again."""
    def fingerprint(**literals: Any) -> Any:
        return [file_fingerprint(model_paths.resolve(kinds, str(literals.get(name)))) for name in inputs]
    return fingerprint
