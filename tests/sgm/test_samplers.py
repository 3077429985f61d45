"""Every sampler on an analytic denoiser, plus parity with diffusers' schedulers.

Data x0 ~ N(mu, s^2) element-wise. Then x = x0 + sigma n is Gaussian and the exact
(MMSE) denoiser is D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu); the probability-flow
ODE dx/dsigma = (x - D) / sigma has the closed-form solution
x(sigma) = mu + (x(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)).
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch

from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.names import GPU_ALIASES
from sgm.sampling.samplers import SAMPLERS, StepInfo, sample_ddim, sample_dpmpp_2m, sample_euler
from sgm.sampling.schedules import karras

MU, S = 0.5, 0.5
SD = DiscreteModelSampling()
DETERMINISTIC = {"euler", "heun", "heunpp2", "dpm_2", "lms", "dpmpp_2m", "ddim", "dpm_fast",
                 "dpm_adaptive", "ipndm", "deis", "uni_pc", "uni_pc_bh2", "euler_cfg_pp", "dpmpp_2m_cfg_pp",
                 "ipndm_v", "res_multistep", "res_multistep_cfg_pp", "gradient_estimation",
                 "gradient_estimation_cfg_pp"}
# The _gpu names are the same functions as their base names (tests/sgm/test_samplers_comfy.py).
DISTINCT = sorted(set(SAMPLERS) - set(GPU_ALIASES))
# eta = 0 turns these into ODE solvers; used for the order checks.
ETA_OPTION = {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
              "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim"}


class GaussianDenoiser:
    """Exact denoiser of N(mu, s^2) data; counts calls."""

    def __init__(self, mu: float = MU, s: float = S) -> None:
        self.mu, self.s, self.calls = mu, s, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],), "samplers must pass a (B,) sigma"
        self.calls += 1
        sig = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s**2 / (self.s**2 + sig**2) * (x - self.mu)

    def ode_solution(self, x_start: torch.Tensor, sigma_start: float, sigma: float) -> torch.Tensor:
        return self.mu + (x_start - self.mu) * math.sqrt(
            (self.s**2 + sigma**2) / (self.s**2 + sigma_start**2)
        )


def _start(n: int, sigma0: float, seed: int = 0) -> torch.Tensor:
    """Samples of the exact marginal at sigma0: (n, 1, 8, 8)."""
    g = torch.Generator().manual_seed(seed)
    return MU + torch.randn(n, 1, 8, 8, generator=g) * math.sqrt(S**2 + sigma0**2)


def _moments_error(name: str, steps: int) -> tuple[float, float]:
    sigmas = karras(SD, steps)
    x = _start(128, float(sigmas[0]))
    out = SAMPLERS[name](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(1))
    return abs(out.mean().item() - MU), abs(out.std().item() - S) / S


@pytest.mark.parametrize("name", DISTINCT)
def test_sample_moments_converge_to_the_data(name: str) -> None:
    mean_few, std_few = _moments_error(name, 6)
    mean_many, std_many = _moments_error(name, 96)
    assert mean_many < 0.02, f"{name}: mean off by {mean_many}"
    if name == "lcm":
        # LCM re-noises the denoiser's output; with the MMSE denoiser (a posterior *mean*,
        # not a consistency model's sample) the posterior variance is lost by design.
        assert std_many > 0.2
        return
    assert std_many < 0.04, f"{name}: std off by {std_many:.3f} at 96 steps ({std_few:.3f} at 6)"
    assert std_many <= std_few + 0.01, f"{name}: more steps did not help ({std_few} -> {std_many})"


def _ode_error(name: str, n: int, **options: float) -> float:
    sigma_max, sigma_min, rho = 10.0, 0.1, 7.0
    sigmas = torch.tensor([
        (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
        for i in range(n)
    ], dtype=torch.float64)
    model = GaussianDenoiser()
    x = MU + torch.linspace(-3, 3, 32, dtype=torch.float64).view(32, 1, 1, 1) * 10
    out = SAMPLERS[name](model, x, sigmas, **options)
    return (out - model.ode_solution(x, sigma_max, sigma_min)).abs().max().item()


@pytest.mark.parametrize(("name", "order"), [
    ("euler", 1), ("ddim", 1), ("heun", 2), ("dpm_2", 2), ("dpmpp_2m", 2), ("dpmpp_2s_ancestral", 2),
    # dpmpp_3m_sde is 3rd order per step, but its first-order start-up step (local error
    # O(h^2) in lambda, not small at high sigma as it is in sigma) caps the global order at 2.
    ("dpmpp_2m_sde", 2), ("dpmpp_3m_sde", 2), ("lms", 3), ("deis", 3), ("uni_pc", 3),
    ("uni_pc_bh2", 3), ("ipndm", 2),
])
def test_order_of_convergence(name: str, order: int) -> None:
    """Error ratio when doubling N approaches 2^order (after the start-up steps)."""
    options: dict[str, float] = {"eta": 0.0} if name in ETA_OPTION else {}
    if name.startswith("uni_pc"):
        options["lower_order_final"] = False  # keep full order up to the (nonzero) last sigma
    errors = [_ode_error(name, n, **options) for n in (16, 32, 64)]
    ratio = errors[1] / errors[2]
    assert ratio > 2**order * 0.85, f"{name}: errors {errors}, ratio {ratio:.2f}"
    if order == 1:
        assert ratio < 2.3, f"{name} should be first order, ratio {ratio:.2f}"


def test_ddim_eta0_is_euler_and_ddpm_is_euler_ancestral() -> None:
    sigmas = karras(SD, 12)
    x = _start(4, float(sigmas[0]))
    model = GaussianDenoiser()
    torch.testing.assert_close(sample_ddim(model, x, sigmas), sample_euler(model, x, sigmas))
    a = SAMPLERS["ddpm"](model, x, sigmas, generator=torch.Generator().manual_seed(3))
    b = SAMPLERS["euler_ancestral"](model, x, sigmas, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(DISTINCT) - DETERMINISTIC))
def test_stochastic_samplers_are_deterministic_per_seed_and_per_item(name: str) -> None:
    sigmas = karras(SD, 6)
    x = _start(2, float(sigmas[0]))
    model = GaussianDenoiser()

    def run(batch: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return SAMPLERS[name](model, batch, sigmas, generator=gens)

    first, again = run(x, [7, 8]), run(x, [7, 8])
    assert torch.equal(first, again)
    assert not torch.equal(first, run(x, [9, 8]))
    # Item i of a batch equals a single-image run with item i's generator.
    torch.testing.assert_close(first[1:], run(x[1:], [8]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", DISTINCT)
def test_callback_steps_and_input_not_mutated(name: str) -> None:
    sigmas = karras(SD, 5)
    x = _start(2, float(sigmas[0]))
    before = x.clone()
    infos: list[StepInfo] = []
    SAMPLERS[name](GaussianDenoiser(), x, sigmas, callback=infos.append,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before), f"{name} modified its input latent"
    assert infos and all(i.total == 5 for i in infos)
    assert [i.step for i in infos] == sorted(i.step for i in infos)
    assert infos[0].step == 0 and infos[0].sigma == pytest.approx(float(sigmas[0]), rel=1e-5)
    if name not in ("dpm_fast", "dpm_adaptive"):
        assert [i.step for i in infos] == list(range(5))
    assert infos[0].denoised.shape == x.shape
    with pytest.raises(FrozenInstanceError):
        infos[0].step = 3  # type: ignore[misc]


def _analytic_eps(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
    d = GaussianDenoiser()(x_ve, torch.full((x_ve.shape[0],), sigma, dtype=torch.float64))
    return (x_ve - d) / sigma


def _diffusers_loop(scheduler, x: torch.Tensor, vp: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Run a diffusers scheduler with the analytic eps model; x in the scheduler's space."""
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        sigma = float(scheduler.sigmas[i]) if hasattr(scheduler, "sigmas") else None
        if sigma is None:  # DDIM: sigma from alpha_bar at t
            ab = float(scheduler.alphas_cumprod[t])
            sigma = math.sqrt((1 - ab) / ab)
        x_ve = model_in * math.sqrt(1 + sigma**2)  # both VP inputs -> VE
        x = scheduler.step(_analytic_eps(x_ve, sigma), t, x).prev_sample
    return x


def test_parity_with_diffusers_euler_dpmpp_2m_ddim() -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = GaussianDenoiser()

    euler = EulerDiscreteScheduler(**betas)
    euler.set_timesteps(20)
    sigmas = euler.sigmas.double()
    ref = _diffusers_loop(euler, noise * euler.init_noise_sigma, vp=False)
    torch.testing.assert_close(sample_euler(model, noise * sigmas[0], sigmas), ref, rtol=1e-5, atol=1e-5)

    dpm = DPMSolverMultistepScheduler(**betas, algorithm_type="dpmsolver++", solver_order=2)
    dpm.set_timesteps(20)
    sigmas = dpm.sigmas.double()
    ref = _diffusers_loop(dpm, noise.clone(), vp=True)
    ours = sample_dpmpp_2m(model, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)

    ddim = DDIMScheduler(**betas, steps_offset=1, set_alpha_to_one=True, clip_sample=False)
    ddim.set_timesteps(20)
    ab = ddim.alphas_cumprod[ddim.timesteps].double()
    sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])
    ref = _diffusers_loop(ddim, noise.clone(), vp=True)
    ours = sample_ddim(model, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, eta=0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", [2, 3])
def test_parity_with_diffusers_heun_and_unipc(order: int) -> None:
    from diffusers import HeunDiscreteScheduler, UniPCMultistepScheduler

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = GaussianDenoiser()

    heun = HeunDiscreteScheduler(**betas)
    heun.set_timesteps(10)
    ref = _diffusers_loop(heun, noise * heun.init_noise_sigma, vp=False)
    # diffusers repeats every inner sigma (two stages per step); ours takes each once.
    sigmas = torch.cat([heun.sigmas[:1], heun.sigmas[1:-1:2], heun.sigmas[-1:]]).double()
    torch.testing.assert_close(SAMPLERS["heun"](model, noise * sigmas[0], sigmas), ref, rtol=1e-5, atol=1e-5)

    unipc = UniPCMultistepScheduler(**betas, solver_order=order, solver_type="bh2")
    unipc.set_timesteps(20)
    ref = _diffusers_loop(unipc, noise.clone(), vp=True)
    sigmas = unipc.sigmas.double()
    ours = SAMPLERS["uni_pc_bh2"](model, noise * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, order=order)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_parity_with_diffusers_euler_ancestral_same_noise_stream() -> None:
    """Same CPU generator -> same initial and ancestral noise as diffusers, draw for draw."""
    from diffusers import EulerAncestralDiscreteScheduler

    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler.set_timesteps(12)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 4, 4, generator=g) * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        x_ve = scheduler.scale_model_input(x, t) * math.sqrt(1 + sigma**2)
        x = scheduler.step(_analytic_eps(x_ve.double(), sigma).float(), t, x, generator=g).prev_sample
    g = torch.Generator().manual_seed(5)
    start = torch.randn(2, 1, 4, 4, generator=g) * scheduler.sigmas[0]
    ours = SAMPLERS["euler_ancestral"](GaussianDenoiser(), start, scheduler.sigmas, generator=g)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_parity_with_diffusers_ddim_eta1_same_noise_stream() -> None:
    """DDIM with eta = 1 in VE form (sigma_up / sigma_down) equals diffusers' VP update."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              steps_offset=1, set_alpha_to_one=True, clip_sample=False)
    scheduler.set_timesteps(15)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 4, 4, generator=g)
    for t in scheduler.timesteps:
        ab = float(scheduler.alphas_cumprod[t])
        sigma = math.sqrt((1 - ab) / ab)
        eps = _analytic_eps((x * math.sqrt(1 + sigma**2)).double(), sigma).float()
        x = scheduler.step(eps, t, x, eta=1.0, generator=g).prev_sample
    ab = scheduler.alphas_cumprod[scheduler.timesteps].double()
    sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)]).float()
    g = torch.Generator().manual_seed(5)
    start = torch.randn(2, 1, 4, 4, generator=g) * math.sqrt(1 + float(sigmas[0]) ** 2)
    ours = SAMPLERS["ddim"](GaussianDenoiser(), start, sigmas, eta=1.0, generator=g)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_brownian_noise_is_one_path_with_standard_normal_increments() -> None:
    from sgm.sampling.samplers import BrownianNoise

    x = torch.zeros(2, 1, 16, 16)
    noise = BrownianNoise(x, 0.03, 14.6, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    # Increments of adjacent intervals add up (one path), whatever order they are asked in.
    whole = noise(14.6, 0.5) * math.sqrt(14.1)
    parts = noise(3.0, 0.5) * math.sqrt(2.5) + noise(14.6, 3.0) * math.sqrt(11.6)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(noise(0.5, 3.0), -noise(3.0, 0.5))
    # Each normalised increment is N(0, 1), independent across disjoint intervals and items.
    edges = torch.logspace(math.log10(14.6), math.log10(0.03), 40).tolist()
    draws = torch.stack([noise(a, b) for a, b in zip(edges, edges[1:])])  # (39, 2, 1, 16, 16)
    assert abs(draws.mean().item()) < 0.03 and abs(draws.std().item() - 1) < 0.03
    flat = draws.flatten(2)
    assert abs(torch.corrcoef(torch.stack([flat[:, 0].flatten(), flat[:, 1].flatten()]))[0, 1].item()) < 0.05
    consecutive = torch.stack([flat[:-1].flatten(), flat[1:].flatten()])  # neighbouring intervals
    assert abs(torch.corrcoef(consecutive)[0, 1].item()) < 0.05
    # Seeded: same generators, same path; item 1 alone equals item 1 of the batch.
    again = BrownianNoise(x[1:], 0.03, 14.6, [torch.Generator().manual_seed(6)])
    torch.testing.assert_close(again(14.6, 0.5), noise(14.6, 0.5)[1:])


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_samplers_converge_to_one_sample_as_steps_grow(name: str) -> None:
    """With a Brownian path the SDE solution for a seed is fixed: more steps approach it.

    (Fresh noise per step would give an unrelated sample for every step count: the
    difference between 32 and 64 steps would stay at the size of the data's spread.)
    """
    def run(steps: int) -> torch.Tensor:
        sigmas = karras(SD, steps)
        x = _start(16, float(sigmas[0]), seed=3) / math.sqrt(S**2 + float(sigmas[0]) ** 2)  # unit noise
        x = x * float(sigmas[0])
        return SAMPLERS[name](GaussianDenoiser(), x, sigmas, generator=torch.Generator().manual_seed(11))

    reference = run(256)
    gaps = [(run(n) - reference).abs().mean().item() for n in (16, 32, 64)]
    assert gaps[2] < gaps[1] < gaps[0], gaps
    assert gaps[2] < 0.1 * S, gaps
