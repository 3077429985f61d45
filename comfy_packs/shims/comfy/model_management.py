"""ComfyUI's ``comfy.model_management``: devices, interruption, memory (comfy_packs.runtime)."""

import enum as _enum

from comfy_packs.runtime import (InterruptProcessingException, get_free_memory,  # noqa: F401
                                 get_torch_device, intermediate_device, load_models_gpu, processing_interrupted,
                                 soft_empty_cache, throw_exception_if_processing_interrupted)


class CPUState(_enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def unet_offload_device():
    return intermediate_device()


def text_encoder_device():
    return get_torch_device()


def vae_device():
    return get_torch_device()


def is_device_mps(device) -> bool:
    return getattr(device, "type", None) == "mps"


def is_device_cuda(device) -> bool:
    return getattr(device, "type", None) == "cuda"
