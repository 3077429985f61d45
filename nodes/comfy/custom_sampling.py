"""ComfyUI's advanced and custom sampling nodes (KSamplerAdvanced, SamplerCustom[Advanced], the
guider, noise, scheduler and sigma nodes, ModelSamplingDiscrete), over ours (``nodes.sampling``:
UNetDenoise, Scheduler, Sampler) and the library (``sgm.sampling.sigma_ops``,
``sgm.sampling.model_sampling_extra``).

GUIDER, SAMPLER, SIGMAS and NOISE carry our values (``GuiderValue``, ``SamplerValue``, a sigma
tensor, ``NoiseValue``), so ComfyUI's and our custom-sampling nodes connect to each other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from engine.api import Bool, Choice, Context, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT, call
from nodes.runtime import Runtime
from nodes.sampling import (SEED_MAX, GuiderValue, NoiseValue, SamplerValue, run_sampler_with_denoised,
                            sampler_names, scheduler_names)

CFG = dict(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
STEP = dict(default=0, min=0, max=10000)
ENABLE = ("enable", "disable")
SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")


def seed_widget() -> Int:
    return Int(default=0, min=0, max=SEED_MAX, control_after_generate=True)


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    def sample_both(guider: GuiderValue, sampler: SamplerValue, sigmas: Any, latent: Any, noise: NoiseValue,
                    ctx: Any, node_id: str) -> tuple[Any, Any]:
        seed = 0 if noise.seed is None else noise.seed
        return run_sampler_with_denoised(runtime, guider, sampler, sigmas, latent, seed, noise.seed is not None,
                                         ctx, node_id)

    @node("KSamplerAdvanced", display_name="KSampler (Advanced)", category="sampling", compat=COMPAT)
    def ksampler_advanced(
        model: "MODEL",
        add_noise: Choice(choices=ENABLE),
        noise_seed: seed_widget(),
        steps: Int(default=20, min=1, max=10000),
        cfg: Float(**CFG),
        sampler_name: Choice(choices=sampler_names),
        scheduler: Choice(choices=scheduler_names),
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        latent_image: "LATENT",
        start_at_step: Int(**STEP),
        end_at_step: Int(default=10000, min=0, max=10000),
        return_with_leftover_noise: Choice(choices=("disable", "enable")),
        ctx: Context = None,
    ) -> Out(LATENT="LATENT"):
        """Run steps start_at_step..end_at_step of a steps-long schedule; with add_noise disabled the latent is
        taken as already noisy, with leftover noise enabled an early end keeps its noise (for a second
        sampler, e.g. SDXL base then refiner)."""
        from sgm.sampling.schedules import compute_sigmas
        from sgm.sampling.sigma_ops import step_range

        full = compute_sigmas(scheduler, model.model_sampling, steps, 1.0)
        sigmas = step_range(full, start_at_step, end_at_step, return_with_leftover_noise != "enable")
        guider = GuiderValue(model, tuple(positive), tuple(negative), float(cfg))
        noise = NoiseValue(noise_seed if add_noise == "enable" else None)
        return sample_both(guider, SamplerValue(sampler_name), sigmas, latent_image, noise, ctx,
                           "KSamplerAdvanced")[0]

    @node("KSamplerSelect", display_name="KSamplerSelect", category="sampling/custom_sampling/samplers",
          compat=COMPAT)
    def ksampler_select(sampler_name: Choice(choices=sampler_names)) -> Out(SAMPLER="SAMPLER"):
        """A sampling algorithm with its default options."""
        return SamplerValue(sampler_name)

    @node("BasicScheduler", display_name="BasicScheduler", category="sampling/custom_sampling/schedulers",
          compat=COMPAT)
    def basic_scheduler(
        model: "MODEL",
        scheduler: Choice(choices=scheduler_names),
        steps: Int(default=20, min=1, max=10000),
        denoise: Float(default=1.0, min=0.0, max=1.0, step=0.01),
    ) -> Out(SIGMAS="SIGMAS"):
        """The model's noise levels for a schedule; denoise < 1 keeps the tail (latentflow's Scheduler)."""
        return call(ours, "Scheduler", model=model, scheduler=scheduler, steps=steps, denoise=denoise)

    @node("SDTurboScheduler", display_name="SDTurboScheduler", category="sampling/custom_sampling/schedulers",
          compat=COMPAT)
    def sd_turbo_scheduler(
        model: "MODEL",
        steps: Int(default=1, min=1, max=10),
        denoise: Float(default=1.0, min=0, max=1.0, step=0.01),
    ) -> Out(SIGMAS="SIGMAS"):
        """SD-Turbo's schedule: timesteps 999, 899, ..., 99 from the one denoise picks."""
        from sgm.sampling.sigma_ops import sd_turbo_sigmas

        return sd_turbo_sigmas(model.model_sampling, steps, denoise)

    @node("SamplerCustom", display_name="SamplerCustom", category="sampling/custom_sampling", compat=COMPAT)
    def sampler_custom(
        model: "MODEL",
        add_noise: Bool(default=True),
        noise_seed: seed_widget(),
        cfg: Float(**CFG),
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        sampler: "SAMPLER",
        sigmas: "SIGMAS",
        latent_image: "LATENT",
        ctx: Context = None,
    ) -> Out(output="LATENT", denoised_output="LATENT"):
        """Sample along the given sigmas with CFG; also gives the last step's denoised estimate."""
        guider = GuiderValue(model, tuple(positive), tuple(negative), float(cfg))
        return sample_both(guider, sampler, sigmas, latent_image, NoiseValue(noise_seed if add_noise else None),
                           ctx, "SamplerCustom")

    @node("SamplerCustomAdvanced", display_name="SamplerCustomAdvanced", category="sampling/custom_sampling",
          compat=COMPAT)
    def sampler_custom_advanced(
        noise: "NOISE",
        guider: "GUIDER",
        sampler: "SAMPLER",
        sigmas: "SIGMAS",
        latent_image: "LATENT",
        ctx: Context = None,
    ) -> Out(output="LATENT", denoised_output="LATENT"):
        """Sample with a guider, a sampler, sigmas and noise; also gives the last step's denoised estimate."""
        return sample_both(guider, sampler, sigmas, latent_image, noise, ctx, "SamplerCustomAdvanced")

    @node("BasicGuider", display_name="BasicGuider", category="sampling/custom_sampling/guiders", compat=COMPAT)
    def basic_guider(model: "MODEL", conditioning: "CONDITIONING") -> Out(GUIDER="GUIDER"):
        """The model with one conditioning and no guidance (for guidance-distilled models)."""
        return GuiderValue(model, tuple(conditioning), (), 1.0)

    @node("CFGGuider", display_name="CFGGuider", category="sampling/custom_sampling/guiders", compat=COMPAT)
    def cfg_guider(model: "MODEL", positive: "CONDITIONING", negative: "CONDITIONING",
                   cfg: Float(**CFG)) -> Out(GUIDER="GUIDER"):
        """Classifier-free guidance between two conditionings (latentflow's UNetDenoise)."""
        return call(ours, "UNetDenoise", model=model, positive=positive, negative=negative, cfg=cfg)

    @node("DualCFGGuider", display_name="DualCFGGuider", category="sampling/custom_sampling/guiders",
          compat=COMPAT)
    def dual_cfg_guider(
        model: "MODEL",
        cond1: "CONDITIONING",
        cond2: "CONDITIONING",
        negative: "CONDITIONING",
        cfg_conds: Float(**CFG),
        cfg_cond2_negative: Float(**CFG),
        style: Choice(choices=("regular", "nested")),
    ) -> Out(GUIDER="GUIDER"):
        """Guidance from the negative to cond2 (cfg_cond2_negative) and from cond2 to cond1 (cfg_conds);
        nested applies the second to the result of the first."""
        return GuiderValue(model, tuple(cond1), tuple(negative), float(cfg_conds), middle=tuple(cond2),
                           cfg_middle=float(cfg_cond2_negative), dual_style=style)

    @node("RandomNoise", display_name="RandomNoise", category="sampling/custom_sampling/noise", compat=COMPAT)
    def random_noise(noise_seed: seed_widget()) -> Out(NOISE="NOISE"):
        """Seeded starting noise (batch item i uses seed + i)."""
        return NoiseValue(noise_seed)

    @node("DisableNoise", display_name="DisableNoise", category="sampling/custom_sampling/noise", compat=COMPAT)
    def disable_noise() -> Out(NOISE="NOISE"):
        """No starting noise: sample the latent as it is (one that is already noisy)."""
        return NoiseValue(None)

    @node("SetFirstSigma", display_name="SetFirstSigma", category="sampling/custom_sampling/sigmas", compat=COMPAT)
    def set_first_sigma(sigmas: "SIGMAS",
                        sigma: Float(default=136.0, min=0.0, max=20000.0, step=0.001, round=False)
                        ) -> Out(SIGMAS="SIGMAS"):
        """The schedule with its first sigma replaced."""
        from sgm.sampling.sigma_ops import set_first_sigma as set_first

        return set_first(sigmas, sigma)

    @node("SplitSigmas", display_name="SplitSigmas", category="sampling/custom_sampling/sigmas", compat=COMPAT)
    def split_sigmas(sigmas: "SIGMAS", step: Int(**STEP)) -> Out(high_sigmas="SIGMAS", low_sigmas="SIGMAS"):
        """Cut the schedule at a step; both halves hold that step's sigma."""
        from sgm.sampling.sigma_ops import split_sigmas as split

        return split(sigmas, step)

    @node("SplitSigmasDenoise", display_name="SplitSigmasDenoise", category="sampling/custom_sampling/sigmas",
          compat=COMPAT)
    def split_sigmas_denoise(sigmas: "SIGMAS", denoise: Float(default=1.0, min=0.0, max=1.0, step=0.01)
                             ) -> Out(high_sigmas="SIGMAS", low_sigmas="SIGMAS"):
        """Cut the schedule so that the low half has denoise x steps."""
        from sgm.sampling.sigma_ops import split_sigmas_denoise as split

        return split(sigmas, denoise)

    @node("FlipSigmas", display_name="FlipSigmas", category="sampling/custom_sampling/sigmas", compat=COMPAT)
    def flip_sigmas(sigmas: "SIGMAS") -> Out(SIGMAS="SIGMAS"):
        """The schedule reversed (a leading 0 becomes 0.0001)."""
        from sgm.sampling.sigma_ops import flip_sigmas as flip

        return flip(sigmas)

    @node("ModelSamplingDiscrete", display_name="ModelSamplingDiscrete", category="advanced/model", compat=COMPAT)
    def model_sampling_discrete(
        model: "MODEL",
        sampling: Choice(choices=SAMPLINGS, tooltip="img_to_img: the network maps its unscaled input to the "
                                                    "result (Lotus)"),
        zsnr: Bool(default=False),
    ) -> Out(MODEL="MODEL"):
        """The model with another prediction type (eps, v_prediction, lcm, x0, img_to_img) on SD's discrete noise levels,
        optionally rescaled to zero terminal SNR (v_prediction only)."""
        from sgm.sampling.model_sampling_extra import discrete_model_sampling

        old = model.model_sampling
        schedule = {k: getattr(old, k) for k in ("num_timesteps", "beta_start", "beta_end") if hasattr(old, k)}
        try:
            new = discrete_model_sampling(sampling, zsnr, **schedule)
        except ValueError as error:
            raise ValueError(f"ModelSamplingDiscrete: {error}") from error
        return replace(model, model_sampling=new)

    @node("RescaleCFG", display_name="RescaleCFG", category="advanced/model", compat=COMPAT)
    def rescale_cfg(
        model: "MODEL",
        multiplier: Float(default=0.7, min=0.0, max=1.0, step=0.01),
    ) -> Out(MODEL="MODEL"):
        """The model with CFG rescaled (Lin et al. 2024): the guided prediction's spread is brought back to the
        positive prompt's, by ``multiplier`` (0 = plain CFG); curbs the over-saturation of high cfg, for v-prediction
        and zero-terminal-SNR models above all."""
        return replace(model, cfg_rescale=float(multiplier))

    return [ksampler_advanced, ksampler_select, basic_scheduler, sd_turbo_scheduler, sampler_custom,
            sampler_custom_advanced, basic_guider, cfg_guider, dual_cfg_guider, random_noise, disable_noise,
            set_first_sigma, split_sigmas, split_sigmas_denoise, flip_sigmas, model_sampling_discrete, rescale_cfg]
