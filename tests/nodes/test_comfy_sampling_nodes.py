"""ComfyUI's parametric scheduler, sigma and sampler-selector nodes (nodes.comfy.sampling_nodes).

Their interface is checked field by field with every other adapter (test_comfy_interface.py). Here:
the schedulers give the library's values; each sampler selector with its default widgets samples
exactly what KSamplerSelect with the same sampler name does (same seed), and a changed parameter
changes the result as the algorithm says (eta 0 ancestral = Euler, LMS of order 1 = Euler, ...).
Sampling goes through ``sgm.sampling.sample.sample`` with the SAMPLER's name and options, as the
sampling nodes run it, on a closed-form denoiser (Gaussian data: the exact x0 estimate).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from nodes.sampling import SamplerValue
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.sample import sample
from sgm.sampling.schedules import compute_sigmas

SD = DiscreteModelSampling()
MODEL = SimpleNamespace(model_sampling=SD)  # what the scheduler nodes read of a MODEL


class Gaussian:
    """Exact denoiser for data x0 ~ N(mu, s^2) per element: D = mu + s^2 / (s^2 + sigma^2) (x - mu)."""

    def __init__(self, mu: float, s: float) -> None:
        self.mu, self.s = mu, s

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(-1, 1, 1, 1)
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)


class Guided:
    """CFG between two Gaussian denoisers, with the unconditional branch for CFG++ samplers."""

    model_sampling = SD

    def __init__(self, cfg: float = 1.0) -> None:
        self.cond, self.uncond, self.cfg = Gaussian(0.5, 0.8), Gaussian(-0.3, 1.2), cfg

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.uncond(x, sigma)
        return u + self.cfg * (self.cond(x, sigma) - u), u

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise_with_uncond(x, sigma)[0]


def defaults(object_info: dict[str, Any], name: str) -> dict[str, Any]:
    """A node's widget defaults (a choice's first entry), as a fresh ComfyUI node has them."""
    out = {}
    for key, entry in object_info[name]["input"]["required"].items():
        kind, options = entry[0], entry[1] if len(entry) > 1 else {}
        if isinstance(kind, list):
            out[key] = kind[0]
        elif "default" in options:
            out[key] = options["default"]
    return out


def run(value: SamplerValue, seed: int = 3, cfg: float = 1.0, add_noise: bool = True, steps: int = 8) -> torch.Tensor:
    sigmas = compute_sigmas("karras", SD, steps)
    latent = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(11))
    if not add_noise:  # an already noisy latent: only the sampler's own noise depends on the seed
        latent = latent * float(sigmas[0])
    return sample(Guided(cfg), value.name, sigmas, latent, seed, sampler_options=dict(value.options),
                  add_noise=add_noise)


SELECTORS = {  # node -> the KSampler name its default widgets stand for
    "SamplerEulerAncestral": "euler_ancestral",
    "SamplerEulerAncestralCFGPP": "euler_ancestral_cfg_pp",
    "SamplerLMS": "lms",
    "SamplerDPMPP_2M_SDE": "dpmpp_2m_sde",
    "SamplerDPMPP_3M_SDE": "dpmpp_3m_sde_gpu",  # noise_device "gpu" first, as ComfyUI's
    "SamplerDPMPP_SDE": "dpmpp_sde_gpu",
    "SamplerDPMPP_2S_Ancestral": "dpmpp_2s_ancestral",
    "SamplerEulerCFGpp": "euler_cfg_pp",
    "SamplerDPMAdaptative": "dpm_adaptive",
}


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_selector_defaults_sample_what_ksampler_select_gives(object_info: dict[str, Any],
                                                           nodes: dict[str, Any], name: str) -> None:
    value = nodes[name](**defaults(object_info, name))
    assert isinstance(value, SamplerValue)
    plain = nodes["KSamplerSelect"](sampler_name=SELECTORS[name])
    torch.testing.assert_close(run(value, cfg=3.0), run(plain, cfg=3.0), rtol=0, atol=0)


def test_noise_device_changes_nothing(nodes: dict[str, Any]) -> None:
    for name, extra in (("SamplerDPMPP_SDE", {"r": 0.5}), ("SamplerDPMPP_3M_SDE", {})):
        gpu, cpu = (nodes[name](eta=1.0, s_noise=1.0, noise_device=d, **extra) for d in ("gpu", "cpu"))
        torch.testing.assert_close(run(gpu), run(cpu), rtol=0, atol=0)


def test_ancestral_with_eta_zero_is_euler(nodes: dict[str, Any]) -> None:
    euler = run(nodes["KSamplerSelect"](sampler_name="euler"))
    torch.testing.assert_close(run(nodes["SamplerEulerAncestral"](eta=0.0, s_noise=1.0)), euler)
    assert not torch.allclose(run(nodes["SamplerEulerAncestral"](eta=0.5, s_noise=1.0)), euler)
    # CFG++ ancestral at eta 0 is Euler CFG++.
    torch.testing.assert_close(run(nodes["SamplerEulerAncestralCFGPP"](eta=0.0, s_noise=1.0), cfg=2.0),
                               run(nodes["KSamplerSelect"](sampler_name="euler_cfg_pp"), cfg=2.0))


def test_s_noise_zero_removes_the_sampler_noise(nodes: dict[str, Any]) -> None:
    """On an already noisy latent only the sampler's noise depends on the seed; s_noise 0 removes it."""
    for name, extra in (("SamplerEulerAncestral", {}), ("SamplerDPMPP_2S_Ancestral", {}),
                        ("SamplerDPMPP_SDE", {"r": 0.5, "noise_device": "cpu"}),
                        ("SamplerDPMPP_3M_SDE", {"noise_device": "cpu"})):
        quiet = nodes[name](eta=1.0, s_noise=0.0, **extra)
        torch.testing.assert_close(run(quiet, seed=1, add_noise=False), run(quiet, seed=2, add_noise=False))
        noisy = nodes[name](eta=1.0, s_noise=1.0, **extra)
        assert not torch.allclose(run(noisy, seed=1, add_noise=False), run(noisy, seed=2, add_noise=False)), name


def test_lms_order_one_is_euler_and_order_matters(nodes: dict[str, Any]) -> None:
    euler = run(nodes["KSamplerSelect"](sampler_name="euler"))
    torch.testing.assert_close(run(nodes["SamplerLMS"](order=1)), euler)
    assert not torch.allclose(run(nodes["SamplerLMS"](order=4)), euler)
    assert nodes["SamplerLMS"](order=2).options == (("order", 2),)


def test_dpmpp_2m_sde_solver_type_and_eta(nodes: dict[str, Any]) -> None:
    node = nodes["SamplerDPMPP_2M_SDE"]
    heun = node(solver_type="heun", eta=1.0, s_noise=1.0, noise_device="cpu")
    torch.testing.assert_close(run(heun), run(nodes["KSamplerSelect"](sampler_name="dpmpp_2m_sde_heun")),
                               rtol=0, atol=0)
    # eta 0 removes the SDE's noise and its extra decay: the midpoint form is DPM-Solver++(2M).
    ode = node(solver_type="midpoint", eta=0.0, s_noise=1.0, noise_device="cpu")
    torch.testing.assert_close(run(ode), run(nodes["KSamplerSelect"](sampler_name="dpmpp_2m")))


def test_dpmpp_sde_r_moves_the_intermediate_stage(nodes: dict[str, Any]) -> None:
    node = nodes["SamplerDPMPP_SDE"]
    half = run(node(eta=0.0, s_noise=1.0, r=0.5, noise_device="cpu"))
    assert not torch.allclose(run(node(eta=0.0, s_noise=1.0, r=0.3, noise_device="cpu")), half)
    with pytest.raises(ValueError, match="SamplerDPMPP_SDE: r must be > 0"):
        node(eta=1.0, s_noise=1.0, r=0.0, noise_device="cpu")


def test_euler_cfg_pp_alternative_by_hand(nodes: dict[str, Any]) -> None:
    alternative = nodes["SamplerEulerCFGpp"](version="alternative")
    # Without guidance (cfg 1: uncond = guided) it is Euler.
    plain = Guided(1.0)
    plain.uncond = plain.cond
    sigmas = torch.tensor([SD.sigma_max, 3.0, 0.0])
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * SD.sigma_max
    torch.testing.assert_close(
        sample(plain, alternative.name, sigmas, x, 0, sampler_options=dict(alternative.options), add_noise=False),
        sample(plain, "euler", sigmas, x, 0, add_noise=False))
    # One guided step by hand: x' = x + (x - 2 D_w + D_u) / sigma (sigma' - sigma).
    model = Guided(4.0)
    sigma, sigma_next = 5.0, 2.0
    s = torch.full((1,), sigma)
    guided, uncond = model.denoise_with_uncond(x, s)
    expected = x + (x - 2 * guided + uncond) / sigma * (sigma_next - sigma)
    out = sample(model, alternative.name, torch.tensor([sigma, sigma_next]), x, 0,
                 sampler_options=dict(alternative.options), add_noise=False)
    torch.testing.assert_close(out, expected)
    regular = sample(model, "euler_cfg_pp", torch.tensor([sigma, sigma_next]), x, 0, add_noise=False)
    torch.testing.assert_close(regular, guided + (x - uncond) / sigma * sigma_next)
    assert not torch.allclose(out, regular)


def test_dpm_adaptive_options_reach_the_sampler(nodes: dict[str, Any], object_info: dict[str, Any]) -> None:
    widgets = defaults(object_info, "SamplerDPMAdaptative")
    loose = run(nodes["SamplerDPMAdaptative"](**{**widgets, "rtol": 0.5, "atol": 0.5}))
    assert not torch.allclose(loose, run(nodes["SamplerDPMAdaptative"](**widgets)))
    assert dict(nodes["SamplerDPMAdaptative"](**{**widgets, "order": 2}).options)["order"] == 2


# --------------------------------------------------------------------------- schedulers and sigmas


def test_scheduler_nodes_give_the_library_schedules(nodes: dict[str, Any]) -> None:
    from sgm.sampling import schedules_extra as extra

    torch.testing.assert_close(nodes["KarrasScheduler"](steps=12, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0),
                               compute_sigmas("karras", SD, 12))  # the defaults are SD's range
    torch.testing.assert_close(nodes["ExponentialScheduler"](steps=6, sigma_max=14.614642, sigma_min=0.0291675),
                               compute_sigmas("exponential", SD, 6))
    torch.testing.assert_close(nodes["PolyexponentialScheduler"](steps=6, sigma_max=10.0, sigma_min=0.1, rho=2.0),
                               extra.polyexponential(6, 10.0, 0.1, 2.0))
    torch.testing.assert_close(nodes["VPScheduler"](steps=5, beta_d=19.9, beta_min=0.1, eps_s=0.001), extra.vp(5))
    torch.testing.assert_close(nodes["BetaSamplingScheduler"](model=MODEL, steps=9, alpha=0.6, beta=0.6),
                               compute_sigmas("beta", SD, 9))
    torch.testing.assert_close(nodes["LaplaceScheduler"](steps=7, sigma_max=14.6, sigma_min=0.03, mu=0.0, beta=0.5),
                               extra.laplace(7, 14.6, 0.03))
    torch.testing.assert_close(nodes["GITSScheduler"](coeff=0.85, steps=12, denoise=1.0), extra.gits(0.85, 12))
    ays = nodes["AlignYourStepsScheduler"](model_type="SDXL", steps=10, denoise=1.0)
    assert ays[1].item() == pytest.approx(6.3184485287, rel=1e-6) and ays[-1].item() == 0.0
    with pytest.raises(ValueError, match="ExponentialScheduler: sigma_min must be > 0"):
        nodes["ExponentialScheduler"](steps=6, sigma_max=14.6, sigma_min=0.0)


def test_sigma_nodes(nodes: dict[str, Any]) -> None:
    to_sigma = nodes["SamplingPercentToSigma"]
    assert to_sigma(model=MODEL, sampling_percent=0.0, return_actual_sigma=False) == 999999999.9
    assert to_sigma(model=MODEL, sampling_percent=0.0, return_actual_sigma=True) == pytest.approx(SD.sigma_max)
    assert to_sigma(model=MODEL, sampling_percent=1.0, return_actual_sigma=True) == pytest.approx(SD.sigma_min)
    half = to_sigma(model=MODEL, sampling_percent=0.5, return_actual_sigma=False)
    logs = SD.sigmas.double().log()  # timestep 499.5: halfway between 499 and 500 in log sigma
    assert half == pytest.approx(math.exp(0.5 * float(logs[499] + logs[500])), rel=1e-5)
    extended = nodes["ExtendIntermediateSigmas"](sigmas=torch.tensor([14.0, 10.0, 5.0, 0.0]), steps=2,
                                                 start_at_sigma=-1.0, end_at_sigma=12.0, spacing="linear")
    assert extended.tolist() == [14.0, 12.0, 10.0, 5.0, 0.0]


# --------------------------------------------------------------------------- CFG variants on a tiny UNet


def tiny_model(family: str = "sd1") -> Any:
    from nodes.values import ModelValue
    from tests.sgm.model_factories import tiny_unet

    return ModelValue(unet=tiny_unet(family), model_sampling=SD, family=family, name="tiny")


def prompt(seed: int, pooled: bool = False) -> Any:
    from sgm.text.conditioning import Condition
    from tests.sgm.model_factories import TINY_CONTEXT_DIM, TINY_POOLED_DIM

    g = torch.Generator().manual_seed(seed)
    return Condition(context=torch.randn(1, 5, TINY_CONTEXT_DIM, generator=g),
                     pooled=torch.randn(1, TINY_POOLED_DIM, generator=g) if pooled else None)


def branch(model: Any, conds: list[Any], x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    from sgm.sampling.guiders import GuidedDenoiser

    return GuidedDenoiser(model.unet, SD, conds)(x, sigma)


def make(guider: Any) -> Any:
    from nodes.sampling import _make_denoiser

    return _make_denoiser(guider, list(guider.positive), list(guider.negative), None, None)


X = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 4
SIGMA_3 = torch.full((1,), 3.0)


@pytest.mark.parametrize("name", ["CFGZeroStar", "TCFG", "APG", "CFGNorm"])
def test_cfg_variant_nodes_change_the_guidance_as_the_library_does(nodes: dict[str, Any], name: str) -> None:
    from nodes.sampling import GuiderValue
    from sgm.sampling import guiders_extra as ge

    model = tiny_model()
    widgets = {"APG": dict(eta=0.5, norm_threshold=2.0, momentum=0.0), "CFGNorm": dict(strength=0.9)}.get(name, {})
    patched = nodes[name](model=model, **widgets)
    assert model.guidance_patches == () and len(patched.guidance_patches) == 1  # the input MODEL is untouched
    cond, uncond = (branch(model, [prompt(i)], X, SIGMA_3) for i in (1, 2))
    run = ge.GuidanceRun(patched.guidance_patches)
    c, u = run.pre(X, SIGMA_3, cond, uncond, 6.0)
    expected = run.post(X, SIGMA_3, c, u, 6.0, u + 6.0 * (c - u))
    denoiser = make(GuiderValue(patched, (prompt(1),), (prompt(2),), 6.0))
    out = denoiser(X, SIGMA_3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, uncond + 6.0 * (cond - uncond), atol=1e-3)


def test_cfg_variants_stack_with_wrapper_patches_and_refuse_dual_cfg(nodes: dict[str, Any]) -> None:
    from nodes.sampling import GuiderValue, _make_denoiser
    from sgm.sampling.guiders import GuidedDenoiser

    model = nodes["CFGZeroStar"](model=nodes["Epsilon Scaling"](model=tiny_model(), scaling_factor=1.05))
    denoiser = make(GuiderValue(model, (prompt(1),), (prompt(2),), 6.0))
    assert isinstance(denoiser.inner, GuidedDenoiser) and denoiser.inner.guidance  # attached inside the wrapper
    dual = nodes["DualCFGGuider"](model=model, cond1=(prompt(1),), cond2=(prompt(3),), negative=(prompt(2),),
                                  cfg_conds=5.0, cfg_cond2_negative=2.0, style="regular")
    with pytest.raises(ValueError, match="CFGZeroStar changes classifier-free guidance.*DualCFGDenoiser"):
        _make_denoiser(dual, [prompt(1)], [prompt(2)], [prompt(3)], None)


@pytest.mark.parametrize("cfg", [7.0, 1.0])
def test_perp_neg_guider_and_model_patch(nodes: dict[str, Any], cfg: float) -> None:
    from sgm.sampling.guiders_extra import perp_neg

    model = tiny_model()
    guider = nodes["PerpNegGuider"](model=model, positive=(prompt(1),), negative=(prompt(2),),
                                    empty_conditioning=(prompt(3),), cfg=cfg, neg_scale=0.6)
    pos, neg, empty = (branch(model, [prompt(i)], X, SIGMA_3) for i in (1, 2, 3))
    expected = perp_neg(pos, neg, empty, cfg, 0.6)  # at cfg 1 too: the negative is still evaluated
    torch.testing.assert_close(make(guider)(X, SIGMA_3), expected, rtol=1e-4, atol=1e-4)
    # The deprecated model patch does the same inside any CFG guider.
    patched = nodes["PerpNeg"](model=model, empty_conditioning=(prompt(3),), neg_scale=0.6)
    cfg_guider = nodes["CFGGuider"](model=patched, positive=(prompt(1),), negative=(prompt(2),), cfg=cfg)
    torch.testing.assert_close(make(cfg_guider)(X, SIGMA_3), expected, rtol=1e-4, atol=1e-4)


def test_perp_neg_empty_prompt_gets_the_sdxl_vector_of_the_run(nodes: dict[str, Any]) -> None:
    from nodes.sampling import _make_denoiser, _prepare_conditions

    model = tiny_model("sdxl")
    guider = nodes["PerpNegGuider"](model=model, positive=(prompt(1, True),), negative=(prompt(2, True),),
                                    empty_conditioning=(prompt(3, True),), cfg=5.0, neg_scale=1.0)
    positive = _prepare_conditions(guider.positive, model, 64, 48, "t")
    negative = _prepare_conditions(guider.negative, model, 64, 48, "t")
    denoiser = _make_denoiser(guider, positive, negative, None, None)
    empty_branch = denoiser.guidance._combiner.empty
    expected_y = _prepare_conditions((prompt(3, True),), model, 64, 48, "t")[0].y
    torch.testing.assert_close(empty_branch.positive[0].y, expected_y)
    x = torch.randn(1, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(denoiser(x, SIGMA_3)).all()


def test_guidance_nodes_sample_end_to_end(nodes: dict[str, Any], tmp_path: Any) -> None:
    import threading

    from engine.api import NodeContext
    from engine.settings import Settings
    from nodes.runtime import Runtime
    from nodes.sampling import GuiderValue, run_sampler
    from nodes.values import LatentValue

    runtime = Runtime(Settings.for_root(tmp_path, extra={"dtype": "fp32"}), device="cpu")
    ctx = NodeContext("test", threading.Event(), lambda node_id, progress: None)
    model = tiny_model()
    latent = LatentValue(torch.zeros(1, 4, 8, 8))
    sigmas = compute_sigmas("karras", SD, 3)

    def run_with(guider: Any) -> torch.Tensor:
        return run_sampler(runtime, guider, SamplerValue("euler"), sigmas, latent, 7, True, ctx, "t").samples

    plain = run_with(GuiderValue(model, (prompt(1),), (prompt(2),), 6.0))
    zero_star = run_with(GuiderValue(nodes["CFGZeroStar"](model=model), (prompt(1),), (prompt(2),), 6.0))
    perp = run_with(nodes["PerpNegGuider"](model=model, positive=(prompt(1),), negative=(prompt(2),),
                                           empty_conditioning=(prompt(3),), cfg=6.0, neg_scale=1.0))
    for out in (zero_star, perp):
        assert torch.isfinite(out).all() and not torch.allclose(out, plain, atol=1e-4)
