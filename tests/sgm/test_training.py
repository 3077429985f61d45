"""Training: tiny runs lower the loss, and a resumed run reaches the uninterrupted state."""

from __future__ import annotations

import json

import pytest
import torch

from sgm.nets.autoencoder import AutoencoderKL
from sgm.data import ShapesDataset
from sgm.data.datasets import LatentCacheDataset
from sgm.text.tiny_text import TinyTextConfig, TinyTextEncoder, vocabulary_of
from sgm.training.common import EMA, Precision, TrainSettings, learning_rate
from sgm.training.diffusion import DiffusionConfig, DiffusionTask, loss_weight
from sgm.training.loop import EarlyStop, load_training_checkpoint, train
from sgm.training.vae import VAETask, psnr
from sgm.nets.unet import UNetModel


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, embed_dim=4, resolution=16)


def _tiny_diffusion_task(vae: AutoencoderKL, *, prediction: str = "eps", weighting: str = "min-snr") -> DiffusionTask:
    torch.manual_seed(1)
    vocab = vocabulary_of(["a small red circle on the left", "a large blue square on the right"])
    text = TinyTextEncoder(TinyTextConfig(vocab, max_length=8, width=32, layers=1, heads=1))
    unet = UNetModel(4, 32, 4, 1, (1,), (1,), num_head_channels=32, context_dim=32)
    config = DiffusionConfig(prediction=prediction, weighting=weighting, scale_factor=0.5)  # type: ignore[arg-type]
    return DiffusionTask(unet, vae, text, config, latent_size=8)


def _latents(vae: AutoencoderKL) -> LatentCacheDataset:
    images = ShapesDataset(16, seed=0)
    return LatentCacheDataset.build(images, vae.encode_posterior, 16, batch_size=8)


def _states(task) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.clone() for m, module in task.modules().items() for k, v in module.state_dict().items()}


def test_learning_rate_warms_up_then_follows_the_decay() -> None:
    settings = TrainSettings(steps=110, lr=1e-3, warmup_steps=10, decay="cosine")
    assert learning_rate(settings, 0) == pytest.approx(1e-4)
    assert learning_rate(settings, 9) == pytest.approx(1e-3)
    assert learning_rate(settings, 110) == pytest.approx(1e-4)  # cosine floor: 10 %
    with pytest.raises(ValueError, match="cosine"):
        learning_rate(TrainSettings(warmup_steps=0, decay="linear"), 5)


def test_ema_ramps_up_and_averages() -> None:
    parameter = torch.nn.Parameter(torch.zeros(3))
    ema = EMA(iter([("p", parameter)]), decay=0.9)
    with torch.no_grad():
        parameter.fill_(1.0)
    ema.update(iter([("p", parameter)]))  # decay min(0.9, 2/11)
    assert torch.allclose(ema.shadow["p"], torch.full((3,), 1 - 2 / 11))
    assert parameter.data.tolist() == [1.0, 1.0, 1.0]  # the live weights are untouched


def test_vae_training_lowers_the_reconstruction_loss(tmp_path) -> None:
    task = VAETask(_tiny_vae())
    data = ShapesDataset(16, seed=0)
    batch = {"image": torch.stack([data[i]["image"] for i in range(8)])}
    with torch.no_grad():
        before = float(task.loss(batch, torch.Generator().manual_seed(0))[0])
    settings = TrainSettings(steps=20, batch_size=8, lr=3e-3, warmup_steps=2, ema_decay=0, log_every=10,
                             checkpoint_every=0)
    result = train(task, data, settings, tmp_path)
    with torch.no_grad():
        after = float(task.loss(batch, torch.Generator().manual_seed(0))[0])
    assert after < 0.92 * before, (before, after)  # measured: 1.55 -> 1.41
    log = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20] and "psnr" in log[-1]


def test_diffusion_training_lowers_the_loss_on_a_fixed_batch(tmp_path) -> None:
    vae = _tiny_vae()
    task = _tiny_diffusion_task(vae)
    cache = _latents(vae)
    batch = {"latent_mean": cache.means[:8], "latent_logvar": cache.logvars[:8], "caption": cache.captions[:8]}

    def fixed_loss() -> float:
        with torch.no_grad():
            losses = [float(task.loss(batch, torch.Generator().manual_seed(s))[0]) for s in range(4)]
        return sum(losses) / len(losses)

    before = fixed_loss()
    train(task, cache, TrainSettings(steps=25, batch_size=8, lr=2e-3, warmup_steps=2, ema_decay=0,
                                     checkpoint_every=0), tmp_path)
    assert fixed_loss() < 0.8 * before


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
def test_a_resumed_run_reaches_the_uninterrupted_state(tmp_path, precision: Precision) -> None:
    vae = _tiny_vae()
    cache = _latents(vae)
    settings = TrainSettings(steps=4, batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9,
                             checkpoint_every=2, log_every=1, precision=precision, seed=3)

    straight = _tiny_diffusion_task(vae, prediction="v", weighting="edm")
    train(straight, cache, settings, tmp_path / "straight")

    def stop_at_two(progress) -> None:
        if progress.step == 2:
            raise EarlyStop

    interrupted = _tiny_diffusion_task(vae, prediction="v", weighting="edm")
    first = train(interrupted, cache, settings, tmp_path / "resumed", on_progress=stop_at_two)
    assert first.step == 2
    resumed = _tiny_diffusion_task(vae, prediction="v", weighting="edm")  # a fresh process, in effect
    assert train(resumed, cache, settings, tmp_path / "resumed").step == 4

    expected, actual = _states(straight), _states(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    ema_a = load_training_checkpoint(tmp_path / "straight" / "checkpoint-latest.pt")["ema"]["shadow"]
    ema_b = load_training_checkpoint(tmp_path / "resumed" / "checkpoint-latest.pt")["ema"]["shadow"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # ... and the weights did change: the test would pass vacuously otherwise.
    assert not torch.equal(expected["unet.out.2.weight"], _states(_tiny_diffusion_task(vae))["unet.out.2.weight"])


def test_loss_weights_follow_min_snr_and_edm() -> None:
    alpha_bar = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, 1/99
    eps = loss_weight(DiffusionConfig(prediction="eps", min_snr_gamma=5.0), alpha_bar)
    assert torch.allclose(eps, torch.tensor([5 / 99, 1.0, 1.0]), rtol=1e-4)
    v = loss_weight(DiffusionConfig(prediction="v", min_snr_gamma=5.0), alpha_bar)
    assert torch.allclose(v, torch.tensor([5 / 100, 0.5, (1 / 99) / (1 / 99 + 1)]), rtol=1e-4)
    # EDM with sigma_data = 1 on a v objective is exactly uniform (lambda * sigma^2 / (1 + sigma^2) = 1).
    edm_v = loss_weight(DiffusionConfig(prediction="v", weighting="edm"), alpha_bar)
    assert torch.allclose(edm_v, torch.ones(3), rtol=1e-4)
    # A floor keeps the pure-noise end weighted: x0 weight max(min(SNR, 5), 0.5).
    floored = loss_weight(DiffusionConfig(prediction="v", min_snr_gamma=5.0, min_snr_floor=0.5), alpha_bar)
    assert torch.allclose(floored, torch.tensor([5 / 100, 0.5, 0.5 / (1 / 99 + 1)]), rtol=1e-4)


def test_edge_weights_mark_outlines_only() -> None:
    from sgm.training.vae import edge_weights

    images = -torch.ones(1, 3, 12, 12)
    images[:, :, 4:8, 4:8] = 1.0  # a 4 x 4 square
    weights = edge_weights(images, 5.0)[0, 0]
    assert weights.shape == (12, 12) and set(weights.unique().tolist()) == {1.0, 6.0}
    assert weights[0, 0] == 1.0 and weights[11, 11] == 1.0  # flat background
    assert weights[4, 4] == 6.0 and weights[3, 5] == 6.0 and weights[8, 5] == 6.0  # on and next to the outline
    assert weights[1, 1] == 1.0 and weights[10, 6] == 1.0  # two pixels away


def test_psnr_of_identical_and_offset_images() -> None:
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(images + 0.02, images).mean().item() == pytest.approx(40.0, abs=0.01)  # 0.01 on [0, 1]


def test_trained_lora_saved_in_kohya_layout_reloads_to_the_same_outputs(tmp_path) -> None:
    from sgm.io.lora import match_lora, patched, read_lora
    from sgm.training.lora import LoRAAdapters, LoRATask, attention_projection_names, save_lora

    vae = _tiny_vae()
    base = _tiny_diffusion_task(vae)  # provides a tiny UNet and a frozen text encoder
    unet, text = base.unet, base.text_encoder
    torch.manual_seed(4)
    adapters = LoRAAdapters(unet, rank=2, alpha=2.0)
    assert adapters.names == attention_projection_names(unet) and len(adapters.names) == 4 * 8  # in, mid, 2 out blocks x 8
    task = LoRATask(unet, vae, lambda captions: text(base.tokenizer.encode(captions)), base.config, adapters,
                    latent_size=8)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    train(task, _latents(vae), TrainSettings(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, ema_decay=0,
                                             checkpoint_every=0), tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # the base stays frozen

    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([10, 700])
    context = torch.randn(2, 8, 32, generator=generator)
    with torch.no_grad():
        trained = unet(x, t, context)
    path = save_lora(tmp_path / "adapter.safetensors", adapters, unet)
    adapters.remove()
    with torch.no_grad():
        plain = unet(x, t, context)
    assert not torch.allclose(plain, trained, atol=1e-4)  # the adapters did learn something

    state = read_lora(path)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in state
    match = match_lora(state, unet)
    assert match.unmatched == () and len(match.targets) == len(adapters.names)
    with patched({"unet": unet}, [(match.targets, 1.0)]), torch.no_grad():
        reloaded = unet(x, t, context)
    assert torch.allclose(reloaded, trained, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(unet(x, t, context), plain)  # unpatched again, bit for bit


def test_word_tokenizer_frames_words_and_marks_unknown_ones(caplog) -> None:
    from sgm.text.tiny_text import BOS, EOS, PAD, UNK, WordTokenizer

    tokenizer = WordTokenizer(("a", "red", "circle"), max_length=6)
    with caplog.at_level("WARNING"):
        tokens = tokenizer.encode(["A red, circle!", "a purple circle", ""])
    assert tokens.tolist() == [[BOS, 4, 5, 6, EOS, PAD], [BOS, 4, UNK, 6, EOS, PAD], [BOS, EOS, PAD, PAD, PAD, PAD]]
    assert "purple" in caplog.text


def test_exported_model_loads_through_load_checkpoint(tmp_path) -> None:
    from sgm.io.checkpoints import load_checkpoint
    from sgm.tools.train_diffusion import export_model

    task = _tiny_diffusion_task(_tiny_vae())
    path = export_model(task, str(tmp_path / "tiny.safetensors"), family="tiny-shapes", training={"steps": 0})
    loaded = load_checkpoint(path, dtype=torch.float32)
    assert (loaded.family, loaded.prediction, loaded.scale_factor) == ("tiny-shapes", "eps", 0.5)
    prompts = ["a small red circle on the left", ""]
    context, pooled = loaded.encode_text(prompts, clip_skip=2)  # unknown kwargs are ignored
    with torch.no_grad():
        expected = task.encode_captions(prompts)
    assert pooled is None and torch.allclose(context, expected)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.allclose(loaded.unet(x, t, context), task.unet(x, t, expected), atol=1e-6)


def test_zero_terminal_snr_model_exports_its_schedule_and_samples_on_it(tmp_path) -> None:
    """A v + zero-terminal-SNR run: the file says so, and every consumer samples on that schedule."""
    from sgm.io.checkpoints import load_checkpoint
    from sgm.models import DiffusionModel
    from sgm.tools.train_diffusion import export_model

    vae = _tiny_vae()
    base = _tiny_diffusion_task(vae, prediction="v", weighting="uniform")
    task = DiffusionTask(base.unet, vae, base.text_encoder, latent_size=8, config=DiffusionConfig(
        prediction="v", weighting="uniform", scale_factor=0.5, zero_terminal_snr=True))
    # Training noise levels: the last timestep is (numerically) pure noise, SD's keeps 0.068 of x0.
    assert float(task.alphas_cumprod[-1].sqrt()) < 1e-3
    assert float(base.alphas_cumprod[-1].sqrt()) > 0.06
    path = export_model(task, str(tmp_path / "ztsnr.safetensors"), family="tiny-shapes", training={})
    loaded = load_checkpoint(path, dtype=torch.float32)
    assert loaded.prediction == "v" and loaded.zero_terminal_snr
    sampling = loaded.model_sampling()
    assert sampling.zero_terminal_snr and sampling.sigma_max > 1000
    assert torch.allclose(sampling.sigmas, task.sampling.sigmas)
    assert DiffusionModel.from_checkpoint(loaded).model_sampling.sigma_max == sampling.sigma_max


def test_zero_terminal_snr_with_eps_prediction_is_refused_by_the_loader(tmp_path) -> None:
    from sgm.io.checkpoints import CheckpointError, load_checkpoint
    from sgm.tools.train_diffusion import export_model

    task = _tiny_diffusion_task(_tiny_vae())  # eps
    task.config = DiffusionConfig(prediction="eps", scale_factor=0.5, zero_terminal_snr=True)  # bypasses the check
    path = export_model(task, str(tmp_path / "bad.safetensors"), family="tiny-shapes", training={})
    with pytest.raises(CheckpointError, match="zero_terminal_snr.*v-prediction"):
        load_checkpoint(path, dtype=torch.float32)


def test_a_model_file_can_supply_the_vae_of_a_diffusion_run(tmp_path) -> None:
    from sgm.tools.train_common import load_vae_from_run
    from sgm.tools.train_diffusion import export_model

    task = _tiny_diffusion_task(_tiny_vae())
    path = export_model(task, str(tmp_path / "m.safetensors"), family="tiny-shapes", training={})
    vae = load_vae_from_run(str(path))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(vae.encode(images), task.vae.encode(images), atol=1e-6)


def test_timestep_bias_redraws_its_share_of_the_batch_from_the_range() -> None:
    from sgm.sampling.denoisers import DiscreteModelSampling
    from sgm.training.diffusion import sample_timesteps

    sampling = DiscreteModelSampling()
    generator = torch.Generator().manual_seed(0)

    def share_below_50(fraction: float) -> float:
        config = DiffusionConfig(timestep_bias_fraction=fraction, timestep_bias_range=(0, 50))
        t = sample_timesteps(config, sampling, 4000, generator)
        assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) < 1000
        return float((t < 50).float().mean())

    assert share_below_50(0.0) < 0.07  # uniform: 5 %
    assert share_below_50(1.0) == 1.0
    assert 0.48 < share_below_50(0.5) < 0.57  # half redrawn + 5 % of the rest
    with pytest.raises(ValueError, match="timestep_bias_fraction"):
        DiffusionConfig(timestep_bias_fraction=1.5)
    with pytest.raises(ValueError, match="LOW < HIGH"):
        DiffusionConfig(timestep_bias_fraction=0.5, timestep_bias_range=(50, 50))
    with pytest.raises(ValueError, match="exceeds the schedule"):
        sample_timesteps(DiffusionConfig(timestep_bias_fraction=0.5, timestep_bias_range=(0, 1200)),
                         sampling, 4, generator)


def _fine_tune(init: str, out, *extra: str) -> int:
    import main

    return main.main(["train", "diffusion", "--init", init, "--out", str(out), "--steps", "2", "--batch-size", "2",
                      "--image-size", "16", "--warmup-steps", "0", "--ema-decay", "0", "--threads", "1",
                      "--log-every", "1", "--export", str(out / "tuned.safetensors"), *extra])


def test_train_diffusion_init_fine_tunes_a_model_file_and_keeps_its_schedule(tmp_path) -> None:
    from sgm.io.checkpoints import load_checkpoint, read_state_dict
    from sgm.tools.train_diffusion import export_model

    vae = _tiny_vae()
    base = _tiny_diffusion_task(vae, prediction="v", weighting="uniform")
    base.config = DiffusionConfig(prediction="v", weighting="uniform", scale_factor=0.5, zero_terminal_snr=True)
    init = str(export_model(base, str(tmp_path / "base.safetensors"), family="tiny-shapes", training={}))
    original, _ = read_state_dict(init)

    # lr 0: the fine-tune starts from the file's weights exactly (not a fresh UNet of the default size).
    assert _fine_tune(init, tmp_path / "frozen", "--lr", "0") == 0
    frozen, _ = read_state_dict(tmp_path / "frozen" / "tuned.safetensors")
    assert frozen.keys() == original.keys()
    assert all(torch.equal(frozen[k], original[k]) for k in original)

    assert _fine_tune(init, tmp_path / "tuned", "--lr", "1e-3", "--timestep-bias-fraction", "0.5",
                      "--timestep-bias-range", "0,100") == 0
    tuned_path = tmp_path / "tuned" / "tuned.safetensors"
    tuned, metadata = read_state_dict(tuned_path)
    unet_keys = [k for k in original if k.startswith("model.diffusion_model.")]
    assert any(not torch.equal(tuned[k], original[k]) for k in unet_keys)
    assert all(torch.equal(tuned[k], original[k]) for k in original if k.startswith("first_stage_model."))
    loaded = load_checkpoint(tuned_path, dtype=torch.float32)
    assert (loaded.prediction, loaded.zero_terminal_snr, loaded.scale_factor) == ("v", True, 0.5)
    assert json.loads(metadata["latentflow.config"])["training"]["init"] == init

    with pytest.raises(SystemExit, match="contradicts"):
        _fine_tune(init, tmp_path / "wrong", "--prediction", "eps")
