"""sgm.io.lora: key layouts onto our module names, the update formula, exact unloading."""

from __future__ import annotations

import pytest
import torch

from sgm.io.lora import LoraError, kohya_unet_name, kohya_unet_names, match_lora, patched, unet_module_names
from tests.sgm.model_factories import tiny_unet
from tests.workflows.model_files import _tower

RANK = 2


def lora_pair(module: torch.nn.Linear, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, module.in_features, generator=generator)
    up = torch.randn(module.out_features, RANK, generator=generator)
    return down, up


def attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: m for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and name.endswith(("attn1.to_q", "attn2.to_v"))}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_kohya_names_are_the_diffusers_module_paths() -> None:
    unet = tiny_unet("sd1")  # 2 levels, 1 res block each: input_blocks.1 = down_blocks.0 ...
    names = kohya_unet_names(unet)
    assert names["input_blocks.1.1.transformer_blocks.0.attn1.to_q"] == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert names["middle_block.1.transformer_blocks.0.attn2.to_k"] == \
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    assert names["output_blocks.2.1.proj_in"] == "lora_unet_up_blocks_1_attentions_0_proj_in"
    assert names["input_blocks.1.0.in_layers.2"] == "lora_unet_down_blocks_0_resnets_0_conv1"
    with pytest.raises(LoraError, match="not an adaptable module"):
        kohya_unet_name(unet, "input_blocks.1.1")


def test_kohya_and_diffusers_layouts_give_the_same_update() -> None:
    unet = tiny_unet("sd1")
    kohya: dict[str, torch.Tensor] = {}
    peft: dict[str, torch.Tensor] = {}
    ldm_kohya: dict[str, torch.Tensor] = {}
    for seed, (name, module) in enumerate(attention_modules(unet).items()):
        down, up = lora_pair(module, seed)
        stem = kohya_unet_name(unet, name)
        assert stem.startswith("lora_unet_") and ("down_blocks" in stem or "up_blocks" in stem or "mid_block" in stem)
        kohya.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                      f"{stem}.alpha": torch.tensor(1.0)})
        diffusers_name = stem.removeprefix("lora_unet_")
        dotted = next(alias for alias, target in unet_module_names(unet).items()
                      if target == name and "." in alias and alias.replace(".", "_") == diffusers_name)
        peft.update({f"unet.{dotted}.lora_A.weight": down, f"unet.{dotted}.lora_B.weight": up,
                     f"unet.{dotted}.alpha": torch.tensor(1.0)})
        ldm = "lora_unet_" + name.replace(".", "_")  # sd-scripts' SDXL naming: ldm paths
        ldm_kohya.update({f"{ldm}.lora_down.weight": down, f"{ldm}.lora_up.weight": up,
                          f"{ldm}.alpha": torch.tensor(1.0)})
    results = []
    for state_dict in (kohya, peft, ldm_kohya):
        match = match_lora(state_dict, unet)
        assert not match.unmatched
        assert len(match.targets) == len(attention_modules(unet))
        with patched({"unet": unet}, [(match.targets, 1.0)]):
            results.append(snapshot(unet))
    assert all(torch.equal(results[0][k], other[k]) for other in results[1:] for k in results[0])


def test_update_is_strength_times_alpha_over_rank_times_up_down_and_unloading_is_exact() -> None:
    unet = tiny_unet("sd1")
    name, module = next(iter(attention_modules(unet).items()))
    down, up = lora_pair(module, 0)
    stem = kohya_unet_name(unet, name)
    match = match_lora({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                        f"{stem}.alpha": torch.tensor(1.0)}, unet)
    before = snapshot(unet)
    with patched({"unet": unet}, [(match.targets, 0.5)]):
        patched_weight = module.weight.detach().clone()
    expected = before[f"{name}.weight"] + 0.5 * (1.0 / RANK) * (up @ down)
    assert torch.allclose(patched_weight, expected, atol=1e-6)
    after = snapshot(unet)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-exact, no reload


def test_strength_zero_changes_nothing_and_errors_still_restore() -> None:
    unet = tiny_unet("sd1")
    name, module = next(iter(attention_modules(unet).items()))
    down, up = lora_pair(module, 1)
    stem = kohya_unet_name(unet, name)
    match = match_lora({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}, unet)
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 32)
    with torch.no_grad():
        base = unet(x, t, context=context)
        with patched({"unet": unet}, [(match.targets, 0.0)]):
            zero = unet(x, t, context=context)
        with patched({"unet": unet}, [(match.targets, 1.0)]):
            full = unet(x, t, context=context)
    assert torch.equal(base, zero)
    assert not torch.allclose(base, full)
    before = snapshot(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with patched({"unet": unet}, [(match.targets, 1.0)]):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in snapshot(unet).items())


def test_open_clip_q_k_v_loras_land_in_rows_of_the_fused_projection() -> None:
    tower = _tower("open_clip", 0)
    width = tower.config.width
    fused = tower.model.transformer.resblocks[0].attn.in_proj_weight
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for proj in ("q_proj", "k_proj"):
        stem = f"lora_te2_text_model_encoder_layers_0_self_attn_{proj}"
        state_dict[f"{stem}.lora_down.weight"] = torch.randn(RANK, width, generator=generator)
        state_dict[f"{stem}.lora_up.weight"] = torch.randn(width, RANK, generator=generator)
    clip_l = _tower("clip", 1)
    match = match_lora(state_dict, None, [clip_l, tower])  # SDXL order: te1 = CLIP-L, te2 = bigG
    assert not match.unmatched and {t.module for t in match.targets} == {"te1"}
    before = fused.detach().clone()
    with patched({"te0": clip_l, "te1": tower}, [(match.targets, 1.0)]):
        delta = fused.detach() - before
    # No alpha stored: alpha defaults to the rank (scale 1), as in kohya's loader.
    q = state_dict["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] @ \
        state_dict["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"]
    assert torch.allclose(delta[:width], q, atol=1e-5)
    assert delta[width:2 * width].abs().max() > 0  # k
    assert torch.equal(delta[2 * width:], torch.zeros_like(delta[2 * width:]))  # v untouched
    assert torch.equal(fused, before)


def test_keys_that_fit_no_module_are_reported_and_wrong_shapes_fail_clearly() -> None:
    unet = tiny_unet("sd1")
    match = match_lora({"lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(2, 4),
                        "lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(4, 2),
                        "some_other_key": torch.zeros(1)}, unet)
    assert not match.targets
    assert "some_other_key" in match.unmatched and "lora_unet_nowhere_to_q.down" in match.unmatched
    name, module = next(iter(attention_modules(unet).items()))
    stem = kohya_unet_name(unet, name)
    bad = match_lora({f"{stem}.lora_down.weight": torch.zeros(RANK, module.in_features + 1),
                      f"{stem}.lora_up.weight": torch.zeros(module.out_features, RANK)}, unet)
    with pytest.raises(LoraError, match="trained for another model"):
        with patched({"unet": unet}, [(bad.targets, 1.0)]):
            pass


def test_conv_lora_composes_down_and_up_convolutions() -> None:
    unet = tiny_unet("sd1")
    conv = dict(unet.named_modules())["input_blocks.1.0.in_layers.2"]
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3)
    generator = torch.Generator().manual_seed(3)
    down = torch.randn(RANK, conv.in_channels, 3, 3, generator=generator)  # LoCon: a 3x3 down conv
    up = torch.randn(conv.out_channels, RANK, 1, 1, generator=generator)  # and a 1x1 up conv
    stem = kohya_unet_names(unet)["input_blocks.1.0.in_layers.2"]
    match = match_lora({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}, unet)
    x = torch.randn(1, conv.in_channels, 6, 6, generator=generator)
    with torch.no_grad():
        base = conv(x)
        with patched({"unet": unet}, [(match.targets, 1.0)]):
            adapted = conv(x)
        lora_path = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    assert torch.allclose(adapted, base + lora_path, atol=1e-4)
