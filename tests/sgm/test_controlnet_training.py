"""ControlNet training (sgm.training.controlnet): the copy starts as the base model, a few steps
lower the loss with the base frozen, the saved file reloads through the ControlNet loader, and
the captions / eval cases say what they claim."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from sgm.data import shapes
from sgm.io.controlnet_files import controlnet_from_unet, load_control_file
from sgm.nets.autoencoder import AutoencoderKL
from sgm.nets.unet import UNetModel
from sgm.text.tiny_text import TinyTextConfig, TinyTextEncoder, WordTokenizer, vocabulary_of
from sgm.training.common import TrainSettings
from sgm.training.controlnet import (CaptionMix, ControlNetTask, ControlShapesDataset, caption_without_position,
                                     edge_hint, position_cases, sampling_hint, save_controlnet)
from sgm.training.diffusion import DiffusionConfig
from sgm.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

HINTS = {"num_head_channels": 32}
POSITION_WORDS = {"top", "bottom", "left", "right", "center"}


def _tiny_parts() -> tuple[UNetModel, AutoencoderKL, TinyTextEncoder, WordTokenizer]:
    torch.manual_seed(0)
    vae = AutoencoderKL(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16).eval()
    vocab = vocabulary_of([spec.caption() for spec in shapes.all_combos()])
    text = TinyTextEncoder(TinyTextConfig(vocab, max_length=16, width=32, layers=1, heads=1)).eval()
    unet = UNetModel(4, 32, 4, 1, (1,), (1,), num_head_channels=32, context_dim=32).eval()
    return unet, vae, text, WordTokenizer(vocab, 16)


def _task(unet, vae, text, tokenizer) -> tuple[ControlNetTask, torch.nn.Module]:
    torch.manual_seed(1)
    controlnet = controlnet_from_unet(unet, HINTS)
    config = DiffusionConfig(prediction="v", caption_dropout=0.0, noise_offset=0.0, scale_factor=0.5,
                             zero_terminal_snr=True, min_snr_floor=0.5)
    return ControlNetTask(unet, vae, lambda c: text(tokenizer.encode(c)), controlnet, config, latent_size=8), controlnet


class _Cycle(torch.utils.data.Dataset):
    """A few fixed items, repeated (so a short run can fit them)."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> dict:
        return self.items[index % len(self.items)]


def test_the_copy_starts_as_the_base_model_and_its_output_convs_at_zero() -> None:
    unet, *_ = _tiny_parts()
    controlnet = controlnet_from_unet(unet, HINTS)
    base = unet.state_dict()
    for key, value in controlnet.state_dict().items():
        if key.startswith(("zero_convs.", "middle_block_out.", "input_hint_block.14.")):
            assert not value.any(), key  # zero convolutions (and the hint encoder's last conv)
        elif not key.startswith("input_hint_block."):
            assert torch.equal(value, base[key]), key  # the trainable copy of the encoder
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([3, 900])
    context = torch.randn(2, 16, 32, generator=generator)
    hint = (torch.rand(2, 3, 16, 16, generator=generator) > 0.8).float()
    with torch.no_grad():
        control = controlnet(x, sampling_hint(hint, x), t, context)
        assert len(control.skips) == len(unet.input_blocks)
        assert torch.equal(unet(x, t, context=context, control=control), unet(x, t, context=context))


def test_a_few_steps_lower_the_loss_and_leave_the_base_frozen(tmp_path) -> None:
    unet, vae, text, tokenizer = _tiny_parts()
    task, controlnet = _task(unet, vae, text, tokenizer)
    data = ControlShapesDataset(16, seed=0)
    items = [data[i] for i in range(8)]
    batch = {"image": torch.stack([i["image"] for i in items]), "hint": torch.stack([i["hint"] for i in items]),
             "caption": [i["caption"] for i in items]}
    frozen = {k: v.clone() for k, v in [*unet.state_dict().items(), *vae.state_dict().items(),
                                        *text.state_dict().items()]}

    def fixed_loss() -> float:
        with torch.no_grad():
            return sum(float(task.loss(batch, torch.Generator().manual_seed(s))[0]) for s in range(4)) / 4

    before = fixed_loss()
    train(task, _Cycle(items), TrainSettings(steps=30, batch_size=8, lr=2e-3, warmup_steps=2, ema_decay=0,
                                             checkpoint_every=0, log_every=0), tmp_path)
    after = fixed_loss()
    assert after < 0.85 * before, (before, after)
    now = {**unet.state_dict(), **vae.state_dict(), **text.state_dict()}
    assert all(torch.equal(frozen[k], now[k]) for k in frozen)
    assert controlnet.middle_block_out[0].weight.abs().sum() > 0  # the zero convs did move


def test_the_saved_file_is_ldm_layout_and_reloads_to_the_same_residuals(tmp_path) -> None:
    unet, *_ = _tiny_parts()
    torch.manual_seed(2)
    controlnet = controlnet_from_unet(unet, HINTS)
    with torch.no_grad():  # make every output act (trained-like)
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    generator = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 600])
    context = torch.randn(2, 16, 32, generator=generator)
    hint = sampling_hint((torch.rand(2, 3, 16, 16, generator=generator) > 0.7).float(), x)
    with torch.no_grad():
        expected = unet(x, t, context=context, control=controlnet(x, hint, t, context))
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.float16, 2e-2)):
        path = save_controlnet(tmp_path / f"cn-{dtype}.safetensors", controlnet, unet_hints=HINTS, dtype=dtype)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            keys = set(handle.keys())
            assert json.loads(handle.metadata()["latentflow.config"])["unet"] == HINTS
            assert handle.get_tensor("zero_convs.0.0.weight").dtype == dtype
        assert {"input_hint_block.0.weight", "input_hint_block.14.weight", "middle_block_out.0.weight",
                "input_blocks.0.0.weight", "time_embed.0.weight"} <= keys
        loaded = load_control_file(path, dtype=torch.float32)
        with torch.no_grad():
            got = unet(x, t, context=context, control=loaded.residuals(x, hint, t, context, None))
        assert torch.allclose(got, expected, atol=tolerance, rtol=0), (dtype, (got - expected).abs().max())


def test_caption_mix_names_another_position_or_none_and_items_are_reproducible() -> None:
    data = ControlShapesDataset(64, seed=5, mix=CaptionMix(caption_dropout=0.1, swap_position=0.5,
                                                           drop_position=0.2))
    kinds = {"empty": 0, "swapped": 0, "dropped": 0, "true": 0}
    for index in range(400):
        spec, _ = data.shapes.spec(index)
        caption = data.mix.caption(spec, np.random.default_rng([5, index, 7]))  # what data[index] draws
        if index < 20:
            assert data[index]["caption"] == caption
        if caption == "":
            kinds["empty"] += 1
        elif caption == spec.caption():
            kinds["true"] += 1
        elif caption == caption_without_position(spec):
            kinds["dropped"] += 1
            assert not POSITION_WORDS & set(caption.split())
        else:
            kinds["swapped"] += 1
            named = re.search(r" (at the|on the|in the) (.+?) on an? ", caption).group(2)
            assert named != spec.position and named in shapes.POSITIONS, caption
    assert 20 <= kinds["empty"] <= 65 and 160 <= kinds["swapped"] <= 240 and 50 <= kinds["dropped"] <= 115
    first, again = data[7], data[7]
    assert first["caption"] == again["caption"] and torch.equal(first["hint"], again["hint"])


def test_edge_hint_outlines_the_shape_even_for_close_luma_colours() -> None:
    for colour, background in (("white", "black"), ("blue", "red")):  # luma differs by 96 % and 4 %
        spec = shapes.ShapeSpec(colour, "square", "large", "top left", background)
        image = torch.from_numpy(shapes.render(spec, 64)).permute(2, 0, 1).float()[None] / 127.5 - 1
        hint = edge_hint(image)[0]  # (3, 64, 64)
        assert hint.shape == (3, 64, 64) and set(hint.unique().tolist()) <= {0.0, 1.0}
        ys, xs = hint[0].nonzero(as_tuple=True)
        assert len(xs) > 40  # the square's outline
        assert xs.float().mean() < 21.3 and ys.float().mean() < 21.3  # in the top-left third


def test_position_cases_give_each_spec_a_wrong_position_and_none() -> None:
    cases = position_cases(96)
    assert len(cases) == 192
    assert {c.spec for c in cases} == set(shapes.held_out_combos(96))
    for case in cases:
        if case.prompt_kind == "swapped":
            assert case.prompt != case.spec.caption()
            assert shapes.POSITION_PHRASES[case.spec.position] + " on a" not in case.prompt
        else:
            assert not POSITION_WORDS & set(case.prompt.split())
