"""Model merging as recorded patches (sgm.io.merge through sgm.io.lora.patched): exact factors,
per-block ratios, add / subtract, restoration, no copies, LoRA before and after a merge, and a
streamed checkpoint of the merge that loads back to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sgm.io.lora import LoraTarget, patched
from sgm.io.merge import addition, by_blocks, difference, merge_targets, merged_state_dict, weighted
from tests.sgm.model_factories import tiny_unet


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return tiny_unet("sd1", seed=0), tiny_unet("sd1", seed=1)


def merged_params(a: torch.nn.Module, patches: list) -> dict[str, torch.Tensor]:
    with patched({"unet": a}, patches):
        return params(a)


def test_ratio_one_and_zero_give_each_model_exactly_and_half_the_mean(pair) -> None:
    a, b = pair
    pa, pb = params(a), params(b)
    assert merge_targets(a, b, weighted(1.0)).targets == ()  # nothing to do, nothing recorded
    zero = merged_params(a, [(merge_targets(a, b, weighted(0.0)).targets, 1.0)])
    assert all(torch.equal(zero[k], pb[k]) for k in pa)
    half = merged_params(a, [(merge_targets(a, b, weighted(0.5)).targets, 1.0)])
    assert all(torch.equal(half[k], (pa[k] + pb[k]) / 2) for k in pa)
    quarter = merged_params(a, [(merge_targets(a, b, weighted(0.25)).targets, 1.0)])
    key = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.allclose(quarter[key], 0.25 * pa[key] + 0.75 * pb[key], atol=1e-7)
    after = params(a)  # restored bit for bit
    assert all(torch.equal(after[k], pa[k]) for k in pa)


def test_the_merged_unet_computes_what_a_unet_with_the_merged_weights_computes(pair) -> None:
    a, b = pair
    targets = merge_targets(a, b, weighted(0.3)).targets
    expected_weights = {k: 0.3 * a.state_dict()[k] + 0.7 * b.state_dict()[k] for k in a.state_dict()}
    reference = tiny_unet("sd1", seed=5)
    reference.load_state_dict(expected_weights)
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad(), patched({"unet": a}, [(targets, 1.0)]):
        out = a(x, t, c)
    with torch.no_grad():
        assert torch.allclose(out, reference(x, t, c), atol=1e-5)
        assert not torch.allclose(a(x, t, c), out, atol=1e-3)  # and the base model is back


def test_block_ratios_hit_only_their_blocks(pair) -> None:
    a, b = pair
    pa, pb = params(a), params(b)
    merged = merged_params(a, [(merge_targets(a, b, by_blocks({"input": 0.0, "middle": 1.0, "out": 0.5})).targets,
                                1.0)])
    for key in pa:
        if key.startswith("input_blocks") or key.startswith("time_embed"):  # time_embed follows the first ratio
            assert torch.equal(merged[key], pb[key]), key
        elif key.startswith("middle_block"):
            assert torch.equal(merged[key], pa[key]), key
        else:
            assert key.startswith(("output_blocks", "out.")), key
            assert torch.equal(merged[key], (pa[key] + pb[key]) / 2), key
    # The longest prefix wins (ComfyUI's per-block names: "input_blocks.1." vs "input_blocks.10.").
    ratios = by_blocks({"time_embed.": 0.2, "input_blocks.1.": 0.3, "input_blocks.10.": 0.9})
    assert ratios("input_blocks.10.0.weight") == (0.9, pytest.approx(0.1))
    assert ratios("input_blocks.1.0.weight") == (0.3, 0.7)
    assert ratios("label_emb.0.weight") == (0.2, 0.8)


def test_add_and_subtract(pair) -> None:
    a, b = pair
    pa, pb = params(a), params(b)
    added = merged_params(a, [(merge_targets(a, b, addition()).targets, 1.0)])
    diff = merged_params(a, [(merge_targets(a, b, difference(2.0)).targets, 1.0)])
    for key in pa:
        assert torch.equal(added[key], pa[key] + pb[key])
        assert torch.allclose(diff[key], 2.0 * (pa[key] - pb[key]), atol=1e-6)


def test_a_merge_records_and_copies_nothing(pair) -> None:
    a, b = pair
    pointers = {k: v.data_ptr() for k, v in a.named_parameters()}
    match = merge_targets(a, b, weighted(0.5))
    assert len(match.targets) == sum(1 for _ in a.parameters())
    for target in match.targets:  # a reference to the other model and two numbers, no tensor
        assert target.source is b and target.source_patches == ()
        assert not any(isinstance(v, torch.Tensor) for v in vars(target).values())
    with patched({"unet": a}, [(match.targets, 1.0)]):
        pass
    assert {k: v.data_ptr() for k, v in a.named_parameters()} == pointers  # the same storage, patched in place


def lora_on(module: torch.nn.Module, key: str, seed: int, name: str = "unet") -> LoraTarget:
    weight = module.get_parameter(key)
    g = torch.Generator().manual_seed(seed)
    up, down = torch.randn(weight.shape[0], 2, generator=g), torch.randn(2, weight.shape[1], generator=g)
    return LoraTarget(name, key, up, down, 0.5)


def test_lora_before_on_and_after_a_merge(pair) -> None:
    a, b = pair
    key = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    pa, pb = params(a), params(b)
    lora_a, lora_b, lora_after = lora_on(a, key, 1), lora_on(b, key, 2), lora_on(a, key, 3)
    delta = {t: t.delta(pa[key].shape, torch.float32, torch.device("cpu")) for t in (lora_a, lora_b, lora_after)}
    # model2 carries a LoRA: it is part of what model2 contributes
    targets = merge_targets(a, b, weighted(0.5), other_patches=[((lora_b,), 0.8)]).targets
    merged = merged_params(a, [((lora_a,), 1.0), (targets, 1.0), ((lora_after,), 0.5)])
    expected = 0.5 * (pa[key] + delta[lora_a]) + 0.5 * (pb[key] + 0.8 * delta[lora_b]) + 0.5 * delta[lora_after]
    assert torch.allclose(merged[key], expected, atol=1e-5)
    assert torch.equal(params(a)[key], pa[key]) and torch.equal(params(b)[key], pb[key])


def test_merging_a_model_with_itself_reads_the_other_side_unpatched(pair) -> None:
    a, _ = pair
    key = "middle_block.1.transformer_blocks.0.attn2.to_v.weight"
    pa = params(a)
    lora = lora_on(a, key, 4)
    # (a + LoRA) merged with plain a at 0.5: the other side is a before the LoRA, not after
    targets = merge_targets(a, a, weighted(0.5)).targets
    merged = merged_params(a, [((lora,), 1.0), (targets, 1.0)])
    expected = pa[key] + 0.5 * lora.delta(pa[key].shape, torch.float32, torch.device("cpu"))
    assert torch.allclose(merged[key], expected, atol=1e-6)


def test_weights_of_another_shape_are_left_unmerged() -> None:
    inpaint, plain = tiny_unet("sd1", seed=0, in_channels=9), tiny_unet("sd1", seed=1)
    match = merge_targets(inpaint, plain, addition())
    assert match.mismatched == ("input_blocks.0.0.weight",) and match.missing == ()
    before = inpaint.input_blocks[0][0].weight.detach().clone()
    merged = merged_params(inpaint, [(match.targets, 1.0)])
    assert torch.equal(merged["input_blocks.0.0.weight"], before)
    assert torch.equal(merged["out.2.weight"], inpaint.out[2].weight + plain.out[2].weight)


def test_merged_checkpoint_streams_to_a_file_that_loads_back_to_the_merged_weights(tmp_path: Path) -> None:
    from sgm.io.checkpoints import load_checkpoint
    from sgm.io.merge import merge_parts
    from sgm.io.save_checkpoint import (checkpoint_metadata, save_patched_checkpoint, text_parts, unet_part,
                                        vae_part)
    from tests.workflows.model_files import write_family_checkpoint

    first = load_checkpoint(write_family_checkpoint(tmp_path / "a.safetensors", "sd1", seed=0))
    second = load_checkpoint(write_family_checkpoint(tmp_path / "b.safetensors", "sd1", seed=7))
    unet_patches = [(merge_targets(first.unet, second.unet, weighted(0.3)).targets, 1.0)]
    towers1 = {f"te{i}": t for i, t in enumerate(first.text_encoders)}
    towers2 = {f"te{i}": t for i, t in enumerate(second.text_encoders)}
    text_patches = [(merge_parts(towers1, towers2, difference(0.5)).targets, 1.0)]
    metadata = checkpoint_metadata(unet=first.unet, family=first.family, prediction=first.prediction,
                                   scale_factor=first.scale_factor, prompt={"1": {"class_type": "X", "inputs": {}}})
    path = save_patched_checkpoint(tmp_path / "out" / "merged.safetensors",
                                   [(unet_part(first.unet), unet_patches),
                                    *[(part, text_patches) for part in text_parts(first.conditioner)],
                                    (vae_part(first.vae), ())], metadata)
    loaded = load_checkpoint(path)
    assert loaded.family == "sd1" and loaded.prediction == "eps"
    assert json.loads(loaded.metadata["prompt"]) == {"1": {"class_type": "X", "inputs": {}}}
    expected = merged_state_dict(first.unet, "unet", unet_patches)
    got = loaded.unet.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    key = "middle_block.1.proj_in.weight"
    assert torch.allclose(got[key], 0.3 * first.unet.state_dict()[key] + 0.7 * second.unet.state_dict()[key],
                          atol=1e-7)
    text_expected = merged_state_dict(first.text_encoders[0], "te0", text_patches)
    text_got = loaded.text_encoders[0].state_dict()
    assert all(torch.equal(text_got[k], text_expected[k]) for k in text_got)
    k = next(k for k in text_got if k.endswith("q_proj.weight"))
    assert torch.allclose(text_got[k], 0.5 * (first.text_encoders[0].state_dict()[k]
                                              - second.text_encoders[0].state_dict()[k]), atol=1e-7)
    assert all(torch.equal(v, first.vae.state_dict()[k]) for k, v in loaded.vae.state_dict().items())
    # the sources were never changed
    assert all(torch.equal(v, load_checkpoint(tmp_path / "a.safetensors").unet.state_dict()[k])
               for k, v in first.unet.state_dict().items())


def test_streamed_safetensors_is_read_by_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    from sgm.io.save_checkpoint import TensorSource, write_safetensors

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(6).reshape(2, 3),
               "d": torch.randn(2, 2).half(), "e": torch.zeros(0, 4)}
    sources = [TensorSource(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in tensors.items()]
    path = write_safetensors(tmp_path / "t.safetensors", sources, {"prompt": "{}"})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"prompt": "{}"}
        for key, value in tensors.items():
            assert torch.equal(handle.get_tensor(key), value) and handle.get_tensor(key).dtype == value.dtype
    with pytest.raises(FileExistsError):  # never overwrites
        write_safetensors(path, sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temporary left


def test_a_saved_v_prediction_model_says_so_to_us_and_to_comfyui(tmp_path: Path) -> None:
    from safetensors import safe_open

    from sgm.io.checkpoints import load_checkpoint
    from sgm.io.save_checkpoint import checkpoint_metadata, prediction_keys, save_patched_checkpoint, unet_part
    from tests.workflows.model_files import write_family_checkpoint

    source = load_checkpoint(write_family_checkpoint(tmp_path / "a.safetensors", "sd2", seed=0), load_text=False)
    metadata = checkpoint_metadata(unet=source.unet, family="sd2", prediction="v", zero_terminal_snr=True)
    path = save_patched_checkpoint(tmp_path / "v.safetensors", [(unet_part(source.unet), ())], metadata,
                                   extra=prediction_keys("v", True))
    with safe_open(str(path), framework="pt") as handle:
        assert {"v_pred", "ztsnr"} <= set(handle.keys()) and handle.metadata()["modelspec.predict_key"] == "v"
    loaded = load_checkpoint(path)
    assert (loaded.family, loaded.prediction, loaded.zero_terminal_snr) == ("sd2-v", "v", True)
    assert loaded.model_sampling().zero_terminal_snr
    assert all(torch.equal(v, source.unet.state_dict()[k]) for k, v in loaded.unet.state_dict().items())


def test_a_merge_across_precisions_computes_in_float32_and_rounds_once(pair) -> None:
    a, b = tiny_unet("sd1", seed=0).to(torch.bfloat16), pair[1]
    pa, pb = params(a), params(b)
    merged = merged_params(a, [(merge_targets(a, b, weighted(0.3)).targets, 1.0)])
    for key in pa:
        expected = (pb[key] * 0.7).add_(pa[key].float(), alpha=0.3).to(torch.bfloat16)
        assert merged[key].dtype == torch.bfloat16 and torch.equal(merged[key], expected), key
