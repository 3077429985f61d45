"""GLIGEN: parity with diffusers' gated UNet (position net + fusers) on random weights, the
released file layout, box placement and the restore of the UNet blocks."""

from __future__ import annotations

import pytest
import torch

from sgm.io.convert import unet_diffusers_to_original
from sgm.nets.attention import BasicTransformerBlock
from sgm.nets.gligen import MAX_OBJECTS, GroundingBox, fourier_box_embedding, gligen_applied, load_gligen
from sgm.nets.unet import UNetModel
from tests.sgm.model_factories import TINY_CONTEXT_DIM, randomize_, tiny_diffusers_unet_kwargs, tiny_unet_config

pytest.importorskip("diffusers")


def gated_pair(seed: int = 0):
    """diffusers' gated UNet and ours plus the GLIGEN model, from the same random weights (the
    GLIGEN tensors written in the released layout: ``position_net.*`` and ldm ``*.fuser.*``)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**tiny_diffusers_unet_kwargs("sd1"), attention_type="gated")
    randomize_(reference, seed)
    with torch.no_grad():  # the released gates are far from 0; random ones must matter too
        for name, param in reference.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.fill_(0.7)
    reference.eval()
    state = reference.state_dict()
    original = unet_diffusers_to_original({k: v for k, v in state.items() if not k.startswith("position_net.")})
    gligen_file = {k: v for k, v in original.items() if ".fuser." in k}
    gligen_file.update({k: v for k, v in state.items() if k.startswith("position_net.")})
    unet = UNetModel(**tiny_unet_config("sd1")).eval()
    unet.load_state_dict({k: v for k, v in original.items() if ".fuser." not in k})
    return reference, unet, load_gligen(gligen_file), gligen_file


def test_fourier_embedding_is_sin_then_cos_per_frequency() -> None:
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.9]]])
    emb = fourier_box_embedding(boxes, freqs=2)  # (1, 1, 16)
    f1 = 100.0 ** 0.5
    expected = torch.cat([torch.sin(boxes[0, 0]), torch.cos(boxes[0, 0]), torch.sin(f1 * boxes[0, 0]),
                          torch.cos(f1 * boxes[0, 0])])
    assert torch.allclose(emb[0, 0], expected, atol=1e-6)


def test_gligen_unet_matches_diffusers_gated_unet() -> None:
    reference, unet, gligen, gligen_file = gated_pair()
    assert len(gligen.block_names) == sum(isinstance(m, BasicTransformerBlock) for m in unet.modules())
    assert gligen.block_names[0] == "input_blocks.1.1.transformer_blocks.0"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([10.0, 600.0])
    context = torch.randn(2, 7, TINY_CONTEXT_DIM, generator=g)
    boxes = torch.zeros(2, MAX_OBJECTS, 4)
    boxes[:, 0] = torch.tensor([0.1, 0.1, 0.6, 0.5])
    boxes[:, 1] = torch.tensor([0.5, 0.4, 0.9, 1.0])
    masks = torch.zeros(2, MAX_OBJECTS)
    masks[:, :2] = 1
    phrases = torch.randn(2, MAX_OBJECTS, TINY_CONTEXT_DIM, generator=g) * masks[..., None]
    with torch.no_grad():
        expected = reference(x, t, context, cross_attention_kwargs={
            "gligen": {"boxes": boxes, "positive_embeddings": phrases, "masks": masks}}).sample
        plain = reference(x, t, context).sample
        objs = gligen.position_net(boxes, masks, phrases)
        with gligen_applied(unet, gligen, objs, torch.ones(2)):
            actual = unet(x, t, context)
        after = unet(x, t, context)
        with gligen_applied(unet, gligen, objs, torch.tensor([1.0, 0.0])):  # row 1 not grounded
            mixed = unet(x, t, context)
    error = float((actual - expected).norm() / expected.norm())
    assert error <= 1e-4, error
    assert float((plain - expected).norm() / expected.norm()) > 1e-2  # grounding changes the output
    assert torch.allclose(after, plain, atol=1e-5)  # the blocks are restored
    assert all(m.between_attentions is None for m in unet.modules() if isinstance(m, BasicTransformerBlock))
    assert torch.allclose(mixed[0], actual[0], atol=1e-5) and torch.allclose(mixed[1], plain[1], atol=1e-5)


def test_boxes_in_latent_pixels_become_normalised_corners() -> None:
    _, _, gligen, _ = gated_pair()
    phrase = torch.randn(1, TINY_CONTEXT_DIM)
    objs = gligen.objects([GroundingBox(phrase, width=8, height=4, x=2, y=6)], latent_height=16, latent_width=32,
                          batch=3)
    boxes = torch.zeros(1, MAX_OBJECTS, 4)
    boxes[0, 0] = torch.tensor([2 / 32, 6 / 16, 10 / 32, 10 / 16])
    masks = torch.zeros(1, MAX_OBJECTS)
    masks[0, 0] = 1
    phrases = torch.zeros(1, MAX_OBJECTS, TINY_CONTEXT_DIM)
    phrases[0, 0] = phrase[0]
    assert objs.shape == (3, MAX_OBJECTS, TINY_CONTEXT_DIM)
    assert torch.allclose(objs[2], gligen.position_net(boxes, masks, phrases)[0])
    with pytest.raises(ValueError, match="at most 30"):
        gligen.objects([GroundingBox(phrase, 1, 1, 0, 0)] * 31, 16, 16, 1)
    with pytest.raises(ValueError, match="width 5"):
        gligen.objects([GroundingBox(torch.zeros(1, 5), 1, 1, 0, 0)], 16, 16, 1)


def test_layout_errors_are_named() -> None:
    _, unet, _, gligen_file = gated_pair()
    with pytest.raises(KeyError, match="not a GLIGEN file"):
        load_gligen({"foo": torch.zeros(1)})
    with pytest.raises(KeyError, match="no '\\*.fuser"):
        load_gligen({k: v for k, v in gligen_file.items() if k.startswith("position_net.")})
    renamed = {k.replace("input_blocks.1.1", "input_blocks.7.1"): v for k, v in gligen_file.items()}
    with pytest.raises(ValueError, match="input_blocks.7.1"):
        with gligen_applied(unet, load_gligen(renamed), torch.zeros(1, MAX_OBJECTS, TINY_CONTEXT_DIM), torch.ones(1)):
            pass
    assert all(m.between_attentions is None for m in unet.modules() if isinstance(m, BasicTransformerBlock))


def test_guider_grounds_the_positive_rows_only_in_one_batched_call() -> None:
    from sgm.sampling.denoisers import DiscreteModelSampling
    from sgm.sampling.guiders import GuidedDenoiser
    from sgm.text.conditioning import Condition

    _, unet, gligen, _ = gated_pair()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 16, 16, generator=g)
    sigma = torch.tensor([2.0])
    pos_context, neg_context = (torch.randn(1, 7, TINY_CONTEXT_DIM, generator=g) for _ in range(2))
    box = GroundingBox(torch.randn(1, TINY_CONTEXT_DIM, generator=g), width=6, height=8, x=4, y=2)
    positive = Condition(pos_context, gligen=(gligen, (box,)))
    ms = DiscreteModelSampling()
    guided = GuidedDenoiser(unet, ms, [positive], [Condition(neg_context)], cfg=3.0)
    with torch.no_grad():
        out = guided(x, sigma)
        # by hand: the positive row through the fusers, the negative row without
        scal, t = ms.scalings(sigma, x.ndim), ms.timestep(sigma)
        objs = gligen.objects([box], 16, 16, 1)
        with gligen_applied(unet, gligen, objs, torch.ones(1)):
            cond = unet(x * scal.c_in, t, pos_context)
        uncond = unet(x * scal.c_in, t, neg_context)
        plain = GuidedDenoiser(unet, ms, [Condition(pos_context)], [Condition(neg_context)], cfg=3.0)(x, sigma)
    to_x0 = lambda out_: scal.c_skip * x + scal.c_out * out_  # noqa: E731
    expected = to_x0(uncond) + 3.0 * (to_x0(cond) - to_x0(uncond))
    assert guided.unet_calls == 1  # cond and uncond still share one call
    error = float((out - expected).abs().max())
    assert error < 1e-4, error  # batched vs separate calls: float rounding only
    assert (out - plain).abs().max() > 1e-2
    assert all(m.between_attentions is None for m in unet.modules() if isinstance(m, BasicTransformerBlock))
