"""The names of the samplers and schedules, without importing torch.

Listing a catalogue or validating a workflow needs only names; building the tables in
``sgm.sampling.samplers`` / ``sgm.sampling.schedules`` imports torch (about 1 s). A test
keeps these tuples equal to the tables' keys.
"""

from __future__ import annotations

KSAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
"""ComfyUI 0.3.64's KSampler ``sampler_name`` choices, in its order (every one is in SAMPLERS)."""

SAMPLER_NAMES: tuple[str, ...] = KSAMPLER_NAMES
"""Every key of ``SAMPLERS``, in its order (ComfyUI's list covers all of ours today)."""

SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)
"""Every key of ``SCHEDULERS``, in ComfyUI's KSampler order."""

GPU_ALIASES: dict[str, str] = {
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde_heun",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
}
"""ComfyUI's ``*_gpu`` samplers draw their Brownian noise on the GPU. Ours draw all noise
from the CPU generator so that a seed gives the same image on every device: each alias
is the very same function as its base name, kept so that ComfyUI workflows load."""
