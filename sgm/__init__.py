"""sgm: the model library (torch). Never imports engine/, nodes/ or web/.

Laid out by stage, each wing importing only the wings below it:

    devices, data       device policy; datasets (the bottom: any wing may use them)
    nets                UNet, autoencoder, attention, CLIP text transformers
    text                tokenizer, text encoders, prompt weighting, SDXL vectors, Condition
    sampling            denoisers, schedules, guiders, samplers, ``sample``, latent previews
    io                  state dicts, checkpoints, conversion, LoRA files, the model cache
    training            training tasks and loop, the shapes evaluation
    tools               the ``train`` / ``convert`` / ``eval`` commands
    models              the seed's Python API (``AutoencoderKL``, ``DiffusionModel``)

The names a user needs are exported here and imported on first use, so ``import sgm``
costs nothing and ``sgm.devices`` stays importable on its own.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_checkpoint": "sgm.io.checkpoints",
    "save_checkpoint": "sgm.io.checkpoints",
    "convert": "sgm.io.convert_files",
    "AutoencoderKL": "sgm.models",
    "DiffusionModel": "sgm.models",
    "UNetModel": "sgm.nets.unet",
    "Condition": "sgm.text.conditioning",
    "SAMPLERS": "sgm.sampling.samplers",
    "SCHEDULERS": "sgm.sampling.schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sgm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
