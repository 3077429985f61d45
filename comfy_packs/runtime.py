"""What ``comfy.model_management``, ``comfy.utils``, ``comfy.samplers``, ``comfy.sample`` and
``latent_preview`` offer packs, over ``sgm`` and the run context.

Interruption: ``InterruptProcessingException`` is our :class:`engine.api.Cancelled`, so a pack
that raises it (or ``throw_exception_if_processing_interrupted``) cancels the run as ours do.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from engine.api import Cancelled
from comfy_packs import state
from comfy_packs.models import NotSupportedError


class InterruptProcessingException(Cancelled):
    """ComfyUI's interruption (the run was cancelled)."""


# --------------------------------------------------------------------------- model_management


def get_torch_device() -> Any:
    from sgm.devices import default_device

    return default_device()


def intermediate_device() -> Any:
    import torch

    return torch.device("cpu")  # our IMAGE / MASK / LATENT values live on the CPU


def soft_empty_cache(force: bool = False) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def processing_interrupted() -> bool:
    current = state.running()
    return bool(current and current.ctx is not None and current.ctx.cancelled)


def throw_exception_if_processing_interrupted() -> None:
    if processing_interrupted():
        current = state.running()
        raise InterruptProcessingException(f"run cancelled while node {current.ctx.node_id} was running")


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    import torch

    device = dev if dev is not None else get_torch_device()
    if getattr(device, "type", str(device)) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return (free, free) if torch_free_too else free
    import os

    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    return (free, free) if torch_free_too else free


def load_models_gpu(models: Any, *_: Any, **__: Any) -> None:
    """Our model cache moves a model to the device when a node uses it; nothing to do ahead."""


# --------------------------------------------------------------------------- utils


class ProgressBar:
    """``comfy.utils.ProgressBar(total)``: reports the running node's progress (and preview)."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total = total
        self.current = 0
        current = state.running()
        self._ctx = current.ctx if current is not None else None

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total) if self.total else value
        if self._ctx is not None:
            picture = preview[1] if isinstance(preview, tuple) and len(preview) >= 2 else preview
            self._ctx.progress(self.current, self.total, picture)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def common_upscale(samples: Any, width: int, height: int, upscale_method: str, crop: str) -> Any:
    """Resize (B, C, H, W) to (B, C, height, width); crop "center" keeps the aspect ratio."""
    import torch.nn.functional as F

    if crop == "center":
        old_h, old_w = samples.shape[-2:]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if upscale_method == "lanczos":
        return _lanczos(samples, width, height)
    if upscale_method == "bislerp":
        raise NotSupportedError("common_upscale(upscale_method='bislerp')", "bislerp",
                                "use nearest-exact, bilinear, area, bicubic or lanczos")
    kwargs = {"align_corners": False} if upscale_method in ("bilinear", "bicubic") else {}
    return F.interpolate(samples, size=(height, width), mode=upscale_method, **kwargs)


def _lanczos(samples: Any, width: int, height: int) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for item in samples.movedim(1, -1).clamp(0, 1).cpu().numpy():  # (H, W, C)
        channels = [Image.fromarray((item[..., c] * 255).round().astype(np.uint8)).resize(
            (width, height), Image.Resampling.LANCZOS) for c in range(item.shape[-1])]
        out.append(np.stack([np.asarray(c, dtype=np.float32) / 255.0 for c in channels], axis=-1))
    return torch.from_numpy(np.stack(out)).movedim(-1, 1).to(samples.device)


def load_torch_file(ckpt: str, safe_load: bool = True, device: Any = None, return_metadata: bool = False) -> Any:
    """A state dict from a .safetensors file, or a pickle read with ``weights_only=True`` only."""
    from sgm.io.state_dict import read_state_dict

    tensors, metadata = read_state_dict(ckpt)
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return (tensors, metadata) if return_metadata else tensors


def repeat_to_batch_size(tensor: Any, batch_size: int, dim: int = 0) -> Any:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(*repeats).narrow(dim, 0, batch_size)
    return tensor


def tiled_scale(samples: Any, function: Callable[[Any], Any], tile_x: int = 64, tile_y: int = 64,
                overlap: int = 8, upscale_amount: float = 4, out_channels: int = 3, output_device: Any = "cpu",
                pbar: ProgressBar | None = None) -> Any:
    """Apply ``function`` to overlapping (tile_y, tile_x) tiles of (B, C, H, W) ``samples`` and
    blend the results (linear ramps over the overlap) into (B, out_channels, H*s, W*s)."""
    import torch

    b, _, h, w = samples.shape
    s = upscale_amount
    out = torch.zeros(b, out_channels, round(h * s), round(w * s), device=output_device)
    weight = torch.zeros_like(out)
    step_y, step_x = max(1, tile_y - overlap), max(1, tile_x - overlap)
    for y in range(0, max(1, h - overlap), step_y):
        for x in range(0, max(1, w - overlap), step_x):
            y0, x0 = min(y, max(0, h - tile_y)), min(x, max(0, w - tile_x))
            tile = samples[:, :, y0:y0 + tile_y, x0:x0 + tile_x]
            result = function(tile).to(output_device)
            th, tw = result.shape[-2:]
            ramp = torch.ones(th, tw, device=output_device)
            fade = round(overlap * s)
            for i in range(min(fade, th // 2, tw // 2)):
                edge = (i + 1) / (fade + 1)
                ramp[i, :] *= edge
                ramp[-1 - i, :] *= edge
                ramp[:, i] *= edge
                ramp[:, -1 - i] *= edge
            oy, ox = round(y0 * s), round(x0 * s)
            out[:, :, oy:oy + th, ox:ox + tw] += result * ramp
            weight[:, :, oy:oy + th, ox:ox + tw] += ramp
            if pbar is not None:
                pbar.update(1)
    return out / weight.clamp_min(1e-8)


# --------------------------------------------------------------------------- sampling names and noise


def sampler_names() -> list[str]:
    from sgm.sampling.names import KSAMPLER_NAMES

    return list(KSAMPLER_NAMES)


def scheduler_names() -> list[str]:
    from sgm.sampling.names import SCHEDULER_NAMES

    return list(SCHEDULER_NAMES)


def prepare_noise(latent_image: Any, seed: int, noise_inds: Any = None) -> Any:
    """ComfyUI's noise for a latent batch: one CPU generator seeded with ``seed``."""
    import torch

    generator = torch.manual_seed(seed)
    if noise_inds is None:
        return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout,
                           generator=generator, device="cpu")
    unique = sorted(set(int(i) for i in noise_inds))
    noises = {}
    for i in range(unique[-1] + 1):
        noise = torch.randn([1] + list(latent_image.size())[1:], dtype=latent_image.dtype, generator=generator)
        if i in unique:
            noises[i] = noise
    return torch.cat([noises[int(i)] for i in noise_inds], dim=0)


def prepare_callback(model: Any, steps: int, x0_output_dict: Any = None) -> Callable[..., None]:
    """``latent_preview.prepare_callback``: a k-diffusion step callback that reports progress."""
    bar = ProgressBar(steps)

    def callback(step: int, x0: Any, x: Any, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps)

    return callback
