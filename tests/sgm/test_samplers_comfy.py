"""The samplers of ComfyUI's KSampler list beyond k-diffusion's set (sgm.sampling.samplers_comfy).

Analytic checks as in test_samplers.py: data x0 ~ N(mu, s^2) element-wise has the exact
denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) and the probability-flow ODE
solution x(sigma) = mu + (x(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)). For CFG++
a guided model mixes two such Gaussians (cond and uncond means differ), so every CFG++
step can be computed by hand.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.sample import sample
from sgm.sampling.names import GPU_ALIASES, KSAMPLER_NAMES
from sgm.sampling.samplers import SAMPLERS
from sgm.sampling.samplers_comfy import SA_SOLVER_TAU_INTERVAL
from sgm.sampling.schedules import karras
from sgm.text.conditioning import Condition
from tests.reference import COMFYUI_OBJECT_INFO

MU, S = 0.5, 0.5
SD = DiscreteModelSampling()
REFERENCE = COMFYUI_OBJECT_INFO
NEW_STOCHASTIC = ["euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_sde_heun",
                  "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2",
                  "seeds_3", "sa_solver", "sa_solver_pece"]
CFG_PP_BASE = {"euler_cfg_pp": "euler", "euler_ancestral_cfg_pp": "euler_ancestral",
               "dpmpp_2s_ancestral_cfg_pp": "dpmpp_2s_ancestral", "dpmpp_2m_cfg_pp": "dpmpp_2m",
               "res_multistep_cfg_pp": "res_multistep",
               "res_multistep_ancestral_cfg_pp": "res_multistep_ancestral",
               "gradient_estimation_cfg_pp": "gradient_estimation"}


def gaussian_denoised(x: torch.Tensor, sigma: torch.Tensor, mu: float = MU, s: float = S) -> torch.Tensor:
    sig = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return mu + s**2 / (s**2 + sig**2) * (x - mu)


class GaussianDenoiser:
    """Exact denoiser of N(mu, s^2) data (one branch: no ``denoise_with_uncond``); counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return gaussian_denoised(x, sigma)


class TwoGaussians:
    """A guided model: cond data N(1, 0.5^2), uncond data N(-0.5, 0.8^2), CFG scale w."""

    def __init__(self, w: float = 2.5) -> None:
        self.w = w

    def branches(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_denoised(x, sigma, 1.0, 0.5), gaussian_denoised(x, sigma, -0.5, 0.8)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoise_with_uncond(x, sigma)[0]

    def denoise_with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond = self.branches(x, sigma)
        return uncond + self.w * (cond - uncond), uncond


def _sig(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=torch.float64)


def _x(n: int = 3, sigma: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64) * math.sqrt(S**2 + sigma**2)


# ------------------------------------------------------------------- the name table


def test_every_ksampler_name_is_a_sampler_in_comfyui_order() -> None:
    assert list(SAMPLERS)[: len(KSAMPLER_NAMES)] == list(KSAMPLER_NAMES)
    assert set(SAMPLERS) == set(KSAMPLER_NAMES)
    if REFERENCE.exists():
        info = json.loads(REFERENCE.read_text())
        assert list(KSAMPLER_NAMES) == info["KSampler"]["input"]["required"]["sampler_name"][0]


def test_gpu_aliases_are_their_base_samplers() -> None:
    assert set(GPU_ALIASES) == {n for n in KSAMPLER_NAMES if n.endswith("_gpu")}
    sigmas = karras(SD, 5)
    x = _x(2, float(sigmas[0])).float()
    for alias, base in GPU_ALIASES.items():
        assert SAMPLERS[alias] is SAMPLERS[base]
        runs = [SAMPLERS[name](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(4))
                for name in (alias, base)]
        assert torch.equal(*runs)
    heun = SAMPLERS["dpmpp_2m_sde"](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(4),
                                    solver_type="heun")
    assert torch.equal(SAMPLERS["dpmpp_2m_sde_heun"](GaussianDenoiser(), x, sigmas,
                                                     generator=torch.Generator().manual_seed(4)), heun)


class TinyUNet(nn.Module):
    """A per-pixel stand-in UNet: 1x1 mixing, a context bias and a timestep bias."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.in_channels = 4
        self.weight = nn.Parameter(torch.randn(4, 4, generator=g) * 0.2)
        self.proj = nn.Parameter(torch.randn(8, 4, generator=g) * 0.5)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.einsum("oc,bchw->bohw", self.weight, x) + timesteps.view(-1, 1, 1, 1) * 1e-4
        return out if context is None else out + (context.mean(1) @ self.proj)[:, :, None, None]


def _conds() -> tuple[Condition, Condition]:
    g = torch.Generator().manual_seed(3)
    return Condition(context=torch.randn(1, 5, 8, generator=g)), Condition(context=torch.randn(1, 5, 8, generator=g))


@pytest.mark.parametrize("name", KSAMPLER_NAMES)
def test_every_name_runs_a_few_steps_on_a_tiny_guided_model(name: str) -> None:
    positive, negative = _conds()
    model = GuidedDenoiser(TinyUNet(), SD, [positive], [negative], cfg=3.0)
    latent = torch.zeros(2, 4, 6, 6)
    out = sample(model, name, karras(SD, 4), latent, seed=5)
    assert out.shape == latent.shape and torch.isfinite(out).all()


# ------------------------------------------------------------------ analytic checks


def _ode_error(name: str, n: int, **options: object) -> float:
    sigma_max, sigma_min, rho = 10.0, 0.1, 7.0
    sigmas = torch.tensor([
        (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for i in range(n)
    ], dtype=torch.float64)
    x = MU + torch.linspace(-3, 3, 32, dtype=torch.float64).view(32, 1, 1, 1) * 10
    out = SAMPLERS[name](GaussianDenoiser(), x, sigmas, **options)
    exact = MU + (x - MU) * math.sqrt((S**2 + sigma_min**2) / (S**2 + sigma_max**2))
    return (out - exact).abs().max().item()


@pytest.mark.parametrize(("name", "order", "options"), [
    ("euler_cfg_pp", 1, {}),
    ("euler_ancestral_cfg_pp", 1, {"eta": 0.0}),
    ("gradient_estimation", 1, {}),
    ("dpmpp_2s_ancestral_cfg_pp", 2, {"eta": 0.0}),
    ("dpmpp_2m_cfg_pp", 2, {}),
    ("dpmpp_2m_sde_heun", 2, {"eta": 0.0}),
    ("res_multistep", 2, {}),
    ("res_multistep_ancestral", 2, {"eta": 0.0}),
    ("seeds_2", 2, {"eta": 0.0}),
    # phi(sigma) = sigma makes the extended SDE the ODE; the backward-difference slopes cap
    # ER-SDE-Solver-3 at 2nd order globally.
    ("er_sde", 2, {"noise_scaler": lambda sigma: sigma}),
    ("seeds_3", 3, {"eta": 0.0}),
    ("ipndm_v", 3, {}),  # variable-step Adams-Bashforth 4 (measured ratio ~13)
    ("sa_solver", 4, {"eta": 0.0}),  # predictor 3 + corrector 4
    ("sa_solver_pece", 4, {"eta": 0.0}),
])
def test_order_of_convergence(name: str, order: int, options: dict[str, object]) -> None:
    """Error ratio when doubling N approaches 2^order on the Gaussian's exact ODE solution."""
    errors = [_ode_error(name, n, **options) for n in (16, 32, 64)]
    ratio = errors[1] / errors[2]
    assert errors[2] < 0.05, errors
    assert ratio > 2**order * 0.85, f"{name}: errors {errors}, ratio {ratio:.2f}"
    if order == 1:
        assert ratio < 2.3, f"{name} should be first order, ratio {ratio:.2f}"


def test_exact_equivalences_of_new_solvers() -> None:
    """RES multistep is DPM-Solver++(2M) with the phi_2 ("heun") term at eta = 0; SEEDS-2 at
    eta = 0 is DPM-Solver++(2S); ipndm_v on a uniform grid is iPNDM."""
    sigmas = karras(SD, 9).double()
    x = _x(2, float(sigmas[0]))
    model = GaussianDenoiser()
    torch.testing.assert_close(SAMPLERS["res_multistep"](model, x, sigmas),
                               SAMPLERS["dpmpp_2m_sde"](model, x, sigmas, eta=0.0, solver_type="heun"))
    torch.testing.assert_close(SAMPLERS["seeds_2"](model, x, sigmas, eta=0.0),
                               SAMPLERS["dpmpp_2s_ancestral"](model, x, sigmas, eta=0.0))
    uniform = torch.linspace(10.0, 1.0, 12, dtype=torch.float64)
    torch.testing.assert_close(SAMPLERS["ipndm_v"](model, x, uniform), SAMPLERS["ipndm"](model, x, uniform))
    # ... but on a non-uniform grid its step-aware weights keep the order iPNDM's lose.
    assert _ode_error("ipndm_v", 64) < 0.25 * _ode_error("ipndm", 64)


@pytest.mark.parametrize("name", ["er_sde", "seeds_2", "seeds_3", "sa_solver"])
def test_sde_samplers_converge_to_one_sample_as_steps_grow(name: str) -> None:
    """Their noise is one Brownian path per seed, so the SDE solution is one fixed sample."""
    def run(steps: int) -> torch.Tensor:
        sigmas = karras(SD, steps)
        g = torch.Generator().manual_seed(3)
        x = torch.randn(4, 1, 4, 4, generator=g) * float(sigmas[0])
        # sa_solver: noise over the whole range, so the test sees the SDE everywhere.
        options = {"tau_interval": (0.0, 100.0)} if name == "sa_solver" else {}
        return SAMPLERS[name](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(11), **options)

    reference = run(192)
    gaps = [(run(n) - reference).abs().mean().item() for n in (12, 24, 48)]
    assert gaps[2] < gaps[1] < gaps[0], gaps
    assert gaps[2] < 0.1 * S, gaps


@pytest.mark.parametrize("name", NEW_STOCHASTIC)
def test_stochastic_samplers_are_seeded_per_item(name: str) -> None:
    sigmas = karras(SD, 6)
    x = _x(2, float(sigmas[0])).float()

    def run(batch: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return SAMPLERS[name](GaussianDenoiser(), batch, sigmas, generator=[torch.Generator().manual_seed(s) for s in seeds])

    first = run(x, [7, 8])
    assert torch.equal(first, run(x, [7, 8]))
    assert not torch.equal(first[0], run(x, [9, 8])[0])
    torch.testing.assert_close(first[1:], run(x[1:], [8]), rtol=0, atol=1e-6)


def test_sa_solver_defaults_and_model_calls() -> None:
    # The default stochastic interval: 20 % .. 80 % of SD's timesteps, as ComfyUI's KSampler.
    expected = SD.sigma(torch.tensor([199.8, 799.2])).tolist()
    assert SA_SOLVER_TAU_INTERVAL == pytest.approx(expected, rel=1e-4)
    sigmas = karras(SD, 7)
    x = _x(2, float(sigmas[0])).float()
    plain, pece = GaussianDenoiser(), GaussianDenoiser()
    SAMPLERS["sa_solver"](plain, x, sigmas, generator=torch.Generator().manual_seed(0))
    SAMPLERS["sa_solver_pece"](pece, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert plain.calls == 7 and pece.calls == 7 + 6  # PECE evaluates every corrected state again
    # eta = 0: an ODE solver, independent of the seed.
    a = SAMPLERS["sa_solver"](plain, x, sigmas, eta=0.0, generator=torch.Generator().manual_seed(0))
    b = SAMPLERS["sa_solver"](plain, x, sigmas, eta=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- CFG++


def test_cfg_pp_steps_match_a_hand_computation() -> None:
    model = TwoGaussians(w=2.5)
    x = _x(3, 3.0, seed=2)
    sigma, sigma_1, sigma_2 = 3.0, 1.2, 0.5
    guided, uncond = model.denoise_with_uncond(x, _sig(x, sigma))
    assert not torch.allclose(guided, uncond)
    # DDIM / Euler CFG++: x' = D_w + sigma' (x - D_u) / sigma.
    x_1 = guided + sigma_1 * (x - uncond) / sigma
    one_step = torch.tensor([sigma, sigma_1], dtype=torch.float64)
    torch.testing.assert_close(SAMPLERS["euler_cfg_pp"](model, x, one_step), x_1)
    assert not torch.allclose(SAMPLERS["euler"](model, x, one_step), x_1)
    for name in ("res_multistep_cfg_pp", "gradient_estimation_cfg_pp", "dpmpp_2m_cfg_pp"):
        torch.testing.assert_close(SAMPLERS[name](model, x, one_step), x_1)  # first step is DDIM CFG++

    # Ancestral: x' = D_w + sigma_down eps_u + sigma_up z, z from the generator.
    sigma_up = sigma_1 * math.sqrt(sigma**2 - sigma_1**2) / sigma
    sigma_down = math.sqrt(sigma_1**2 - sigma_up**2)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)).double()
    ancestral = SAMPLERS["euler_ancestral_cfg_pp"](model, x, one_step, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ancestral, guided + sigma_down * (x - uncond) / sigma + sigma_up * z)

    # Second step of DPM-Solver++(2M) CFG++: the 2M update started from x~ = x + D_w - D_u.
    two_steps = torch.tensor([sigma, sigma_1, sigma_2], dtype=torch.float64)
    guided_1, uncond_1 = model.denoise_with_uncond(x_1, _sig(x, sigma_1))
    h, h_last = math.log(sigma_1 / sigma_2), math.log(sigma / sigma_1)
    r = h_last / h
    extrapolated = (1 + 1 / (2 * r)) * guided_1 - (1 / (2 * r)) * guided
    x_2 = (sigma_2 / sigma_1) * (x_1 + guided_1 - uncond_1) + (1 - sigma_2 / sigma_1) * extrapolated
    torch.testing.assert_close(SAMPLERS["dpmpp_2m_cfg_pp"](model, x, two_steps), x_2)

    # Gradient estimation CFG++: eps = (x - D_u) / sigma, eps_bar = 2 eps_1 - eps_0.
    eps_0, eps_1 = (x - uncond) / sigma, (x_1 - uncond_1) / sigma_1
    x_2 = guided_1 + sigma_1 * eps_1 + (2 * eps_1 - eps_0) * (sigma_2 - sigma_1)
    torch.testing.assert_close(SAMPLERS["gradient_estimation_cfg_pp"](model, x, two_steps), x_2)

    # DPM-Solver++(2S) CFG++ (eta = 0): both stages from x~; the midpoint enters guided.
    x_tilde = x + guided - uncond
    h = math.log(sigma / sigma_1)
    sigma_s = math.sqrt(sigma * sigma_1)
    x_mid = (sigma_s / sigma) * x_tilde + (1 - sigma_s / sigma) * guided
    expected = (sigma_1 / sigma) * x_tilde - math.expm1(-h) * model(x_mid, _sig(x, sigma_s))
    torch.testing.assert_close(SAMPLERS["dpmpp_2s_ancestral_cfg_pp"](model, x, one_step, eta=0.0), expected)


@pytest.mark.parametrize("name", sorted(CFG_PP_BASE))
def test_cfg_pp_without_an_uncond_branch_is_the_base_sampler(name: str) -> None:
    sigmas = karras(SD, 8).double()
    x = _x(2, float(sigmas[0]))
    ours = SAMPLERS[name](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(2))
    base = SAMPLERS[CFG_PP_BASE[name]](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, base)


def test_guided_denoiser_reports_its_uncond_branch() -> None:
    positive, negative = _conds()
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1)) * 3
    sigma = torch.full((2,), 3.0)
    unet = TinyUNet()
    model = GuidedDenoiser(unet, SD, [positive], [negative], cfg=4.0)
    guided, uncond = model.denoise_with_uncond(x, sigma)
    assert torch.equal(guided, model(x, sigma))
    torch.testing.assert_close(uncond, GuidedDenoiser(unet, SD, [negative])(x, sigma))
    # cfg == 1: a plain call skips the negative; a CFG++ call still evaluates it.
    plain = GuidedDenoiser(unet, SD, [positive], [negative], cfg=1.0)
    guided_1, uncond_1 = plain.denoise_with_uncond(x, sigma)
    assert torch.equal(guided_1, plain(x, sigma))
    torch.testing.assert_close(uncond_1, uncond)
    # No negative: one branch, reported as both.
    single = GuidedDenoiser(unet, SD, [positive])
    guided_2, uncond_2 = single.denoise_with_uncond(x, sigma)
    assert torch.equal(guided_2, uncond_2) and torch.equal(guided_2, single(x, sigma))


def test_sample_forwards_the_uncond_branch_and_keeps_the_masked_region() -> None:
    positive, negative = _conds()
    model = GuidedDenoiser(TinyUNet(), SD, [positive], [negative], cfg=3.0)
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    sigmas = karras(SD, 5)
    base = sample(model, "euler", sigmas, latent, seed=1)
    starts: list[torch.Tensor] = []
    cfg_pp = sample(model, "euler_cfg_pp", sigmas, latent, seed=1, callback=lambda info: starts.append(info.x))
    assert (cfg_pp - base).abs().max() > 1e-3
    # By hand from the same start: the CFG++ steps with the model's uncond branch.
    x = starts[0]
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        guided, uncond = model.denoise_with_uncond(x, torch.full((1,), s))
        x = guided + (x - uncond) / s * s_next
    torch.testing.assert_close(cfg_pp, x, rtol=1e-4, atol=1e-4)
    mask = torch.zeros(6, 6)
    mask[:3] = 1.0
    inpainted = sample(model, "res_multistep_ancestral_cfg_pp", sigmas, latent, seed=1, noise_mask=mask)
    assert torch.equal(inpainted[..., 3:, :], latent[..., 3:, :])
    assert not torch.equal(inpainted[..., :3, :], latent[..., :3, :])
