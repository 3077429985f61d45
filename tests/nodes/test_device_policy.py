"""The device policy reaches every model the engine loads, on every device (a fake CUDA here)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.settings import Settings
from nodes.runtime import Runtime
from sgm.io.checkpoints import load_checkpoint
from tests.sgm.model_factories import write_tiny_checkpoint


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_a_model_loaded_for_cuda_is_laid_out_channels_last_in_half_precision_before_it_moves(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1")
    runtime = Runtime(Settings.for_root(tmp_path), device="cuda")  # no CUDA needed: nothing moves yet
    assert runtime.load_dtype() == torch.float16
    checkpoint = runtime.prepared(load_checkpoint(path, dtype=torch.float16), torch.float16)
    for module, channels_last in ((checkpoint.unet, True), (checkpoint.vae, False)):
        weights = [w for w in _conv_weights(module) if w.shape[-1] > 1]
        assert weights and all(w.dtype == torch.float16 for w in weights)
        # the VAE stays NCHW on CUDA (its GroupNorms run NCHW there); the UNet goes channels_last
        assert all(w.is_contiguous(memory_format=torch.channels_last) == channels_last for w in weights)
        assert not module.training
    # moving keeps the layout (what the model cache's module.to(device) does)
    weight = next(w for w in _conv_weights(checkpoint.unet) if w.shape[-1] > 1)
    assert weight.to(torch.float32).is_contiguous(memory_format=torch.channels_last)


def test_a_model_loaded_for_an_fp32_cpu_keeps_the_plain_layout(tmp_path: Path, monkeypatch) -> None:
    from sgm import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))  # no native bf16: fp32 policy
    path = write_tiny_checkpoint(tmp_path / "sd1.safetensors", "sd1")
    runtime = Runtime(Settings.for_root(tmp_path), device="cpu")
    assert runtime.load_dtype() == torch.float32
    checkpoint = runtime.prepared(load_checkpoint(path, dtype=torch.float32), torch.float32)
    weight = next(w for w in _conv_weights(checkpoint.unet) if w.shape[-1] > 1)
    assert weight.dtype == torch.float32 and not weight.is_contiguous(memory_format=torch.channels_last)
