"""CFG variants (sgm.sampling.guiders_extra) against hand computations on small tensors, and their hook
in GuidedDenoiser."""

from __future__ import annotations

import math

import pytest
import torch

from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guiders import GuidedDenoiser
from sgm.sampling.guiders_extra import (APG, TCFG, CFGNorm, CFGZeroStar, GuidanceRun, PerpNegCombine, attach,
                                         perp_neg)
from tests.sgm.test_guiders import PointwiseUNet, _cond

SD = DiscreteModelSampling()
SIGMA = torch.tensor([2.0])


def vec(*values: float) -> torch.Tensor:
    """A batch of one with the values along channels: (1, C, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def flat(t: torch.Tensor) -> list[float]:
    return t.flatten().tolist()


def cfg_with(run: GuidanceRun, x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, s: float) -> torch.Tensor:
    """What GuidedDenoiser does with two branches: pre patches, CFG, post patches."""
    c, u = run.pre(x, SIGMA, cond, uncond, s)
    return run.post(x, SIGMA, c, u, s, u + s * (c - u))


def test_perp_neg_by_hand() -> None:
    empty = vec(0.5, -1.0)
    positive, negative = empty + vec(1.0, 0.0), empty + vec(1.0, 1.0)
    # n = (1, 1), p = (1, 0): n's part perpendicular to p is (0, 1).
    for cfg, neg_scale in ((1.0, 1.0), (7.0, 0.5)):
        assert flat(perp_neg(positive, negative, empty, cfg, neg_scale)) == pytest.approx(
            [0.5 + cfg, -1.0 - cfg * neg_scale])
    # A negative along the positive is no push at all: plain guidance from the empty prompt.
    along = empty + vec(-2.0, 0.0)
    assert flat(perp_neg(positive, along, empty, 5.0, 1.0)) == pytest.approx([5.5, -1.0])


def test_perp_neg_projects_each_batch_item_alone() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg, empty = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    both = perp_neg(pos, neg, empty, 6.0, 1.0)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], perp_neg(pos[i:i + 1], neg[i:i + 1], empty[i:i + 1], 6.0, 1.0))


def test_apg_by_hand() -> None:
    x = torch.zeros(1, 2, 1, 1)
    cond, uncond = vec(2.0, 0.0), vec(0.0, -1.0)
    # g = (2, 1): parallel to D_c (2, 0), orthogonal (0, 1); eta 0.5 -> g' = (1, 1); result D_c + s g'.
    out = cfg_with(GuidanceRun([APG(eta=0.5, norm_threshold=0.0)]), x, cond, uncond, 3.0)
    assert flat(out) == pytest.approx([5.0, 3.0])
    # Threshold: |g| = sqrt(5) rescaled to 1, then projected: g' = (2, 1) / sqrt(5) with eta 1.
    out = cfg_with(GuidanceRun([APG(eta=1.0, norm_threshold=1.0)]), x, cond, uncond, 3.0)
    r5 = math.sqrt(5)
    assert flat(out) == pytest.approx([2 + 3 * 2 / r5, 3 / r5])
    # eta 1, no threshold, no momentum: CFG at scale s + 1 (ComfyUI's convention).
    out = cfg_with(GuidanceRun([APG(eta=1.0, norm_threshold=0.0)]), x, cond, uncond, 3.0)
    assert flat(out) == pytest.approx(flat(uncond + 4.0 * (cond - uncond)))


def test_apg_momentum_runs_within_a_run_and_resets() -> None:
    x = torch.zeros(1, 2, 1, 1)
    apg = APG(eta=1.0, norm_threshold=0.0, momentum=0.5)
    run = GuidanceRun([apg])
    c1, u1, c2, u2 = vec(1.0, 0.0), vec(0.0, 0.0), vec(1.0, 1.0), vec(1.0, 0.0)
    first = run.pre(x, torch.tensor([5.0]), c1, u1, 2.0)
    assert flat(u1 + 2.0 * (first[0] - u1)) == pytest.approx(flat(c1 + 2.0 * (c1 - u1)))
    c, u = run.pre(x, torch.tensor([3.0]), c2, u2, 2.0)  # g = 0.5 (1, 0) + (0, 1) = (0.5, 1)
    assert flat(u + 2.0 * (c - u)) == pytest.approx(flat(c2 + 2.0 * vec(0.5, 1.0)))
    c, u = run.pre(x, torch.tensor([9.0]), c2, u2, 2.0)  # sigma rose: a new run, the average restarts
    assert flat(u + 2.0 * (c - u)) == pytest.approx(flat(c2 + 2.0 * (c2 - u2)))
    # A fresh GuidanceRun starts without the other's average.
    fresh = GuidanceRun([apg])
    c, u = fresh.pre(x, torch.tensor([3.0]), c2, u2, 2.0)
    assert flat(u + 2.0 * (c - u)) == pytest.approx(flat(c2 + 2.0 * (c2 - u2)))


def test_tcfg_by_hand() -> None:
    x = torch.zeros(1, 2, 1, 1)
    tcfg = TCFG()
    # e = x - D. e_u = 3 e1, e_c = 2 e2: the top singular direction is e1, e_u is kept whole.
    c, u = tcfg.pre_cfg(x, SIGMA, vec(0.0, -2.0), vec(-3.0, 0.0), 5.0, {})
    assert flat(u) == pytest.approx([-3.0, 0.0]) and flat(c) == [0.0, -2.0]
    # e_c = 4 e2 dominates: e_u has no component along e2 and is dropped (D_u' = x).
    _, u = tcfg.pre_cfg(x, SIGMA, vec(0.0, -4.0), vec(-3.0, 0.0), 5.0, {})
    assert flat(u) == pytest.approx([0.0, 0.0], abs=1e-6)
    # General: v1 = the top eigenvector of the 2 x 2 Gram matrix of [e_u; e_c], mapped back.
    x = vec(0.3, 0.1, -0.2)
    e_u, e_c = [1.0, 2.0, 0.5], [2.0, -1.0, 1.0]
    cond = x - torch.tensor(e_c).view(1, 3, 1, 1)
    uncond = x - torch.tensor(e_u).view(1, 3, 1, 1)
    dot = lambda a, b: sum(p * q for p, q in zip(a, b))  # noqa: E731
    a, b, d = dot(e_u, e_u), dot(e_u, e_c), dot(e_c, e_c)
    lam = (a + d) / 2 + math.sqrt(((a - d) / 2) ** 2 + b * b)
    w = (b, lam - a)  # (G - lam I) w = 0
    v = [w[0] * p + w[1] * q for p, q in zip(e_u, e_c)]
    v = [t / math.sqrt(dot(v, v)) for t in v]
    expected = [xi - dot(e_u, v) * vi for xi, vi in zip(flat(x), v)]
    _, u = tcfg.pre_cfg(x, SIGMA, cond, uncond, 5.0, {})
    assert flat(u) == pytest.approx(expected, rel=1e-5)


def test_cfg_zero_star_by_hand() -> None:
    x, cond, uncond = vec(1.0, 2.0), vec(0.5, 1.0), vec(2.0, 0.0)
    # e_c = (0.5, 1), e_u = (-1, 2): alpha = (-0.5 + 2) / 5 = 0.3.
    alpha, s = 0.3, 4.0
    expected = [alpha * u + s * (c - alpha * u) for c, u in zip(flat(cond), flat(uncond))]
    out = cfg_with(GuidanceRun([CFGZeroStar()]), x, cond, uncond, s)
    assert flat(out) == pytest.approx(expected, rel=1e-5)
    assert flat(cfg_with(GuidanceRun([CFGZeroStar()]), x, cond, uncond, 1.0)) == pytest.approx(flat(cond))


def test_cfg_norm_by_hand() -> None:
    cond = torch.tensor([[3.0, 1.0], [4.0, 0.0]]).view(1, 2, 1, 2)  # pixel norms 5 and 1
    guided = torch.tensor([[6.0, 0.0], [8.0, 0.5]]).view(1, 2, 1, 2)  # pixel norms 10 and 0.5
    out = CFGNorm(strength=0.8).post_cfg(cond, SIGMA, cond, cond, 5.0, guided)
    # pixel 1 is scaled to the cond's norm (x 0.5); pixel 2 is below it and kept; all x 0.8.
    assert flat(out) == pytest.approx([3.0 * 0.8, 0.0, 4.0 * 0.8, 0.5 * 0.8])


def test_guided_denoiser_applies_the_patches_around_cfg() -> None:
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * 3
    sigma = torch.full((2,), 3.0)
    unet = PointwiseUNet()
    pos, neg = [_cond(1)], [_cond(2)]
    cond = GuidedDenoiser(unet, SD, pos)(x, sigma)
    uncond = GuidedDenoiser(unet, SD, neg)(x, sigma)
    patched = GuidedDenoiser(unet, SD, pos, neg, cfg=6.0, guidance=GuidanceRun([TCFG(), CFGZeroStar()]))
    expected = cfg_with(GuidanceRun([TCFG(), CFGZeroStar()]), x, cond, uncond, 6.0)
    torch.testing.assert_close(patched(x, sigma), expected, rtol=1e-4, atol=1e-4)
    # No patch: plain CFG, as before.
    plain = GuidedDenoiser(unet, SD, pos, neg, cfg=6.0)(x, sigma)
    torch.testing.assert_close(plain, uncond + 6.0 * (cond - uncond), rtol=1e-4, atol=1e-4)
    # cfg 1 (one branch): only post patches apply.
    scaled = GuidedDenoiser(unet, SD, pos, neg, cfg=1.0, guidance=GuidanceRun([CFGNorm(0.5)]))(x, sigma)
    torch.testing.assert_close(scaled, cond * 0.5, rtol=1e-5, atol=1e-5)


def test_perp_neg_replaces_cfg_even_at_scale_one() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2)) * 3
    sigma = torch.full((1,), 3.0)
    unet = PointwiseUNet()
    pos, neg, empty = (GuidedDenoiser(unet, SD, [_cond(i)])(x, sigma) for i in (1, 2, 3))
    for cfg in (5.0, 1.0):
        denoiser = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=cfg)
        attach(denoiser, PerpNegCombine(GuidedDenoiser(unet, SD, [_cond(3)]), 0.7))
        unet.calls.clear()
        torch.testing.assert_close(denoiser(x, sigma), perp_neg(pos, neg, empty, cfg, 0.7))
        assert unet.calls == [(2, 4, 4, 4), (1, 4, 4, 4)]  # positive + negative batched, then the empty prompt


def test_attach_reaches_through_wrappers_and_keeps_the_order() -> None:
    from sgm.sampling.guidance_extra import DualCFGDenoiser
    from sgm.sampling.guidance_patches import EpsilonScalingDenoiser

    unet = PointwiseUNet()
    core = GuidedDenoiser(unet, SD, [_cond(1)], [_cond(2)], cfg=3.0)
    wrapped = EpsilonScalingDenoiser(core, 1.1)
    assert attach(wrapped, TCFG()) is wrapped
    attach(wrapped, CFGNorm(0.5))
    assert core.guidance is not None and core.guidance.patches == (TCFG(), CFGNorm(0.5))
    dual = DualCFGDenoiser(unet, SD, [_cond(1)], [_cond(2)], [_cond(3)], 2.0, 3.0)
    with pytest.raises(ValueError, match="APG changes classifier-free guidance"):
        APG().wrap(dual, None)
