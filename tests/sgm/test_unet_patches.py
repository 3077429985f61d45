"""Model patches of the UNet (sgm.nets.unet_patches) and of the guided denoiser
(sgm.sampling.guidance_patches), on tiny random-weight UNets.

FreeU is checked on the tensors the first decoder block concatenates, against a hand computation
(the Fourier filter as an explicit sum of the four damped frequency components); Deep Shrink against
a UNet forward written out here; PAG against a copy of the UNet whose middle self-attention is
replaced by its value path; epsilon scaling against its formula.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgm.nets.unet import UNetModel, timestep_embedding
from sgm.io.attention_multiply import attention_scale_targets
from sgm.nets.unet_patches import DeepShrink, FreeU, fourier_filter, timestep_window, unet_patches_applied
from sgm.sampling.denoisers import DiscreteModelSampling
from sgm.sampling.guidance_patches import (EpsilonScaling, GuidanceInputs, PerturbedAttention, apply_guidance_patches,
                                           attention_replaced, middle_self_attentions, value_passthrough)
from sgm.sampling.guiders import GuidedDenoiser
from sgm.text.conditioning import Condition
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet

SD = DiscreteModelSampling()


def freeu_unet() -> UNetModel:
    # three levels: the decoder meets backbones of 4x (128) and 2x (64) the base width, as SD's 1280 / 640
    return tiny_unet("sd1", channel_mult=[1, 2, 4], attention_resolutions=[1, 2])


def inputs(batch: int = 1, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    t = torch.full((batch,), 500.0)
    context = torch.randn(batch, 5, TINY_CONTEXT_DIM, generator=generator)
    return x, t, context


def concat_into(unet: UNetModel, index: int, *args: torch.Tensor) -> torch.Tensor:
    """The tensor output block ``index`` receives (backbone and skip, concatenated)."""
    seen: list[torch.Tensor] = []
    handle = unet.output_blocks[index].register_forward_pre_hook(lambda module, a: seen.append(a[0].clone()))
    try:
        with torch.no_grad():
            unet(*args[:2], context=args[2])
    finally:
        handle.remove()
    return seen[0]


def hand_fourier(x: torch.Tensor, s: float) -> torch.Tensor:
    """x + (s - 1) * Re(the components of frequencies k_y, k_x in {-1, 0}): the DFT written out."""
    x64 = x.double().numpy()
    height, width = x64.shape[-2:]
    y, w = np.arange(height)[:, None], np.arange(width)[None, :]
    low = np.zeros_like(x64, dtype=complex)
    for ky in (-1, 0):
        for kx in (-1, 0):
            wave = np.exp(2j * math.pi * (ky * y / height + kx * w / width))  # (H, W)
            coefficient = (x64 * np.conj(wave)).sum(axis=(-2, -1), keepdims=True)
            low += coefficient * wave / (height * width)
    return torch.from_numpy(x64 + (s - 1) * low.real).float()


@pytest.mark.parametrize("size", [(4, 4), (5, 6)])
def test_fourier_filter_damps_exactly_the_four_lowest_frequencies(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fourier_filter(x, 1, 0.2), hand_fourier(x, 0.2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fourier_filter(x, 1, 1.0), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_changes_the_first_decoder_concat_as_the_paper_says(version: int) -> None:
    unet = freeu_unet()
    args = inputs()
    plain = concat_into(unet, 0, *args)  # (1, 128 + 128, 4, 4): backbone 128 = 4 x base, then the skip
    patch = FreeU(b1=1.7, b2=1.3, s1=0.4, s2=0.6, version=version)
    with unet_patches_applied(unet, SD, [patch]):
        patched = concat_into(unet, 0, *args)
    h, skip = plain[:, :128], plain[:, 128:]
    if version == 1:
        factor: torch.Tensor | float = 1.7
    else:
        mean = h.mean(dim=1, keepdim=True)
        factor = 1 + 0.7 * (mean - mean.min()) / (mean.max() - mean.min())
    expected = torch.cat([h[:, :64] * factor, h[:, 64:], hand_fourier(skip, 0.4)], dim=1)
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=1e-5)


def test_freeu_v2_scaling_of_a_hand_made_feature_map() -> None:
    from sgm.nets.unet_patches import freeu_backbone

    h = torch.zeros(1, 4, 1, 3)
    h[0, :, 0, :] = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 0.0, 4.0], [0.0, 4.0, 0.0]])
    # channel means per pixel: 1, 2, 2 -> normalised 0, 1, 1 -> factors 1, 1.5, 1.5 on channels 0-1
    out = freeu_backbone(h, 1.5, 2)
    expected = h.clone()
    expected[0, :2, 0, 1:] *= 1.5
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(freeu_backbone(h, 1.5, 1)[:, :2], h[:, :2] * 1.5)


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_with_unit_factors_leaves_the_output_unchanged_and_is_off_afterwards(version: int) -> None:
    unet = freeu_unet()
    x, t, context = inputs()
    with torch.no_grad():
        plain = unet(x, t, context)
        with unet_patches_applied(unet, SD, [FreeU(1.0, 1.0, 1.0, 1.0, version)]):
            unit = unet(x, t, context)
        with unet_patches_applied(unet, SD, [FreeU(1.2, 1.4, 0.9, 0.2, version)]):
            changed = unet(x, t, context)
            assert len(unet.block_hooks) == 1
        after = unet(x, t, context)
    assert torch.equal(unit, plain)
    assert (changed - plain).abs().max() > 1e-3
    assert unet.block_hooks == () and torch.equal(after, plain)


def test_two_freeu_patches_stack() -> None:
    unet = freeu_unet()
    args = inputs()
    plain = concat_into(unet, 0, *args)
    with unet_patches_applied(unet, SD, [FreeU(1.5, 1.0, 1.0, 1.0), FreeU(2.0, 1.0, 1.0, 1.0)]):
        twice = concat_into(unet, 0, *args)
    torch.testing.assert_close(twice[:, :64], plain[:, :64] * 3.0)
    torch.testing.assert_close(twice[:, 64:], plain[:, 64:])


def written_out_forward(unet: UNetModel, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, block: int,
                        factor: float, after_skip: bool) -> torch.Tensor:
    """UNetModel.forward with Deep Shrink spelled out: bicubic down after input block ``block``, bicubic
    up of the decoder features wherever they meet a skip of another size."""
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels))
    h, skips = x, []
    for index, module in enumerate(unet.input_blocks):
        h = module(h, emb, context)
        small = F.interpolate(h, size=(round(h.shape[-2] / factor), round(h.shape[-1] / factor)), mode="bicubic",
                              align_corners=False) if index == block else h
        skips.append(h if after_skip else small)
        h = small
    h = unet.middle_block(h, emb, context)
    for module in unet.output_blocks:
        skip = skips.pop()
        if h.shape[-2:] != skip.shape[-2:]:
            h = F.interpolate(h, size=skip.shape[-2:], mode="bicubic", align_corners=False)
        h = module(torch.cat([h, skip], dim=1), emb, context, skips[-1].shape[-2:] if skips else None)
    return unet.out(h)


@pytest.mark.parametrize("after_skip", [True, False])
def test_deep_shrink_inside_its_window_matches_the_written_out_forward(after_skip: bool) -> None:
    unet = tiny_unet("sd1")
    x, _, context = inputs()
    early = SD.timestep(torch.tensor([SD.sigma_max * 0.9]))  # near pure noise: inside 0..0.35
    late = SD.timestep(torch.tensor([0.1]))  # near the end: outside
    patch = DeepShrink(block=1, factor=2.0, start=0.0, end=0.35, after_skip=after_skip)
    with torch.no_grad():
        expected = written_out_forward(unet, x, early, context, 1, 2.0, after_skip)
        plain_early, plain_late = unet(x, early, context), unet(x, late, context)
        with unet_patches_applied(unet, SD, [patch]):
            shrunk, untouched = unet(x, early, context), unet(x, late, context)
    torch.testing.assert_close(shrunk, expected, atol=1e-5, rtol=1e-4)
    assert (shrunk - plain_early).abs().max() > 1e-3
    assert torch.equal(untouched, plain_late)


def test_deep_shrink_window_is_linear_in_timesteps() -> None:
    from sgm.sampling.sigma_ops import percent_to_sigma

    low, high = timestep_window(SD, 0.25, 0.5)
    assert (low, high) == pytest.approx((499.5, 749.25))  # SD's timesteps 0..999: 1 - p of the way up
    for t, p in ((low, 0.5), (high, 0.25)):  # the same instants as the sigma windows of the conditions
        assert float(SD.sigma(torch.tensor([t]))[0]) == pytest.approx(percent_to_sigma(SD, p), rel=1e-5)
    assert timestep_window(SD, 0.0, 1.0) == (-math.inf, math.inf)


def test_deep_shrink_rejects_bislerp_and_missing_blocks() -> None:
    with pytest.raises(ValueError, match="bislerp"):
        DeepShrink(block=1, factor=2.0, downscale_method="bislerp")
    with pytest.raises(ValueError, match="input blocks 0..3"):
        with unet_patches_applied(tiny_unet("sd1"), SD, [DeepShrink(block=9, factor=2.0)]):
            pass


def test_value_passthrough_makes_self_attention_its_value_path() -> None:
    unet = tiny_unet("sd1")
    (attn,) = middle_self_attentions(unet)
    tokens = torch.randn(2, 6, attn.to_q.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        normal = attn(tokens)
        with attention_replaced([attn], value_passthrough):
            identity = attn(tokens)
        after = attn(tokens)
        torch.testing.assert_close(identity, attn.to_out(attn.to_v(tokens)))
    assert not torch.allclose(identity, normal) and torch.equal(after, normal)


def conditions(seed: int) -> list[Condition]:
    return [Condition(context=torch.randn(1, 5, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(seed)))]


def value_path_copy(unet: UNetModel) -> UNetModel:
    """A copy of the UNet whose middle self-attention layers compute to_out(to_v(x)) (PAG's perturbation)."""
    other = copy.deepcopy(unet)
    for block in other.middle_block.modules():
        attn = getattr(block, "attn1", None)
        if attn is not None:
            attn.forward = (lambda a: lambda x, context=None: a.to_out(a.to_v(x)))(attn)
    return other


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_perturbed_attention_guidance_against_a_perturbed_copy(cfg: float) -> None:
    unet = tiny_unet("sd1")
    positive, negative = conditions(1), conditions(2)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)) * 3
    sigma = torch.tensor([3.0])
    guided = GuidedDenoiser(unet, SD, positive, negative, cfg=cfg)
    pag = apply_guidance_patches(guided, [PerturbedAttention(2.5)],
                                 GuidanceInputs(unet, SD, positive, guided_is_cond=cfg == 1.0))
    with torch.no_grad():
        out = pag(x, sigma)
        calls = pag.unet_calls
        cond = GuidedDenoiser(unet, SD, positive)(x, sigma)
        perturbed = GuidedDenoiser(value_path_copy(unet), SD, positive)(x, sigma)
        expected = guided(x, sigma) + 2.5 * (cond - perturbed)
    # cond here is a batch-1 pass; PAG reuses CFG's batch-2 one (the same within float rounding)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert (cond - perturbed).abs().max() > 1e-3
    assert all(a.attention_override is None for a in middle_self_attentions(unet))  # off after the call
    # one UNet call for CFG (cond + uncond batched) and one for the perturbed pass: the positive estimate
    # is the one CFG computed
    assert calls == 2
    # conditions other than the CFG denoiser's positive ones: PAG evaluates its own positive pass
    other = apply_guidance_patches(guided, [PerturbedAttention(2.5)],
                                   GuidanceInputs(unet, SD, conditions(3), guided_is_cond=False))
    with torch.no_grad():
        before = other.unet_calls
        other(x, sigma)
    assert other.unet_calls - before == 3


def test_pag_scale_zero_and_epsilon_scaling() -> None:
    unet = tiny_unet("sd1")
    guided = GuidedDenoiser(unet, SD, conditions(1))
    inputs_ = GuidanceInputs(unet, SD, conditions(1))
    assert apply_guidance_patches(guided, [PerturbedAttention(0.0), EpsilonScaling(1.0)], inputs_) is guided
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 2, torch.tensor([2.0])
    scaled = apply_guidance_patches(guided, [EpsilonScaling(1.25)], inputs_)
    with torch.no_grad():
        denoised = guided(x, sigma)
        torch.testing.assert_close(scaled(x, sigma), x - (x - denoised) / 1.25)
        both, uncond = scaled.denoise_with_uncond(x, sigma)  # CFG++ samplers: uncond passes unchanged
    torch.testing.assert_close(uncond, denoised)
    with pytest.raises(ValueError, match="must be > 0"):
        EpsilonScaling(0.0)


def test_attention_scale_targets_pick_the_layer_s_projections() -> None:
    unet = tiny_unet("sd1")
    targets = attention_scale_targets(unet, "attn1", 1.0, 2.0, 1.0, 0.5)
    keys = {t.key: t.factor for t in targets}
    assert keys and all(".attn1." in k for k in keys)
    assert {k.rsplit(".attn1.", 1)[1] for k in keys} == {"to_k.weight", "to_out.0.weight", "to_out.0.bias"}
    assert {f for k, f in keys.items() if "to_k" in k} == {2.0}
    assert attention_scale_targets(unet, "attn2", 1.0, 1.0, 1.0, 1.0) == ()


def test_gaussian_blur_against_its_written_out_kernel() -> None:
    from sgm.sampling.self_attention_guidance import gaussian_blur

    image = torch.zeros(1, 2, 15, 15)
    image[:, :, 7, 7] = 1.0
    taps = torch.tensor([math.exp(-0.5 * (t / 2.0) ** 2) for t in range(-4, 5)])
    taps = taps / taps.sum()
    blurred = gaussian_blur(image, 9, 2.0)
    torch.testing.assert_close(blurred[0, 1, 3:12, 3:12], taps[:, None] * taps[None, :])
    assert float(blurred[0, 0, :3].abs().max()) == 0.0  # beyond the kernel's reach
    flat = torch.full((1, 1, 6, 5), 0.7)  # reflect padding keeps a constant image constant
    torch.testing.assert_close(gaussian_blur(flat, 9, 1.5), flat)


def test_salient_mask_marks_keys_attended_more_than_once() -> None:
    from sgm.sampling.self_attention_guidance import salient_mask

    attention = torch.zeros(1, 4, 4)  # (B, queries, keys); column sums 2.0, 0.5, 1.0, 0.5
    attention[0, :, 0] = 0.5
    attention[0, :, 1] = 0.125
    attention[0, :, 2] = 0.25
    attention[0, :, 3] = 0.125
    mask = salient_mask(attention, (2, 2), (4, 4))
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., :2, :2] = 1.0  # key 0 is the top-left latent pixel of the 2x2 map
    assert torch.equal(mask, expected)


def test_self_attention_guidance_against_a_hand_composition() -> None:
    from sgm.sampling.self_attention_guidance import (AttentionRecorder, SelfAttentionGuidance, gaussian_blur,
                                                      salient_mask)

    unet = tiny_unet("sd1")
    positive, negative = conditions(1), conditions(2)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6)) * 3
    sigma = torch.tensor([3.0])
    guided = GuidedDenoiser(unet, SD, positive, negative, cfg=4.0)
    sag = apply_guidance_patches(guided, [SelfAttentionGuidance(0.8, 1.5)],
                                 GuidanceInputs(unet, SD, positive, negative=negative))
    (attn,) = middle_self_attentions(unet)
    maps: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # the map, computed apart
        tokens, heads = args[0], module.heads
        q, k = (t.view(1, -1, heads, t.shape[-1] // heads).transpose(1, 2)
                for t in (module.to_q(tokens), module.to_k(tokens)))
        maps.append((q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1))

    with torch.no_grad():
        out = sag(x, sigma)
        reference_denoiser = GuidedDenoiser(unet, SD, negative)
        handle = attn.register_forward_pre_hook(record)
        reference = reference_denoiser(x, sigma)
        handle.remove()
        mask = salient_mask(maps[0], (4, 4), (8, 8))  # the middle block of the 8x8 latent is 4x4
        degraded = mask * gaussian_blur(reference, 9, 1.5) + (1 - mask) * reference
        expected = guided(x, sigma) + 0.8 * (degraded - reference_denoiser(degraded + x - reference, sigma))
        # recording the map does not change the attention itself
        recorder = AttentionRecorder()
        tokens = torch.randn(2, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(8))
        with attention_replaced([attn], recorder):
            recorded = attn(tokens)
        torch.testing.assert_close(recorded, attn(tokens), atol=1e-5, rtol=1e-5)
    assert 0 < float(mask.mean()) < 1  # some pixels are salient, some are not: the blur is partial
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - guided(x, sigma)).abs().max() > 1e-4
    assert attn.attention_override is None


def test_hypertile_attends_within_tiles() -> None:
    import random as random_module

    from sgm.nets.attention import attention
    from sgm.nets.attention_patches import HyperTile, tile_count

    assert tile_count(16, 8, 1, random_module.Random(0)) == 2  # smallest divisor >= 8 is 8: two tiles
    assert {tile_count(24, 5, 2, random_module.Random(s)) for s in range(20)} == {4, 3}  # 6 or 8 wide
    unet = tiny_unet("sd1")
    hooks = HyperTile(tile_size=64, swap_size=1).bind(unet, SD)  # 64 px = 8 latent pixels per tile side
    hooks.after_input_block(torch.zeros(1, 32, 16, 12), 0, torch.zeros(1))
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 16 * 12, 16, generator=generator) for _ in range(3))
    out = hooks.attend(q, k, v, 2)
    expected = torch.empty_like(q)
    grid = torch.arange(16 * 12).reshape(16, 12)
    # 16 rows: the smallest divisor >= 8 is 8, two tiles; 12 columns: it is 12, one tile
    for rows in (slice(0, 8), slice(8, 16)):
        index = grid[rows].reshape(-1)
        expected[:, index] = attention(q[:, index], k[:, index], v[:, index], 2)
    assert not torch.allclose(out, attention(q, k, v, 2), atol=1e-3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    small = torch.randn(2, 8 * 6, 16, generator=generator)  # a lower level: max_depth 0 leaves it whole
    torch.testing.assert_close(hooks.attend(small, small, small, 2), attention(small, small, small, 2))


def test_token_merge_plan_merges_the_most_similar_sources_into_their_best_destination() -> None:
    from sgm.nets.attention_patches import plan_token_merge

    generator = torch.Generator().manual_seed(4)
    metric = torch.randn(1, 4 * 6, 8, generator=generator)  # a 4 x 6 token grid
    plan = plan_token_merge(metric, 4, 6, r=5, generator=None)
    # without a generator the destinations are the top-left token of every 2x2 cell
    assert plan.dst.tolist() == [0, 2, 4, 12, 14, 16]
    assert sorted(plan.src.tolist() + plan.dst.tolist()) == list(range(24))
    # the greedy choice, written out: each source's best destination by cosine similarity, the 5 best sources
    unit = metric[0] / metric[0].norm(dim=-1, keepdim=True)
    best = {int(s): max((float(unit[s] @ unit[d]), int(d)) for d in plan.dst) for s in plan.src}
    chosen = sorted(best, key=lambda s: -best[s][0])[:5]
    src = plan.src.tolist()
    assert sorted(src[int(i)] for i in plan.moved[0]) == sorted(chosen)
    assert [plan.dst.tolist()[int(i)] for i in plan.into[0]] == [best[src[int(i)]][1] for i in plan.moved[0]]
    # merge averages each destination with what joined it; unmerge hands every member that average
    x = torch.randn(1, 24, 3, generator=generator)
    merged = plan.merge(x)
    assert merged.shape == (1, 19, 3)
    back = plan.unmerge(merged)
    groups: dict[int, list[int]] = {}
    for s in chosen:
        groups.setdefault(best[s][1], []).append(s)
    for d in plan.dst.tolist():
        members = [d, *groups.get(d, [])]
        mean = x[0, members].mean(dim=0)
        for token in members:
            torch.testing.assert_close(back[0, token], mean)
    untouched = [s for s in src if s not in chosen]
    assert torch.equal(back[0, untouched], x[0, untouched])


def test_token_merging_attends_with_merged_queries_and_is_off_afterwards() -> None:
    from sgm.nets.attention import attention
    from sgm.nets.attention_patches import TokenMerging, plan_token_merge

    unet = tiny_unet("sd1")
    x, t, context = inputs()
    with torch.no_grad():
        plain = unet(x, t, context)
        with unet_patches_applied(unet, SD, [TokenMerging(0.5)]):
            merged = unet(x, t, context)
        after = unet(x, t, context)
    assert (merged - plain).abs().max() > 1e-4 and torch.equal(after, plain)
    hooks = TokenMerging(0.5).bind(unet, SD)
    hooks.after_input_block(torch.zeros(1, 32, 4, 4), 0, t)
    q, k, v = (torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    plan = plan_token_merge(k, 4, 4, 8, None)  # batch 1 (odd): top-left destinations, as the hook picks
    expected = plan.unmerge(attention(plan.merge(q), k, v, 2))
    torch.testing.assert_close(hooks.attend(q, k, v, 2), expected)
    assert torch.equal(TokenMerging(0.0).bind(unet, SD).attend(q, k, v, 2), attention(q, k, v, 2))


def test_control_residuals_follow_deep_shrink_s_smaller_features() -> None:
    from sgm.nets.unet import ControlResiduals

    unet = tiny_unet("sd1")
    x, _, context = inputs()
    early = SD.timestep(torch.tensor([SD.sigma_max * 0.9]))
    middle = torch.randn(1, 64, 8, 8, generator=torch.Generator().manual_seed(3))  # the unshrunk middle size
    control = ControlResiduals(middle=middle)
    with torch.no_grad():
        with pytest.raises(RuntimeError):  # without a patch a wrong-sized residual is still an error
            unet(x, early, context, control=ControlResiduals(middle=middle[..., :4, :4]))
        with unet_patches_applied(unet, SD, [DeepShrink(block=1, factor=2.0)]):
            shrunk = unet(x, early, context)
            controlled = unet(x, early, context, control=control)
            small = F.interpolate(middle, size=(4, 4), mode="bilinear", align_corners=False)
            expected = unet(x, early, context, control=ControlResiduals(middle=small))
    assert (controlled - shrunk).abs().max() > 1e-3
    assert torch.equal(controlled, expected)


def test_block_patches_reach_a_compiled_copy() -> None:
    from sgm.nets.compile import CompileOptions, compile_model

    unet = freeu_unet()
    compiled = compile_model(unet, CompileOptions(backend="eager"))
    x, t, context = inputs()
    patch = FreeU(1.4, 1.2, 0.5, 0.5)
    with torch.no_grad():
        with unet_patches_applied(unet, SD, [patch]):
            expected = unet(x, t, context)
        with unet_patches_applied(compiled, SD, [patch]):
            out = compiled(x, t, context)
        plain = compiled(x, t, context)
    torch._dynamo.reset()  # compiled code is cached per code object: keep other tests apart
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-3 and unet.block_hooks == ()
