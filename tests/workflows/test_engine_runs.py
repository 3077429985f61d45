"""Graphs of built-in nodes run through the engine's executor on the fixture checkpoints:
what is cached and re-executed, model sharing, LoRA at node level, seeds, cancellation."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.cache import ResultCache
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.validation import validate_document
from nodes.builtin import build_nodes
from nodes.memory import result_size
from nodes.runtime import Runtime
from nodes.sample_cli import txt2img_document
from tests.workflows.model_files import CHECKPOINTS, LORAS


@pytest.fixture(scope="module")
def shared_runtime(installation: Path) -> Runtime:
    """One model cache for the module's tests (loading is what costs; results are per test)."""
    from engine.settings import Settings

    return Runtime(Settings.for_root(installation, extra={"dtype": "fp32"}), device="cpu")


def make_executor(runtime: Runtime, settings: Any) -> Executor:
    registry = NodeRegistry()
    registry.register_pack(build_nodes(runtime), "nodes.builtin")
    return Executor(registry, ResultCache(256, 1 << 30, size_of=result_size),
                    services={"settings": settings, "output_dir": settings.output_dir})


@pytest.fixture()
def executor(shared_runtime: Runtime, settings: Any) -> Executor:
    """A fresh result cache (so executed/cached sets are the test's own) over the shared models."""
    return make_executor(shared_runtime, settings)


def document(family: str = "sd1", **changes: Any) -> dict[str, Any]:
    values = dict(checkpoint=CHECKPOINTS[family], prompt="a red circle", negative="", width=64, height=64,
                  batch=1, seed=7, steps=2, cfg=4.0, sampler="euler", scheduler="karras", prefix="t")
    values.update(changes)
    return txt2img_document(**values)


def latent_document(family: str = "sd1", lora: tuple[float, float] | None = None, **changes: Any) -> dict[str, Any]:
    """txt2img ending in ShowValue of the sampled latent (so the latent itself can be read back)."""
    doc = document(family, **changes)
    nodes = doc["nodes"]
    del nodes["6"], nodes["7"]
    nodes["8"] = {"type": "Decode", "inputs": {"vae": ["1", "vae"], "latent": ["5", 0]}}
    if lora is not None:
        nodes["9"] = {"type": "LoadLoRA", "inputs": {"model": ["1", "model"], "clip": ["1", "clip"],
                                                     "lora_name": LORAS[family], "strength_model": lora[0],
                                                     "strength_clip": lora[1]}}
        nodes["2"]["inputs"]["clip"] = nodes["3"]["inputs"]["clip"] = ["9", "clip"]
        nodes["5"]["inputs"]["model"] = ["9", "model"]
    nodes["10"] = {"type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return doc


def run(executor: Executor, doc: dict[str, Any], **kwargs: Any) -> Any:
    report = validate_document(doc, executor.registry)
    assert report.ok, report.format()
    result = executor.run(report.workflow, services={"workflow_document": doc}, **kwargs)
    assert result.status == "success", result.failure and result.failure.message
    return result


def output_of(executor: Executor, doc: dict[str, Any], node_id: str) -> Any:
    """Run ``doc`` and read ``node_id``'s first output back from the result cache."""
    run(executor, doc)
    keys = executor.cache_keys(validate_document(doc, executor.registry).workflow)
    return executor.cache.peek(keys[node_id]).values[0]


def sampled(executor: Executor, doc: dict[str, Any]) -> torch.Tensor:
    return output_of(executor, doc, "5").samples


def test_changing_the_prompt_reruns_text_encode_and_below_only(executor: Executor) -> None:
    first = run(executor, document())
    assert set(first.executed) == {"1", "2", "3", "4", "5", "6", "7"}
    second = run(executor, document(prompt="a blue square"))
    assert set(second.executed) == {"2", "5", "6", "7"}
    assert set(second.cached) == {"1", "3", "4"}
    third = run(executor, document(prompt="a blue square"))
    assert set(third.executed) == set() and set(third.cached) == {"1", "2", "3", "4", "5", "6", "7"}


def test_a_model_is_loaded_once_for_every_workflow_that_names_it(settings: Any) -> None:
    runtime = Runtime(settings, device="cpu")
    executor = make_executor(runtime, settings)
    run(executor, document())
    executor.cache.clear()  # even without the result cache, the file is not read again
    run(executor, document(steps=3))
    run(executor, latent_document())
    assert runtime.models.loads == 1


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_family_generates_through_text_encode_and_ksampler(executor: Executor, family: str) -> None:
    result = run(executor, document(family))
    (image,) = result.outputs["7"]["images"]
    assert Path(image["path"]).is_file() and image["type"] == "output" and image["subfolder"] == ""


def test_lora_at_strength_zero_equals_no_lora_and_unloading_restores_the_base(executor: Executor) -> None:
    base = sampled(executor, latent_document())
    zero = sampled(executor, latent_document(lora=(0.0, 0.0)))
    full = sampled(executor, latent_document(lora=(1.0, 1.0)))
    text_only = sampled(executor, latent_document(lora=(0.0, 1.0)))
    assert torch.equal(base, zero)
    assert not torch.allclose(base, full, atol=1e-4)
    assert not torch.allclose(base, text_only, atol=1e-4) and not torch.allclose(full, text_only, atol=1e-4)
    executor.cache.clear()  # recompute the base from the same (shared, once patched) weights
    assert torch.equal(sampled(executor, latent_document()), base)


def test_batch_items_follow_the_seed_rule_and_keep_it_when_picked(executor: Executor) -> None:
    batch = sampled(executor, latent_document(batch=2, seed=11))
    single = sampled(executor, latent_document(batch=1, seed=12))
    # item i of seed s == seed s + i (to float rounding: batch 2 and 1 take different BLAS blocking)
    assert torch.allclose(batch[1:], single, rtol=1e-4, atol=1e-4)
    doc = latent_document(batch=2, seed=11)
    doc["nodes"]["11"] = {"type": "SliceLatentBatch", "inputs": {"latent": ["4", 0], "batch_index": 1, "length": 1}}
    doc["nodes"]["5"]["inputs"]["latent"] = ["11", 0]
    assert torch.allclose(sampled(executor, doc), single, rtol=1e-4, atol=1e-4)


def test_custom_sampler_nodes_match_ksampler(executor: Executor) -> None:
    reference = sampled(executor, latent_document(sampler="euler", scheduler="karras", cfg=4.0, steps=2))
    doc = latent_document()
    nodes = doc["nodes"]
    nodes["20"] = {"type": "UNetDenoise", "inputs": {"model": ["1", "model"], "positive": ["2", 0],
                                                     "negative": ["3", 0], "cfg": 4.0}}
    nodes["21"] = {"type": "Scheduler", "inputs": {"model": ["1", "model"], "scheduler": "karras", "steps": 2,
                                                   "denoise": 1.0}}
    nodes["22"] = {"type": "SamplerSelect", "inputs": {"sampler_name": "euler"}}
    nodes["5"] = {"type": "Sampler", "inputs": {"guider": ["20", 0], "sampler": ["22", 0], "sigmas": ["21", 0],
                                                "latent": ["4", 0], "seed": 7, "add_noise": True}}
    assert torch.allclose(sampled(executor, doc), reference, atol=1e-6)


def test_progress_reports_every_step_and_cancel_stops_the_run(executor: Executor) -> None:
    steps: list[tuple[float, float]] = []
    previews: list[Any] = []

    def listen(event: Any) -> None:
        if event.type == "node_progress" and event.node_type == "SampleLatent":
            steps.append((event.data["value"], event.data["max"]))
            previews.append(event.data.get("preview"))

    doc = document(steps=3, seed=99)
    watched = executor.run(validate_document(doc, executor.registry).workflow, on_event=listen,
                           services={"workflow_document": doc, "preview_wanted": lambda: True})
    assert watched.status == "success"
    assert steps == [(1, 3), (2, 3), (3, 3)]
    # at most one preview per 250 ms, and always the last step's: what a viewer keeps
    assert previews[0] is not None and previews[-1] is not None
    assert all(p is None or p.size == (8, 8) for p in previews)  # a 64x64 image's latent
    steps.clear()
    previews.clear()
    run(executor, document(steps=3, seed=98), on_event=listen)  # nobody watches: no preview is made
    assert steps == [(1, 3), (2, 3), (3, 3)] and previews == [None, None, None]

    cancel = threading.Event()

    def cancel_on_first_step(event: Any) -> None:
        if event.type == "node_progress":
            cancel.set()

    doc = document(steps=5, seed=100)
    result = executor.run(validate_document(doc, executor.registry).workflow, on_event=cancel_on_first_step,
                          cancel=cancel, services={"workflow_document": doc})
    assert result.status == "cancelled" and "5" not in result.executed


def test_separate_unet_vae_and_text_encoder_files_equal_the_checkpoint(executor: Executor, settings: Any) -> None:
    from safetensors.torch import save_file

    from sgm.io.checkpoints import UNET_PREFIX, VAE_PREFIX, read_state_dict, strip_prefix
    from sgm.io.convert_text import text_original_to_diffusers
    from tests.workflows.model_files import write_byte_tokenizer

    models = Path(settings.models_dir)
    tensors, _ = read_state_dict(models / "checkpoints" / CHECKPOINTS["sd1"])
    metadata = {"latentflow.config": '{"unet": {"num_heads": 8}}'}
    save_file({k: v.contiguous() for k, v in strip_prefix(tensors, UNET_PREFIX).items()},
              str(models / "unet" / "sd1-unet.safetensors"), metadata=metadata)
    save_file({k: v.contiguous() for k, v in strip_prefix(tensors, VAE_PREFIX).items()},
              str(models / "vae" / "sd1-vae.safetensors"))
    text_encoder, _ = text_original_to_diffusers("sd1", {k: v for k, v in tensors.items()
                                                         if k.startswith("cond_stage_model.")})
    save_file({k: v.contiguous() for k, v in text_encoder.items()},  # transformers keys
              str(models / "text_encoders" / "sd1-clip-l.safetensors"))
    write_byte_tokenizer(models / "text_encoders" / "tokenizer")

    reference = sampled(executor, latent_document())
    reference_image = output_of(executor, latent_document(), "8")
    doc = latent_document()
    nodes = doc["nodes"]
    nodes["1"] = {"type": "LoadUNet", "inputs": {"unet_name": "sd1-unet.safetensors", "prediction": "eps"}}
    nodes["30"] = {"type": "LoadTextEncoder", "inputs": {"text_encoder_name": "sd1-clip-l.safetensors",
                                                         "family": "sd1"}}
    nodes["31"] = {"type": "LoadVAE", "inputs": {"vae_name": "sd1-vae.safetensors", "scale_factor": 0.18215}}
    nodes["2"]["inputs"]["clip"] = nodes["3"]["inputs"]["clip"] = ["30", "clip"]
    nodes["8"]["inputs"]["vae"] = ["31", "vae"]
    assert torch.equal(sampled(executor, doc), reference)
    assert torch.equal(output_of(executor, doc, "8"), reference_image)


def test_inpainting_keeps_the_unmasked_latent_and_areas_change_the_result(executor: Executor) -> None:
    doc = latent_document()
    nodes = doc["nodes"]
    nodes["40"] = {"type": "LoadInputImage", "inputs": {"image": "example.png"}}  # transparent centre = repaint
    nodes["41"] = {"type": "EncodeLatent", "inputs": {"vae": ["1", "vae"], "image": ["40", "image"],
                                                      "mask": ["40", "mask"]}}
    nodes["5"]["inputs"]["latent"] = ["41", 0]
    encoded = output_of(executor, doc, "41")
    out = sampled(executor, doc)
    keep = torch.nn.functional.interpolate(encoded.noise_mask[:, None], size=out.shape[-2:], mode="bilinear") == 0
    assert keep.any() and (~keep).any()
    assert torch.equal(out.masked_select(keep.expand_as(out)), encoded.samples.masked_select(keep.expand_as(out)))
    assert not torch.allclose(out, encoded.samples)

    plain = sampled(executor, latent_document())
    with_area = latent_document()
    with_area["nodes"]["42"] = {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": "a green star"}}
    with_area["nodes"]["43"] = {"type": "SetConditioningArea", "inputs": {
        "conditioning": ["42", 0], "width": 32, "height": 32, "x": 0, "y": 0, "strength": 1.0}}
    with_area["nodes"]["44"] = {"type": "CombineConditioning", "inputs": {"conditioning_1": ["2", 0],
                                                                         "conditioning_2": ["43", 0]}}
    with_area["nodes"]["5"]["inputs"]["positive"] = ["44", 0]
    combined = sampled(executor, with_area)
    assert not torch.allclose(combined[..., :4, :4], plain[..., :4, :4])  # the area's quarter changed


def test_out_of_memory_while_sampling_retries_once_then_fails_the_run_clearly(
        executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
    import sgm.sampling.sample

    real_sample = sgm.sampling.sample.sample
    failures = {"left": 1}

    def flaky_sample(*args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(sgm.sampling.sample, "sample", flaky_sample)
    run(executor, document(seed=31))  # the retry succeeded
    assert failures["left"] == 0

    failures["left"] = 2
    doc = document(seed=32)
    result = executor.run(validate_document(doc, executor.registry).workflow, services={"workflow_document": doc})
    assert result.status == "failed" and result.failure.node_id == "5"
    assert "ModelMemoryError" in result.failure.message and "SampleLatent (sampling) ran out of memory" in \
        result.failure.message and "smaller image size" in result.failure.message


def test_txt2img_graph_reproduces_the_training_preview_sampler(executor: Executor, settings: Any) -> None:
    """The embedded model (or its stand-in) through the nodes equals sgm.training's own
    Euler + CFG sampler with the same seed: the graph adds nothing and loses nothing."""
    from sgm.io.checkpoints import load_checkpoint
    from sgm.training.diffusion import generate

    prompt = "a large yellow star in the center on a purple background"
    doc = document("tiny-shapes", prompt=prompt, seed=5, steps=3, cfg=4.0, sampler="euler", scheduler="karras")
    image = output_of(executor, doc, "6")  # (1, 64, 64, 3)
    checkpoint = load_checkpoint(Path(settings.models_dir) / "checkpoints" / CHECKPOINTS["tiny-shapes"],
                                 dtype=torch.float32)
    with torch.no_grad():
        reference = generate(checkpoint.unet, checkpoint.vae, lambda p: checkpoint.encode_text(p)[0],
                             checkpoint.model_sampling(), [prompt],
                             scale_factor=checkpoint.scale_factor, generator=torch.Generator().manual_seed(5),
                             latent_size=64 // checkpoint.vae.downscale, steps=3, cfg=4.0, scheduler="karras")
    reference = ((reference.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert image.shape == reference.shape
    assert torch.allclose(image, reference, atol=1e-5)
