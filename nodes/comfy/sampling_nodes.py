"""ComfyUI's parametric scheduler, sigma and sampler-selector nodes of custom sampling, and its CFG
variants (Perp-Neg, APG, TCFG, CFG-Zero*, CFGNorm), over the library (``sgm.sampling.schedules_extra``,
``sgm.sampling.sigma_ops``, the samplers' options, ``sgm.sampling.guiders_extra``).

The CFG variants record a patch on the MODEL (``ModelValue.guidance_patches``, as ``nodes.comfy.model_patches``
does); it acts inside the classifier-free guidance of every run with that MODEL.

SIGMAS is a float32 sigma tensor and SAMPLER our ``SamplerValue`` (a sampler name of
``sgm.sampling.samplers.SAMPLERS`` and its options), as in ``nodes.comfy.custom_sampling``, so these
connect to SamplerCustom / SamplerCustomAdvanced and to our own custom-sampling nodes.

The ``noise_device`` choice of ComfyUI's SDE selectors is accepted and has no effect: our samplers draw
all noise from the CPU generator, so a seed gives the same image on every device
(``sgm.sampling.names.GPU_ALIASES``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from engine.api import Bool, Choice, Float, Int, NodeSpec, Out, node
from nodes.comfy import COMPAT
from nodes.runtime import Runtime
from nodes.sampling import GuiderValue, SamplerValue
from nodes.values import ModelValue

SCHEDULERS = "sampling/custom_sampling/schedulers"
SAMPLERS = "sampling/custom_sampling/samplers"
SIGMAS = "sampling/custom_sampling/sigmas"
STEPS = dict(default=20, min=1, max=10000)
SIGMA_MAX = dict(default=14.614642, min=0.0, max=5000.0, step=0.01, round=False)  # SD's discrete sigma range
SIGMA_MIN = dict(default=0.0291675, min=0.0, max=5000.0, step=0.01, round=False)
NOISE = dict(default=1.0, min=0.0, max=100.0, step=0.01, round=False)  # eta, s_noise
NOISE_DEVICES = ("gpu", "cpu")


def _schedule(node_id: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a library schedule, naming the node in its error."""
    try:
        return build(*args, **kwargs)
    except ValueError as error:
        raise ValueError(f"{node_id}: {error}") from error


def _extra() -> Any:
    """``sgm.sampling.schedules_extra``, imported when a node runs (it imports torch)."""
    from sgm.sampling import schedules_extra

    return schedules_extra


def schedulers() -> list[NodeSpec]:
    @node("KarrasScheduler", display_name="KarrasScheduler", category=SCHEDULERS, compat=COMPAT)
    def karras_scheduler(
        steps: Int(**STEPS),
        sigma_max: Float(**SIGMA_MAX),
        sigma_min: Float(**SIGMA_MIN),
        rho: Float(default=7.0, min=0.0, max=100.0, step=0.01, round=False),
    ) -> Out(SIGMAS="SIGMAS"):
        """Karras et al. 2022's schedule between sigma_max and sigma_min (rho 7: more steps at low noise)."""
        return _schedule("KarrasScheduler", _extra().karras_range, steps, sigma_max, sigma_min, rho)

    @node("ExponentialScheduler", display_name="ExponentialScheduler", category=SCHEDULERS, compat=COMPAT)
    def exponential_scheduler(steps: Int(**STEPS), sigma_max: Float(**SIGMA_MAX),
                              sigma_min: Float(**SIGMA_MIN)) -> Out(SIGMAS="SIGMAS"):
        """Sigmas uniform in log sigma from sigma_max to sigma_min."""
        return _schedule("ExponentialScheduler", _extra().exponential_range, steps, sigma_max, sigma_min)

    @node("PolyexponentialScheduler", display_name="PolyexponentialScheduler", category=SCHEDULERS,
          compat=COMPAT)
    def polyexponential_scheduler(
        steps: Int(**STEPS),
        sigma_max: Float(**SIGMA_MAX),
        sigma_min: Float(**SIGMA_MIN),
        rho: Float(default=1.0, min=0.0, max=100.0, step=0.01, round=False),
    ) -> Out(SIGMAS="SIGMAS"):
        """A polynomial of degree rho in log sigma (rho 1 = exponential)."""
        return _schedule("PolyexponentialScheduler", _extra().polyexponential, steps, sigma_max, sigma_min, rho)

    @node("VPScheduler", display_name="VPScheduler", category=SCHEDULERS, compat=COMPAT)
    def vp_scheduler(
        steps: Int(**STEPS),
        beta_d: Float(default=19.9, min=0.0, max=5000.0, step=0.01, round=False),
        beta_min: Float(default=0.1, min=0.0, max=5000.0, step=0.01, round=False),
        eps_s: Float(default=0.001, min=0.0, max=1.0, step=0.0001, round=False),
    ) -> Out(SIGMAS="SIGMAS"):
        """The continuous VP SDE's noise levels (Song et al. 2021) at t from 1 to eps_s."""
        return _schedule("VPScheduler", _extra().vp, steps, beta_d, beta_min, eps_s)

    @node("BetaSamplingScheduler", display_name="BetaSamplingScheduler", category=SCHEDULERS, compat=COMPAT)
    def beta_sampling_scheduler(
        model: "MODEL",
        steps: Int(**STEPS),
        alpha: Float(default=0.6, min=0.0, max=50.0, step=0.01, round=False),
        beta: Float(default=0.6, min=0.0, max=50.0, step=0.01, round=False),
    ) -> Out(SIGMAS="SIGMAS"):
        """The model's timesteps at Beta(alpha, beta) quantiles (Lee et al. 2024; KSampler's "beta" at 0.6, 0.6)."""
        return _schedule("BetaSamplingScheduler", _extra().beta_sampling, model.model_sampling, steps, alpha, beta)

    @node("LaplaceScheduler", display_name="LaplaceScheduler", category=SCHEDULERS, compat=COMPAT)
    def laplace_scheduler(
        steps: Int(**STEPS),
        sigma_max: Float(**SIGMA_MAX),
        sigma_min: Float(**SIGMA_MIN),
        mu: Float(default=0.0, min=-10.0, max=10.0, step=0.1, round=False),
        beta: Float(default=0.5, min=0.0, max=10.0, step=0.1, round=False),
    ) -> Out(SIGMAS="SIGMAS"):
        """Log sigma at Laplace(mu, beta) quantiles (Hang et al. 2024); like ComfyUI's, without a final 0."""
        return _schedule("LaplaceScheduler", _extra().laplace, steps, sigma_max, sigma_min, mu, beta)

    @node("AlignYourStepsScheduler", display_name="AlignYourStepsScheduler", category=SCHEDULERS, compat=COMPAT)
    def align_your_steps_scheduler(
        model_type: Choice(choices=("SD1", "SDXL", "SVD")),
        steps: Int(default=10, min=1, max=10000),
        denoise: Float(default=1.0, min=0.0, max=1.0, step=0.01),
    ) -> Out(SIGMAS="SIGMAS"):
        """NVIDIA's Align Your Steps schedule (Sabour et al. 2024) for the model type, interpolated to
        ``steps``; denoise < 1 keeps its last steps."""
        return _schedule("AlignYourStepsScheduler", _extra().align_your_steps, model_type, steps, denoise)

    @node("GITSScheduler", display_name="GITSScheduler", category=SCHEDULERS, compat=COMPAT)
    def gits_scheduler(
        coeff: Float(default=1.2, min=0.8, max=1.5, step=0.05),
        steps: Int(default=10, min=2, max=1000),
        denoise: Float(default=1.0, min=0.0, max=1.0, step=0.01),
    ) -> Out(SIGMAS="SIGMAS"):
        """The GITS schedule (Chen et al. 2024) for SD 1.5 models; denoise < 1 keeps its last steps."""
        return _schedule("GITSScheduler", _extra().gits, coeff, steps, denoise)

    return [karras_scheduler, exponential_scheduler, polyexponential_scheduler, vp_scheduler,
            beta_sampling_scheduler, laplace_scheduler, align_your_steps_scheduler, gits_scheduler]


def sigma_nodes() -> list[NodeSpec]:
    @node("SamplingPercentToSigma", display_name="SamplingPercentToSigma", category=SIGMAS, compat=COMPAT)
    def sampling_percent_to_sigma(
        model: "MODEL",
        sampling_percent: Float(default=0.0, min=0.0, max=1.0, step=0.0001),
        return_actual_sigma: Bool(default=False, tooltip="the model's sigma_max / sigma_min at 0 and 1 instead "
                                                         "of the values a range check uses (999999999.9 and 0)"),
    ) -> Out(sigma_value="FLOAT"):
        """The sigma reached after a fraction of sampling (0 = pure noise, 1 = done)."""
        from sgm.sampling.sigma_ops import sampling_percent_to_sigma as to_sigma

        return _schedule("SamplingPercentToSigma", to_sigma, model.model_sampling, sampling_percent,
                         return_actual_sigma)

    @node("ExtendIntermediateSigmas", display_name="ExtendIntermediateSigmas", category=SIGMAS, compat=COMPAT)
    def extend_intermediate_sigmas(
        sigmas: "SIGMAS",
        steps: Int(default=2, min=1, max=100),
        start_at_sigma: Float(default=-1.0, min=-1.0, max=20000.0, step=0.01, round=False),
        end_at_sigma: Float(default=12.0, min=0.0, max=20000.0, step=0.01, round=False),
        spacing: Choice(choices=("linear", "cosine", "sine")),
    ) -> Out(SIGMAS="SIGMAS"):
        """Split each step that starts between end_at_sigma and start_at_sigma (-1: no limit) into ``steps``."""
        from sgm.sampling.sigma_ops import extend_intermediate_sigmas as extend

        return _schedule("ExtendIntermediateSigmas", extend, sigmas, steps, start_at_sigma, end_at_sigma, spacing)

    return [sampling_percent_to_sigma, extend_intermediate_sigmas]


def sampler_nodes() -> list[NodeSpec]:
    def chosen(name: str, **options: Any) -> SamplerValue:
        return SamplerValue(name, tuple(options.items()))

    @node("SamplerEulerAncestral", display_name="SamplerEulerAncestral", category=SAMPLERS, compat=COMPAT)
    def sampler_euler_ancestral(eta: Float(**NOISE), s_noise: Float(**NOISE)) -> Out(SAMPLER="SAMPLER"):
        """Ancestral Euler; eta scales the fresh noise of each step (0 = plain Euler)."""
        return chosen("euler_ancestral", eta=float(eta), s_noise=float(s_noise))

    @node("SamplerEulerAncestralCFGPP", display_name="SamplerEulerAncestralCFG++", category=SAMPLERS,
          compat=COMPAT)
    def sampler_euler_ancestral_cfg_pp(
        eta: Float(default=1.0, min=0.0, max=1.0, step=0.01, round=False),
        s_noise: Float(default=1.0, min=0.0, max=10.0, step=0.01, round=False),
    ) -> Out(SAMPLER="SAMPLER"):
        """Ancestral Euler with CFG++ (Chung et al. 2024)."""
        return chosen("euler_ancestral_cfg_pp", eta=float(eta), s_noise=float(s_noise))

    @node("SamplerLMS", display_name="SamplerLMS", category=SAMPLERS, compat=COMPAT)
    def sampler_lms(order: Int(default=4, min=1, max=100)) -> Out(SAMPLER="SAMPLER"):
        """Linear multistep over the last ``order`` slopes."""
        return chosen("lms", order=int(order))

    @node("SamplerDPMPP_3M_SDE", display_name="SamplerDPMPP_3M_SDE", category=SAMPLERS, compat=COMPAT)
    def sampler_dpmpp_3m_sde(eta: Float(**NOISE), s_noise: Float(**NOISE),
                             noise_device: Choice(choices=NOISE_DEVICES)) -> Out(SAMPLER="SAMPLER"):
        """DPM-Solver++(3M) SDE; noise_device has no effect (noise is drawn on the CPU, see the module)."""
        return chosen("dpmpp_3m_sde", eta=float(eta), s_noise=float(s_noise))

    @node("SamplerDPMPP_2M_SDE", display_name="SamplerDPMPP_2M_SDE", category=SAMPLERS, compat=COMPAT)
    def sampler_dpmpp_2m_sde(solver_type: Choice(choices=("midpoint", "heun")), eta: Float(**NOISE),
                             s_noise: Float(**NOISE),
                             noise_device: Choice(choices=NOISE_DEVICES)) -> Out(SAMPLER="SAMPLER"):
        """DPM-Solver++(2M) SDE with the midpoint or Heun correction; noise_device has no effect."""
        return chosen("dpmpp_2m_sde", eta=float(eta), s_noise=float(s_noise), solver_type=solver_type)

    @node("SamplerDPMPP_SDE", display_name="SamplerDPMPP_SDE", category=SAMPLERS, compat=COMPAT)
    def sampler_dpmpp_sde(eta: Float(**NOISE), s_noise: Float(**NOISE),
                          r: Float(default=0.5, min=0.0, max=100.0, step=0.01, round=False),
                          noise_device: Choice(choices=NOISE_DEVICES)) -> Out(SAMPLER="SAMPLER"):
        """DPM-Solver++ SDE; r places its intermediate stage (fraction of the step in log sigma)."""
        if r <= 0:
            raise ValueError(f"SamplerDPMPP_SDE: r must be > 0 (the stage position), got {r}")
        return chosen("dpmpp_sde", eta=float(eta), s_noise=float(s_noise), r=float(r))

    @node("SamplerDPMPP_2S_Ancestral", display_name="SamplerDPMPP_2S_Ancestral", category=SAMPLERS,
          compat=COMPAT)
    def sampler_dpmpp_2s_ancestral(eta: Float(**NOISE), s_noise: Float(**NOISE)) -> Out(SAMPLER="SAMPLER"):
        """Ancestral DPM-Solver++(2S)."""
        return chosen("dpmpp_2s_ancestral", eta=float(eta), s_noise=float(s_noise))

    @node("SamplerEulerCFGpp", display_name="SamplerEulerCFG++", category="_for_testing", compat=COMPAT)
    def sampler_euler_cfg_pp(version: Choice(choices=("regular", "alternative"))) -> Out(SAMPLER="SAMPLER"):
        """Euler with CFG++; "alternative" is ComfyUI's other form of the step (see ``sample_euler_cfg_pp``)."""
        return chosen("euler_cfg_pp", alternative=True) if version == "alternative" else chosen("euler_cfg_pp")

    @node("SamplerDPMAdaptative", display_name="SamplerDPMAdaptative", category=SAMPLERS, compat=COMPAT)
    def sampler_dpm_adaptative(
        order: Int(default=3, min=2, max=3),
        rtol: Float(default=0.05, min=0.0, max=100.0, step=0.01, round=False),
        atol: Float(default=0.0078, min=0.0, max=100.0, step=0.01, round=False),
        h_init: Float(default=0.05, min=0.0, max=100.0, step=0.01, round=False),
        pcoeff: Float(default=0.0, min=0.0, max=100.0, step=0.01, round=False),
        icoeff: Float(default=1.0, min=0.0, max=100.0, step=0.01, round=False),
        dcoeff: Float(default=0.0, min=0.0, max=100.0, step=0.01, round=False),
        accept_safety: Float(default=0.81, min=0.0, max=100.0, step=0.01, round=False),
        eta: Float(default=0.0, min=0.0, max=100.0, step=0.01, round=False),
        s_noise: Float(**NOISE),
    ) -> Out(SAMPLER="SAMPLER"):
        """DPM-Solver-12/23 with adaptive steps (Lu et al. 2022): only the schedule's ends are used."""
        return chosen("dpm_adaptive", order=int(order), rtol=float(rtol), atol=float(atol), h_init=float(h_init),
                      pcoeff=float(pcoeff), icoeff=float(icoeff), dcoeff=float(dcoeff),
                      accept_safety=float(accept_safety), eta=float(eta), s_noise=float(s_noise))

    return [sampler_euler_ancestral, sampler_euler_ancestral_cfg_pp, sampler_lms, sampler_dpmpp_3m_sde,
            sampler_dpmpp_2m_sde, sampler_dpmpp_sde, sampler_dpmpp_2s_ancestral, sampler_euler_cfg_pp,
            sampler_dpm_adaptative, *more_sampler_nodes()]


def more_sampler_nodes() -> list[NodeSpec]:
    """Selectors whose sampler is not a KSampler name: the SAMPLER carries the library function itself
    (``sgm.sampling.samplers_more``; ``sgm.sampling.sample.resolve_sampler`` takes a callable)."""

    @node("SamplerER_SDE", display_name="SamplerER_SDE", category=SAMPLERS, compat=COMPAT)
    def sampler_er_sde(
        solver_type: Choice(choices=("ER-SDE", "Reverse-time SDE", "ODE")),
        max_stage: Int(default=3, min=1, max=3),
        eta: Float(default=1.0, min=0.0, max=100.0, step=0.01, round=False,
                   tooltip="noise of the reverse-time SDE (0 = the ODE); not used by ER-SDE"),
        s_noise: Float(**NOISE),
    ) -> Out(SAMPLER="SAMPLER"):
        """ER-SDE-Solver (Cui et al. 2025) of order up to max_stage, with ER-SDE's noise scale, the
        reverse-time SDE's (sigma^(eta + 1)) or none (the ODE)."""
        from sgm.sampling.samplers_more import er_sde_options

        return SamplerValue("er_sde", tuple(er_sde_options(solver_type, int(max_stage), float(eta),
                                                           float(s_noise)).items()))

    @node("SamplerSASolver", display_name="SamplerSASolver", category=SAMPLERS, compat=COMPAT)
    def sampler_sa_solver(
        model: "MODEL",
        eta: Float(default=1.0, min=0.0, max=10.0, step=0.01, round=False),
        sde_start_percent: Float(default=0.2, min=0.0, max=1.0, step=0.001),
        sde_end_percent: Float(default=0.8, min=0.0, max=1.0, step=0.001),
        s_noise: Float(**NOISE),
        predictor_order: Int(default=3, min=1, max=6),
        corrector_order: Int(default=4, min=0, max=6),
        use_pece: Bool(tooltip="PECE: evaluate the model again at each corrected state (about 2x the calls)"),
        simple_order_2: Bool(tooltip="the paper's simplified weights where two estimates are used"),
    ) -> Out(SAMPLER="SAMPLER"):
        """SA-Solver (Xue et al. 2023): stochastic Adams predictor (and corrector, order 0 = none), with noise
        eta between sde_start_percent and sde_end_percent of sampling (0 = pure noise) and the ODE elsewhere."""
        from sgm.sampling.samplers_more import sample_sa_solver_ext
        from sgm.sampling.sigma_ops import percent_to_sigma

        high = percent_to_sigma(model.model_sampling, float(sde_start_percent))
        low = percent_to_sigma(model.model_sampling, float(sde_end_percent))
        return SamplerValue(sample_sa_solver_ext, (  # type: ignore[arg-type]
            ("eta", float(eta)), ("s_noise", float(s_noise)), ("tau_interval", (low, high)),
            ("predictor_order", int(predictor_order)), ("corrector_order", int(corrector_order)),
            ("use_pece", bool(use_pece)), ("simple_order_2", bool(simple_order_2))))

    @node("SamplerLCMUpscale", display_name="SamplerLCMUpscale", category=SAMPLERS, compat=COMPAT)
    def sampler_lcm_upscale(
        scale_ratio: Float(default=1.0, min=0.1, max=20.0, step=0.01),
        scale_steps: Int(default=-1, min=-1, max=1000, step=1),
        upscale_method: Choice(choices=("bislerp", "nearest-exact", "bilinear", "area", "bicubic")),
    ) -> Out(SAMPLER="SAMPLER"):
        """LCM sampling that enlarges the latent by scale_ratio over its first scale_steps steps (-1: about
        half of them)."""
        from sgm.sampling.samplers_more import sample_lcm_upscale

        if upscale_method == "bislerp":
            raise ValueError("SamplerLCMUpscale: upscale_method 'bislerp' is not supported here; pick bicubic, "
                             "bilinear, area or nearest-exact")
        return SamplerValue(sample_lcm_upscale, (  # type: ignore[arg-type]
            ("total_upscale", float(scale_ratio)), ("upscale_method", upscale_method),
            ("upscale_steps", None if scale_steps < 0 else int(scale_steps))))

    return [sampler_er_sde, sampler_sa_solver, sampler_lcm_upscale]


def _with_guidance(model: ModelValue, patch: Any) -> ModelValue:
    """The MODEL with a CFG variant recorded (``sgm.sampling.guiders_extra``), applied while it samples."""
    return replace(model, guidance_patches=model.guidance_patches + (patch,))


def guidance_nodes() -> list[NodeSpec]:
    @node("PerpNegGuider", display_name="PerpNegGuider", category="_for_testing", compat=COMPAT)
    def perp_neg_guider(
        model: "MODEL",
        positive: "CONDITIONING",
        negative: "CONDITIONING",
        empty_conditioning: "CONDITIONING",
        cfg: Float(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        neg_scale: Float(default=1.0, min=0.0, max=100.0, step=0.01),
    ) -> Out(GUIDER="GUIDER"):
        """Perp-Neg guidance (Armandpour et al. 2023): guidance from the empty prompt towards the positive one,
        pushed away only from the part of the negative prompt perpendicular to the positive one."""
        from sgm.sampling.guiders_extra import PerpNeg

        patched = _with_guidance(model, PerpNeg(tuple(empty_conditioning), float(neg_scale)))
        return GuiderValue(patched, tuple(positive), tuple(negative), float(cfg))

    @node("PerpNeg", display_name="Perp-Neg (DEPRECATED by PerpNegGuider)", category="_for_testing",
          deprecated=True, compat=COMPAT)
    def perp_neg_model(
        model: "MODEL",
        empty_conditioning: "CONDITIONING",
        neg_scale: Float(default=1.0, min=0.0, max=100.0, step=0.01),
    ) -> Out(MODEL="MODEL"):
        """The model with Perp-Neg in place of CFG (use PerpNegGuider)."""
        from sgm.sampling.guiders_extra import PerpNeg

        return _with_guidance(model, PerpNeg(tuple(empty_conditioning), float(neg_scale)))

    @node("CFGZeroStar", display_name="CFGZeroStar", category="advanced/guidance", compat=COMPAT)
    def cfg_zero_star(model: "MODEL") -> Out(patched_model="MODEL"):
        """CFG-Zero* (Fan et al. 2025): the unconditional estimate is scaled by its optimal projection
        coefficient before guiding."""
        from sgm.sampling.guiders_extra import CFGZeroStar

        return _with_guidance(model, CFGZeroStar())

    @node("APG", display_name="Adaptive Projected Guidance", category="sampling/custom_sampling", compat=COMPAT)
    def apg(
        model: "MODEL",
        eta: Float(default=1.0, min=-10.0, max=10.0, step=0.01,
                   tooltip="weight of the guidance's part parallel to the conditional estimate (1 = CFG's)"),
        norm_threshold: Float(default=5.0, min=0.0, max=50.0, step=0.1,
                              tooltip="largest norm of the guidance; 0 = no limit"),
        momentum: Float(default=0.0, min=-5.0, max=1.0, step=0.01,
                        tooltip="running average of the guidance over the steps; 0 = off"),
    ) -> Out(MODEL="MODEL"):
        """Adaptive Projected Guidance (Sadat et al. 2024): damps the over-saturating part of CFG's guidance."""
        from sgm.sampling.guiders_extra import APG

        return _with_guidance(model, APG(float(eta), float(norm_threshold), float(momentum)))

    @node("TCFG", display_name="Tangential Damping CFG", category="advanced/guidance", compat=COMPAT)
    def tcfg(model: "MODEL") -> Out(patched_model="MODEL"):
        """TCFG (Kwon et al. 2025): the unconditional estimate keeps only its component along the direction
        it shares with the conditional one."""
        from sgm.sampling.guiders_extra import TCFG

        return _with_guidance(model, TCFG())

    @node("CFGNorm", display_name="CFGNorm", category="advanced/guidance", compat=COMPAT)
    def cfg_norm(model: "MODEL", strength: Float(default=1.0, min=0.0, max=100.0, step=0.01)
                 ) -> Out(patched_model="MODEL"):
        """The guided estimate's per-pixel norm is capped at the conditional one's, then scaled by strength."""
        from sgm.sampling.guiders_extra import CFGNorm

        return _with_guidance(model, CFGNorm(float(strength)))

    return [perp_neg_guider, perp_neg_model, cfg_zero_star, apg, tcfg, cfg_norm]


def nodes(runtime: Runtime, ours: Mapping[str, NodeSpec]) -> list[NodeSpec]:
    return [*schedulers(), *sigma_nodes(), *sampler_nodes(), *guidance_nodes()]
