"""--preview-method: live previews by latent2rgb, by the TAESD decoder from models/vae_approx, or none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.settings import Settings
from engine.validation import validate_document
from nodes.runtime import Runtime
from nodes.sampling import PREVIEW_SIZE, _preview
from sgm.nets.taesd import TinyDecoder
from sgm.sampling.latent_preview import latent_preview_image, taesd_preview_image
from tests.workflows.test_engine_runs import document, make_executor


def _settings(installation: Path, tmp_path: Path, method: str | None, taesd: bool) -> Settings:
    """The shared installation plus, when ``taesd``, a vae_approx folder holding a random TAESD decoder."""
    approx = tmp_path / "approx"
    (approx / "vae_approx").mkdir(parents=True)
    if taesd:
        torch.manual_seed(0)
        decoder = TinyDecoder()
        save_file({k: v.contiguous() for k, v in decoder.state_dict().items()},
                  str(approx / "vae_approx" / "taesd_decoder.safetensors"))
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"approx:\n  base_path: {approx}\n  vae_approx: vae_approx\n")
    extra = {"dtype": "fp32", **({"preview_method": method} if method else {})}
    return Settings.for_root(installation, output_dir=tmp_path / "output", extra=extra, extra_model_paths=(config,))


def _watched_run(runtime: Runtime, settings: Settings) -> tuple[list[Any], torch.Tensor]:
    """Previews of a 3-step SD1 txt2img run with a watcher, and the sampled (scaled) latent."""
    executor = make_executor(runtime, settings)
    previews: list[Any] = []

    def listen(event: Any) -> None:
        if event.type == "node_progress" and event.node_type == "SampleLatent":
            previews.append(event.data.get("preview"))

    doc = document(steps=3, seed=5)
    workflow = validate_document(doc, executor.registry).workflow
    result = executor.run(workflow, on_event=listen, services={"workflow_document": doc,
                                                                 "preview_wanted": lambda: True})
    assert result.status == "success", result.failure and result.failure.message
    latent = executor.cache.peek(executor.cache_keys(workflow)["5"]).values[0].samples
    return previews, latent


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("method", ["taesd", "latent2rgb", "none", "auto"])
def test_previews_follow_the_preview_method(installation: Path, tmp_path: Path, method: str) -> None:
    settings = _settings(installation, tmp_path, method, taesd=True)
    runtime = Runtime(settings, device="cpu")
    previews, latent = _watched_run(runtime, settings)
    if method == "none":
        assert previews == [None, None, None]
        return
    # the last step always has a preview; euler's last denoised is the sampled latent itself
    final = previews[-1]
    if method == "taesd":
        decoder = runtime.preview_decoder("sd1")
        assert decoder is not None
        expected = taesd_preview_image(latent, decoder, max_size=PREVIEW_SIZE)
        assert final.size == (64, 64)  # 8 x the 8x8 latent (TAESD decodes at full size)
    else:  # latent2rgb; auto is latent2rgb on a CPU (a TAESD pass there costs a few sampler steps)
        expected = latent_preview_image(latent, "sd1", max_size=PREVIEW_SIZE)
        assert final.size == (8, 8)
    assert np.abs(_pixels(final) - _pixels(expected)).max() <= 1


def test_taesd_without_its_file_previews_with_latent2rgb_and_says_why(installation: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(installation, tmp_path, "taesd", taesd=False)
    with caplog.at_level("WARNING"):
        previews, latent = _watched_run(Runtime(settings, device="cpu"), settings)
    assert previews[-1].size == (8, 8)
    assert "no TAESD decoder for sd1 latents in models/vae_approx/" in caplog.text


def test_a_large_latent_is_shrunk_before_the_taesd_decoder_runs() -> None:
    torch.manual_seed(1)
    decoder = TinyDecoder().eval()
    seen: list[tuple[int, ...]] = []
    decoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    latent = torch.randn(2, 4, 128, 96)  # a 1024x768 image
    image = _preview(latent, "sd1", "taesd", decoder)
    assert seen == [(1, 4, PREVIEW_SIZE // 8, PREVIEW_SIZE // 8 * 3 // 4)]  # 32x24: one item, area-shrunk
    assert image.size == (PREVIEW_SIZE * 3 // 4, PREVIEW_SIZE)


def test_an_unknown_preview_method_in_settings_is_named(installation: Path) -> None:
    runtime = Runtime(Settings.for_root(installation, extra={"preview_method": "vae"}), device="cpu")
    with pytest.raises(ValueError, match="preview_method .*'vae' is not one of auto, none, latent2rgb, taesd"):
        runtime.preview_method()
