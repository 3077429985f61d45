"""Decoder fine-tuning on latents a diffusion model re-samples (``train vae --sampled-latents``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sgm.nets.autoencoder import AutoencoderKL
from sgm.text.tiny_text import TinyTextConfig, TinyTextEncoder, vocabulary_of
from sgm.training.diffusion import DiffusionConfig, DiffusionTask
from sgm.training.sampled_latents import SampledLatents, SampledLatentsConfig
from sgm.training.vae import VAETask
from sgm.nets.unet import UNetModel

CAPTIONS = ["a small red circle on the left", "a large blue square on the right"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16)


def _model_file(tmp_path, vae: AutoencoderKL, name: str = "m.safetensors") -> str:
    from sgm.tools.train_diffusion import export_model

    torch.manual_seed(1)
    text = TinyTextEncoder(TinyTextConfig(vocabulary_of(CAPTIONS), max_length=8, width=32, layers=1, heads=1))
    unet = UNetModel(4, 32, 4, 1, (1,), (1,), num_head_channels=32, context_dim=32)
    task = DiffusionTask(unet, vae, text, DiffusionConfig(scale_factor=0.5), latent_size=8)
    return str(export_model(task, str(tmp_path / name), family="tiny-shapes", training={}))


def test_resampling_is_seeded_starts_in_range_and_moves_latents_with_the_noise_level(tmp_path) -> None:
    path = _model_file(tmp_path, _vae())
    latents = torch.randn(2, 4, 8, 8)

    def resample(low: float, high: float, seed: int = 0, captions=CAPTIONS) -> torch.Tensor:
        sampled = SampledLatents(path, SampledLatentsConfig(min_sigma=low, max_sigma=high, scheduler="karras"))
        assert all(low <= float(sampled.sigmas[i]) <= high for i in sampled.starts)
        return sampled(latents, list(captions), torch.Generator().manual_seed(seed))

    first = resample(0.3, 4.0)
    assert first.shape == latents.shape and torch.isfinite(first).all()
    assert torch.equal(first, resample(0.3, 4.0))  # same seed, same latents
    assert not torch.equal(first, resample(0.3, 4.0, seed=1))
    assert not torch.allclose(first, resample(0.3, 4.0, captions=CAPTIONS[::-1]))  # the captions steer it
    # From the schedule's last sigma (0.029) the latents barely move; from 2..6 they are redrawn.
    low = (resample(0.02, 0.05) - latents).abs().mean()
    high = (resample(2.0, 6.0) - latents).abs().mean()
    assert low < 0.2 and high > 20 * low  # measured: 0.08 and 10.3


def test_a_range_without_schedule_sigmas_is_refused_with_the_schedule(tmp_path) -> None:
    path = _model_file(tmp_path, _vae())
    with pytest.raises(ValueError, match=r"no sigma of the 20-step karras schedule lies in \[100.0, 200.0\]"):
        SampledLatents(path, SampledLatentsConfig(min_sigma=100.0, max_sigma=200.0, scheduler="karras"))
    # The default follows 'sample' (sgm_uniform), whose last sigma before 0 is 0.225 on SD's schedule.
    assert float(SampledLatents(path, SampledLatentsConfig(min_sigma=0.2, max_sigma=0.25)).sigmas[-2]) > 0.2
    with pytest.raises(ValueError, match="fraction"):
        SampledLatentsConfig(fraction=0.0)


class _Zeros:
    """Stands in for SampledLatents: records its inputs and returns zero latents."""

    config = SimpleNamespace(fraction=0.5)

    def __init__(self) -> None:
        self.captions: list[str] = []

    def __call__(self, latents, captions, generator):
        self.captions = captions
        return torch.zeros_like(latents)


def test_vae_task_decodes_the_resampled_share_of_the_batch_and_trains_only_the_decoder() -> None:
    vae = _vae()
    with pytest.raises(ValueError, match="--decoder-only"):
        VAETask(vae, sampled_latents=_Zeros())  # type: ignore[arg-type]
    stand_in = _Zeros()
    task = VAETask(vae, decoder_only=True, sampled_latents=stand_in)  # type: ignore[arg-type]
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    captions = [f"caption {i}" for i in range(4)]
    loss, metrics = task.loss({"image": images, "caption": captions}, torch.Generator().manual_seed(0))
    assert stand_in.captions == captions[:2]  # half the batch, with its own captions
    with torch.no_grad():
        expected = vae.decode(torch.zeros(2, 4, 8, 8)).float()
    assert torch.allclose(task._last_reconstruction[:2], expected, atol=1e-5)
    assert "psnr_sampled" in metrics
    loss.backward()
    assert all(p.grad is None for p in vae.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.decoder.parameters())


def _train_vae(init: str, model: str, out, *extra: str) -> int:
    import main

    return main.main(["train", "vae", "--init", init, "--decoder-only", "--sampled-latents", model,
                      "--sampled-sigma", "0.3,4", "--out", str(out), "--steps", "2", "--batch-size", "2",
                      "--image-size", "16", "--ch-mult", "1,1", "--log-every", "1", "--threads", "1", *extra])


def test_train_vae_with_sampled_latents_runs_and_checks_the_encoder(tmp_path) -> None:
    model = _model_file(tmp_path, _vae())
    assert _train_vae(model, model, tmp_path / "run") == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1, 2] and all("psnr_sampled" in entry for entry in logged)
    other = _model_file(tmp_path, _vae(seed=5), "other.safetensors")
    with pytest.raises(SystemExit, match="VAE encoder differs"):
        _train_vae(other, model, tmp_path / "run2")
    with pytest.raises(SystemExit, match="unknown scheduler 'karas'"):
        _train_vae(model, model, tmp_path / "run3", "--sampled-scheduler", "karas")
