"""UNetModel: original key names, shapes, conditioning, gradient checkpointing, errors."""

from __future__ import annotations

import pytest
import torch

from sgm.nets.unet import UNetModel, timestep_embedding
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet, tiny_unet_config


def test_sd15_key_names_match_the_released_checkpoint_layout() -> None:
    with torch.device("meta"):
        unet = UNetModel(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2,
                         attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768)
    state = unet.state_dict()
    # Counts and spot checks from the SD 1.5 single-file checkpoint (model.diffusion_model.*).
    assert len(state) == 686
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    for key, shape in {
        "time_embed.0.weight": (1280, 320),
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.11.0.emb_layers.1.weight": (1280, 1280),
        "middle_block.1.transformer_blocks.0.norm3.weight": (1280,),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.bias": (320,),
        "out.2.weight": (4, 320, 3, 3),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert "output_blocks.11.2.conv.weight" not in state  # no upsampler after the last level


def test_sdxl_layout_has_label_emb_and_per_level_depth() -> None:
    with torch.device("meta"):
        unet = UNetModel(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2,
                         attention_resolutions=[4, 2], channel_mult=[1, 2, 4], num_head_channels=64,
                         transformer_depth=[0, 2, 10], context_dim=2048, use_linear_in_transformer=True,
                         num_classes="sequential", adm_in_channels=2816)
    state = unet.state_dict()
    assert tuple(state["label_emb.0.0.weight"].shape) == (1280, 2816)
    assert tuple(state["label_emb.0.2.weight"].shape) == (1280, 1280)
    assert "input_blocks.1.1.norm.weight" not in state  # level 0: no transformer
    assert "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" in state
    assert "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight" in state
    assert "middle_block.1.transformer_blocks.9.norm1.bias" in state
    assert "middle_block.1.transformer_blocks.10.norm1.bias" not in state
    assert tuple(state["input_blocks.4.1.proj_in.weight"].shape) == (640, 640)  # linear projection
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # the released SDXL base UNet


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_forward_shapes_and_dependence_on_every_input(family: str) -> None:
    unet = tiny_unet(family)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([10.0, 900.0])
    context = torch.randn(2, 5, TINY_CONTEXT_DIM, generator=generator)
    y = torch.randn(2, unet.adm_in_channels, generator=generator) if family == "sdxl" else None
    x_before = x.clone()
    with torch.no_grad():
        out = unet(x, t, context, y)
        assert out.shape == (2, 4, 16, 16)
        assert torch.equal(x, x_before)  # inputs are never modified
        assert not torch.allclose(unet(x, t.flip(0), context, y), out, atol=1e-4)
        assert not torch.allclose(unet(x, t, context.roll(1, dims=-1), y), out, atol=1e-4)
        # Attention has no positional encoding: the order of context tokens does not matter.
        torch.testing.assert_close(unet(x, t, context.flip(1), y), out, rtol=1e-4, atol=1e-5)
        if y is not None:
            assert not torch.allclose(unet(x, t, context, y * 2), out, atol=1e-4)
        # Batch items are independent: sample 0 alone gives the same prediction.
        torch.testing.assert_close(unet(x[:1], t[:1], context[:1], None if y is None else y[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_odd_latent_size_and_inpaint_channels() -> None:
    unet = tiny_unet("sdxl", in_channels=9)
    x = torch.randn(1, 9, 13, 11, generator=torch.Generator().manual_seed(1))  # 13 -> 7 -> 4: skips must meet
    with torch.no_grad():
        out = unet(x, torch.tensor([5.0]), torch.randn(1, 3, TINY_CONTEXT_DIM), torch.zeros(1, unet.adm_in_channels))
    assert out.shape == (1, 4, 13, 11)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 3, TINY_CONTEXT_DIM, generator=generator)
    grads = []
    for use_checkpoint in (False, True):
        unet = tiny_unet("sd1", seed=3, use_checkpoint=use_checkpoint).train()
        unet(x, torch.tensor([50.0]), context).square().mean().backward()
        grads.append(unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.weight.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_timestep_embedding_is_cos_then_sin() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(freqs), torch.sin(freqs)]))


def test_configuration_errors_explain_the_fix() -> None:
    config = tiny_unet_config("sd1")
    with pytest.raises(ValueError, match="exactly one of num_heads"):
        UNetModel(**{**config, "num_head_channels": 64})
    with pytest.raises(ValueError, match="one depth per level"):
        UNetModel(**{**config, "transformer_depth": [1, 1, 1]})
    unet = tiny_unet("sd1")
    with pytest.raises(ValueError, match="takes no vector conditioning"):
        unet(torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 2, TINY_CONTEXT_DIM), torch.zeros(1, 3))
