"""Checkpoint loading: architecture from shapes, families, metadata overrides, errors, convert CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from sgm import devices
from sgm.io.checkpoints import (
    CheckpointError,
    UNET_PREFIX,
    assign_weights,
    detect_family,
    infer_unet_config,
    load_checkpoint,
    load_unet,
    load_vae,
    read_state_dict,
    save_checkpoint,
)
from sgm.io.convert import unet_original_to_diffusers, vae_original_to_diffusers
from sgm.nets.unet import UNetModel
from tests.sgm.model_factories import TINY_CONTEXT_DIM, tiny_unet, tiny_vae, write_tiny_checkpoint

REAL_UNETS = {
    "sd1": dict(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2, attention_resolutions=[4, 2, 1],
                channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768),
    "sd2": dict(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2, attention_resolutions=[4, 2, 1],
                channel_mult=[1, 2, 4, 4], num_head_channels=64, context_dim=1024, use_linear_in_transformer=True),
    "sdxl": dict(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2, attention_resolutions=[4, 2],
                 channel_mult=[1, 2, 4], num_head_channels=64, transformer_depth=[0, 2, 10], context_dim=2048,
                 use_linear_in_transformer=True, num_classes="sequential", adm_in_channels=2816),
    "sdxl-refiner": dict(in_channels=4, model_channels=384, out_channels=4, num_res_blocks=2,
                         attention_resolutions=[4, 2], channel_mult=[1, 2, 4, 4], num_head_channels=64,
                         transformer_depth=4, context_dim=1280, use_linear_in_transformer=True,
                         num_classes="sequential", adm_in_channels=2560),
    "sd1-inpaint": dict(in_channels=9, model_channels=320, out_channels=4, num_res_blocks=2,
                        attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768),
}


def meta_state(config: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return UNetModel(**config).state_dict()


@pytest.mark.parametrize("family", list(REAL_UNETS))
def test_real_size_architecture_and_family_are_read_from_shapes(family: str) -> None:
    # Meta tensors: real SD/SDXL shapes without allocating a byte of weights.
    state = meta_state(REAL_UNETS[family])
    assert detect_family({UNET_PREFIX + k: v for k, v in state.items()}, {}) == family
    inferred = infer_unet_config(state, family)
    rebuilt = meta_state(inferred)
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in state.items()}
    heads = ("num_heads", 8) if family.startswith("sd1") else ("num_head_channels", 64)
    assert inferred[heads[0]] == heads[1]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_checkpoint_round_trip(family: str, tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / f"{family}.safetensors", family, seed=4)
    checkpoint = load_checkpoint(path)
    assert checkpoint.family == family
    assert checkpoint.prediction == "eps"
    assert checkpoint.scale_factor == (0.13025 if family == "sdxl" else 0.18215)
    assert checkpoint.text_encoders == [] and checkpoint.conditioner is None
    reference = tiny_unet(family, seed=4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 3, TINY_CONTEXT_DIM, generator=generator)
    y = torch.randn(1, reference.adm_in_channels, generator=generator) if family == "sdxl" else None
    with torch.no_grad():
        # Same weights, not bitwise-equal results: BLAS picks kernels by memory alignment on some
        # CPUs (AMD EPYC: 2e-6 apart); wrong or misplaced weights differ by O(1).
        torch.testing.assert_close(checkpoint.unet(x, torch.tensor([7.0]), context, y),
                                   reference(x, torch.tensor([7.0]), context, y), rtol=1e-5, atol=1e-5)
        images = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
        assert torch.equal(checkpoint.vae.encode(images), tiny_vae(seed=5).encode(images))
    with pytest.raises(RuntimeError, match="no text encoder loaded"):
        checkpoint.encode_text(["a cat"])


def test_assign_shares_tensors_instead_of_copying() -> None:
    source = tiny_unet("sd1").state_dict()
    with torch.device("meta"):
        target = UNetModel(**infer_unet_config(source, "sd1"))
    assign_weights(target, source, device="cpu", dtype=None, what="UNet")
    loaded = target.state_dict()
    assert all(loaded[k].data_ptr() == source[k].data_ptr() for k in source)
    assert not any(p.is_meta for p in target.parameters())


def test_inpaint_family_and_metadata_overrides(tmp_path: Path) -> None:
    inpaint = load_checkpoint(write_tiny_checkpoint(tmp_path / "inpaint.safetensors", "sd1", inpaint=True))
    assert inpaint.family == "sd1-inpaint" and inpaint.unet.in_channels == 9
    custom = write_tiny_checkpoint(
        tmp_path / "custom.safetensors", "sd2",
        metadata={"latentflow.family": "shapes-tiny",
                  "latentflow.config": json.dumps({"prediction": "v", "scale_factor": 0.5,
                                                   "unet": {"num_head_channels": 16}})},
    )
    checkpoint = load_checkpoint(custom)
    assert (checkpoint.family, checkpoint.prediction, checkpoint.scale_factor) == ("shapes-tiny", "v", 0.5)
    assert checkpoint.metadata["latentflow.family"] == "shapes-tiny"


def test_text_weights_go_to_build_conditioner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(TINY_CONTEXT_DIM)}
    path = write_tiny_checkpoint(tmp_path / "with_text.safetensors", "sd1", text_state_dict=text, with_vae=False)
    calls = []

    class FakeConditioner:
        modules = [torch.nn.Identity()]

        def encode_text(self, prompts: list[str], **kwargs: object) -> str:
            return f"encoded {prompts}"

    def build_conditioner(text_state_dict, family, metadata, *, model_path, device, dtype):  # noqa: ANN001
        calls.append((sorted(text_state_dict), family, model_path, dtype))
        return FakeConditioner()

    monkeypatch.setitem(sys.modules, "sgm.text.encoders", types.SimpleNamespace(build_conditioner=build_conditioner))
    checkpoint = load_checkpoint(path, dtype=torch.float32)
    assert calls == [(sorted(text), "sd1", path, torch.float32)]
    assert checkpoint.encode_text(["a cat"]) == "encoded ['a cat']"
    assert checkpoint.text_encoders == FakeConditioner.modules and checkpoint.vae is None


def test_layout_errors_name_the_keys(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "good.safetensors", "sd1")
    tensors, metadata = read_state_dict(path)
    tensors = dict(tensors)
    missing = UNET_PREFIX + "output_blocks.1.0.out_layers.3.bias"
    del tensors[missing]
    tensors[UNET_PREFIX + "output_blocks.1.0.extra.weight"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "bad.safetensors")
    assert "output_blocks.1.0.out_layers.3.bias" in str(error.value)
    assert "output_blocks.1.0.extra.weight" in str(error.value)

    save_file({"some.other.model.weight": torch.zeros(2)}, str(tmp_path / "unknown.safetensors"))
    with pytest.raises(CheckpointError, match="unknown checkpoint layout.*some.other.model.weight"):
        load_checkpoint(tmp_path / "unknown.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unsupported file type '.onnx'"):
        load_checkpoint(tmp_path / "model.onnx")


def test_standalone_vae_and_unet_files_in_every_layout(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    vae, unet = tiny_vae(seed=1), tiny_unet("sd2", seed=2)
    vae_state, unet_state = vae.state_dict(), unet.state_dict()
    save_file({"first_stage_model." + k: v for k, v in vae_state.items()}, str(tmp_path / "vae_prefixed.safetensors"))
    save_file(vae_state, str(tmp_path / "vae_plain.safetensors"))
    save_file({k: v.contiguous() for k, v in vae_original_to_diffusers(vae_state).items()}, str(tmp_path / "vae_diffusers.safetensors"))
    hints = {"latentflow.config": json.dumps({"unet": {"num_head_channels": 16}})}
    save_file(unet_state, str(tmp_path / "unet_plain.safetensors"), metadata=hints)
    save_file(unet_original_to_diffusers(unet_state), str(tmp_path / "unet_diffusers.safetensors"), metadata=hints)

    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.decode(latents)
        for name in ("vae_prefixed", "vae_plain", "vae_diffusers"):
            assert torch.equal(load_vae(tmp_path / f"{name}.safetensors").decode(latents), expected), name
        x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([3.0]), torch.randn(1, 2, TINY_CONTEXT_DIM)
        for name in ("unet_plain", "unet_diffusers"):
            loaded = load_unet(tmp_path / f"{name}.safetensors")
            torch.testing.assert_close(loaded(x, t, context), unet(x, t, context), rtol=1e-5, atol=1e-5,
                                       msg=name)  # alignment-dependent kernels: see the round-trip test


def test_pickle_checkpoints_load_only_plain_tensors(tmp_path: Path) -> None:
    unet = tiny_unet("sd1", seed=6)
    torch.save({"state_dict": {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}, "global_step": 3},
               tmp_path / "model.ckpt")
    loaded = load_checkpoint(tmp_path / "model.ckpt")
    assert loaded.family == "sd1"
    assert torch.equal(loaded.unet.out[2].weight, unet.out[2].weight)

    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (Path.touch, (marker,))

    torch.save({"state_dict": {"x": Exploit()}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="evil.ckpt contains code"):
        load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_convert_command_takes_ema_casts_and_drops_training_state(tmp_path: Path) -> None:
    import main

    unet = tiny_unet("sd1", seed=7)
    state = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    ema_key = "model_ema." + ("diffusion_model." + "out.2.weight").replace(".", "")
    ema_weight = torch.full_like(state[UNET_PREFIX + "out.2.weight"], 0.25)
    torch.save({"state_dict": {**state, ema_key: ema_weight, "model_ema.num_updates": torch.tensor(5),
                               "loss.logvar": torch.zeros(3)}}, tmp_path / "train.ckpt")
    dst = tmp_path / "model.safetensors"
    assert main.main(["convert", str(tmp_path / "train.ckpt"), str(dst), "--ema", "--dtype", "fp16"]) == 0
    tensors, metadata = read_state_dict(dst)
    assert not any(k.startswith(("model_ema.", "loss.")) for k in tensors)
    assert tensors[UNET_PREFIX + "out.2.weight"].dtype == torch.float16
    assert torch.equal(tensors[UNET_PREFIX + "out.2.weight"], ema_weight.half())
    assert torch.equal(tensors[UNET_PREFIX + "out.0.weight"], state[UNET_PREFIX + "out.0.weight"].half())
    assert metadata["latentflow.converted_from"] == "train.ckpt"
    assert main.main(["convert", str(tmp_path / "train.ckpt"), str(dst)]) == 2  # exists: needs --overwrite


def test_save_checkpoint_rejects_non_string_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must be str"):
        save_checkpoint(tmp_path / "x.safetensors", vae=tiny_vae(), metadata={"steps": 3})  # type: ignore[dict-item]


def test_device_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert devices.default_dtype("cpu") == torch.bfloat16
    assert devices.use_channels_last("cpu", torch.bfloat16) == torch.backends.mkldnn.is_available()
    assert not devices.use_channels_last("cpu", torch.float32)
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    assert devices.default_dtype("cpu") == torch.float32
    assert devices.default_dtype("cuda") == torch.float16
    module = devices.prepare_module(torch.nn.Conv2d(2, 2, 1), "cpu", torch.bfloat16, channels_last=True)
    assert module.weight.dtype == torch.bfloat16 and not module.training
    assert module.weight.is_contiguous(memory_format=torch.channels_last)


def test_packed_weights_fall_back_to_plain_convolutions_where_the_cpu_cannot_pack(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx", "avx2", "fma"}))  # AVX2-only EPYC
    assert not devices.can_pack_weights() and not devices.use_packed_weights("cpu", torch.bfloat16)
    model = devices.prepare_module(tiny_unet("sd1"), "cpu", torch.bfloat16, channels_last=True, pack_weights=True)
    plain = devices.prepare_module(tiny_unet("sd1"), "cpu", torch.bfloat16, channels_last=True, pack_weights=False)
    assert not any(isinstance(m, devices.PackedConv2d) for m in model.modules())
    context = torch.randn(1, 3, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model(x, torch.tensor([9.0]), context)
        assert out.shape == (1, 4, 8, 8) and torch.equal(out, plain(x, torch.tensor([9.0]), context))
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512bw", "avx512vl", "avx512dq", "amx_bf16"}))
    assert devices.can_pack_weights() == (torch.backends.mkldnn.is_available()
                                          and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


@pytest.mark.skipif(not devices.can_pack_weights(),
                    reason="oneDNN prepacks bf16 convolution weights only on CPUs with AVX512BW/VL/DQ")
def test_packed_conv_weights_give_identical_results_and_follow_weight_edits() -> None:
    import copy

    plain = devices.prepare_module(tiny_unet("sd1"), "cpu", torch.bfloat16, channels_last=True, pack_weights=False)
    packed = devices.prepare_module(tiny_unet("sd1"), "cpu", torch.bfloat16, channels_last=True, pack_weights=True)
    assert type(packed.out[2]) is devices.PackedConv2d and isinstance(packed.out[2], torch.nn.Conv2d)
    assert packed.state_dict().keys() == plain.state_dict().keys()
    context = torch.randn(1, 3, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for size in ((8, 8), (12, 4)):  # a second input size reuses the packed weight
            x = torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(1))
            assert torch.equal(packed(x, torch.tensor([9.0]), context), plain(x, torch.tensor([9.0]), context))
    with torch.no_grad():
        for model in (plain, packed):  # an in-place edit (e.g. a LoRA merge) must be seen
            model.input_blocks[0][0].weight.mul_(-1)
        assert torch.equal(packed(x, torch.tensor([9.0]), context), plain(x, torch.tensor([9.0]), context))
        clone = copy.deepcopy(packed)  # the opaque packed tensor is not copied, only rebuilt
        assert torch.equal(clone(x, torch.tensor([9.0]), context), plain(x, torch.tensor([9.0]), context))
    packed.train()
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    packed(x, torch.tensor([9.0]), context).float().sum().backward()  # training takes the autograd path
    assert x.grad is not None and x.grad.abs().sum() > 0


class _RunsCode:
    def __reduce__(self):  # what a malicious pickle does: call a function on load
        import os

        return (os.system, ("echo this must never run",))


def test_a_pickle_with_code_is_refused_with_our_message_and_never_run(tmp_path: Path) -> None:
    from sgm.io.state_dict import read_state_dict

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith("evil.ckpt contains code (posix.system)") and ".safetensors" in message
    assert "weights_only" not in message  # torch's advice to run the code is not passed on
    (tmp_path / "broken.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="broken.ckpt is not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "broken.ckpt")
