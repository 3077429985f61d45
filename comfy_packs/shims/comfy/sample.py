"""ComfyUI's ``comfy.sample``: prepare_noise, fix_empty_latent_channels; its sampling entry points
need ComfyUI's sampler objects and raise a clear error when called."""

from comfy_packs.models import NotSupportedError as _NotSupported
from comfy_packs.runtime import prepare_noise  # noqa: F401


def fix_empty_latent_channels(model, latent_image):
    return latent_image  # our samplers reshape empty latents to the model's latent format


def sample(*args, **kwargs):
    raise _NotSupported("comfy.sample.sample", "samplers (ModelPatcher + KSampler objects)",
                        "sample with nodes.KSampler / common_ksampler")


def sample_custom(*args, **kwargs):
    raise _NotSupported("comfy.sample.sample_custom", "samplers (guiders, sampler objects)")
