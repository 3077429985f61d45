"""ComfyUI's ``comfy.samplers``: the sampler and scheduler names (``KSampler.SAMPLERS`` / ``SCHEDULERS``)."""

from comfy_packs.runtime import sampler_names as _samplers, scheduler_names as _schedulers
from comfy_packs.models import NotSupportedError as _NotSupported

SAMPLER_NAMES = _samplers()
KSAMPLER_NAMES = SAMPLER_NAMES
SCHEDULER_NAMES = _schedulers()


class KSampler:
    SAMPLERS = SAMPLER_NAMES
    SCHEDULERS = SCHEDULER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

    def __init__(self, *args, **kwargs):
        raise _NotSupported("comfy.samplers.KSampler(...)", "sampler objects",
                            "sample with nodes.KSampler / common_ksampler")
