"""Benchmark: ours vs diffusers on one GPU, same random SD1.5/SDXL-shaped weights (issue 16's table).

    python bench/gpu.py                    # one CUDA GPU + diffusers; about 3-4 minutes on an H100/H200
    python bench/gpu.py --skip-compile     # without the compiled rows (saves ~1.5 min)
    python bench/gpu.py --dry-run          # any machine: tiny shapes on the CPU, wall clock instead of
                                           # CUDA events; runs every code path to check the script

Rows (ms unless said; ratio = ours / diffusers, < 1 is faster):

* UNet CFG step (batch 2): SD1.5 64x64 latent fp16 and bf16, SDXL 128x128 fp16 and bf16;
* VAE decode and encode 1024x1024 (SD VAE, 128x128 latent), fp16 and bf16, plus ours channels_last
  (the policy keeps the VAE NCHW on CUDA: these rows check that choice);
* whole 512x512 image: 20 euler steps, cfg 7, decode (text embeddings given: no text encoder);
* process start to first 512x512 image from model files on disk (fresh processes; ours from one
  single-file fp16 checkpoint, diffusers from a save_pretrained folder; no text encoder either);
* ours only: SD1.5 step compiled (``sgm.nets.compile``, mode reduce-overhead: CUDA graphs) with its
  compile time, and SD1.5 step with fp8_e4m3fn / int8 weights (``sgm.nets.quant``) with the
  weight memory and the output's relative error against the fp16 model.

Both sides get the same weights: diffusers models are built with a fixed seed and ours are
converted from their state dicts (``sgm.io.convert``); each row also prints the largest
relative difference of the two outputs as a check that they compute the same thing. Timings
are the median of --iters CUDA-event-timed calls after --warmup calls. Not a test: it prints a
table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S = 300  # the whole script should finish in this on one H100/H200


@dataclass(frozen=True)
class Shapes:
    """Model and input sizes: the real ones, or tiny ones for --dry-run."""

    sd15_unet: dict[str, Any]
    sdxl_unet: dict[str, Any]
    vae: dict[str, Any]
    sd15_latent: int  # latent side for the SD1.5 step (64 = 512 px)
    sdxl_latent: int  # 128 = 1024 px
    vae_latent: int  # 128 = 1024 px decode
    image_latent: int  # whole image (64 = 512 px)
    text_tokens: int
    steps: int
    sdxl_pooled: int  # SDXL pooled text width (the rest of its 2816-wide vector is size embeddings)


SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)
FULL = Shapes(SD15_UNET, SDXL_UNET, SD_VAE, 64, 128, 128, 64, 77, 20, 1280)
TINY = Shapes(
    dict(SD15_UNET, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, layers_per_block=1, sample_size=8),
    dict(SDXL_UNET, block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4), cross_attention_dim=32,
         transformer_layers_per_block=(1, 1, 2), layers_per_block=1, projection_class_embeddings_input_dim=32 + 1536,
         sample_size=8),
    dict(SD_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=64),
    8, 8, 8, 8, 7, 3, 32)


def fail(message: str) -> int:
    print(f"bench/gpu.py: {message}", file=sys.stderr)
    return 2


class Timer:
    """Median milliseconds of ``fn`` over ``iters`` calls: CUDA events on a GPU, the wall clock on --dry-run."""

    def __init__(self, cuda: bool, warmup: int, iters: int) -> None:
        self.cuda, self.warmup, self.iters = cuda, warmup, iters

    def __call__(self, fn: Callable[[], Any]) -> float:
        import torch

        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)


# ---------------------------------------------------------------------------- models, same weights


def diffusers_unet(config: dict[str, Any], device: str, dtype: Any, seed: int = 0) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        return UNet2DConditionModel(**config).to(dtype).eval()


def diffusers_vae(config: dict[str, Any], device: str, dtype: Any, seed: int = 1) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoencoderKL(**config).to(dtype).eval()


def our_unet(peer: Any, family: str, device: str, dtype: Any) -> Any:
    from sgm.devices import prepare_module
    from sgm.io.checkpoints import build_unet, infer_unet_config
    from sgm.io.convert import unet_diffusers_to_original

    state_dict = unet_diffusers_to_original({k: v.detach() for k, v in peer.state_dict().items()})
    hints = {"num_heads": 8} if family == "sd1" else {"num_head_channels": 64}
    if family == "sdxl" and peer.config.block_out_channels[0] < 320:  # --dry-run's tiny model: 16-channel heads
        hints = {"num_head_channels": 16}
    config = infer_unet_config(state_dict, family, hints)
    return prepare_module(build_unet(state_dict, config, device=device, dtype=dtype), device, dtype)


def our_vae(peer: Any, device: str, dtype: Any) -> Any:
    from sgm.devices import prepare_module
    from sgm.io.checkpoints import build_vae, infer_vae_config
    from sgm.io.convert import vae_diffusers_to_original

    state_dict = vae_diffusers_to_original({k: v.detach() for k, v in peer.state_dict().items()})
    return prepare_module(build_vae(state_dict, infer_vae_config(state_dict), device=device, dtype=dtype),
                          device, dtype)


def rel_diff(a: Any, b: Any) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ---------------------------------------------------------------------------- rows


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, case: str, peer: float | None, ours: float, check: str = "", unit: str = "ms") -> None:
        fmt = (lambda v: f"{v:.1f} {unit}") if unit == "ms" else (lambda v: f"{v:.2f} {unit}")
        ratio = f"{ours / peer:.2f}" if peer else "-"
        self.rows.append((case, fmt(peer) if peer else "-", fmt(ours), ratio, check))
        print(f"  {case}: diffusers {self.rows[-1][1]}, ours {self.rows[-1][2]}, ratio {ratio} {check}", flush=True)

    def print(self) -> None:
        header = ("case", "diffusers", "ours", "ours/diffusers", "check")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
        print(line(header))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            print(line(row))


def unet_rows(table: Table, timer: Timer, shapes: Shapes, device: str, dtypes: list[Any], family: str) -> None:
    import torch

    from sgm.text.sdxl_conditioning import sdxl_vector

    config = shapes.sd15_unet if family == "sd1" else shapes.sdxl_unet
    side = shapes.sd15_latent if family == "sd1" else shapes.sdxl_latent
    label = "SD1.5" if family == "sd1" else "SDXL"
    for dtype in dtypes:
        peer = diffusers_unet(config, device, dtype)
        ours = our_unet(peer, family, device, dtype)
        generator = torch.Generator(device).manual_seed(0)
        x = torch.randn(2, 4, side, side, device=device, generator=generator).to(dtype)  # (2, 4, h, w): CFG batch
        context = torch.randn(2, shapes.text_tokens, config["cross_attention_dim"], device=device,
                              generator=generator).to(dtype)
        t = torch.tensor([500.0, 500.0], device=device)
        peer_kwargs: dict[str, Any] = {}
        y = None
        if family == "sdxl":
            pooled = torch.randn(2, shapes.sdxl_pooled, device=device, generator=generator).to(dtype)
            size = side * 8
            peer_kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled, "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device,
                                                                dtype=dtype)}
            y = sdxl_vector(pooled, original_size=(size, size), target_size=(size, size))
        x_ours = x.contiguous(memory_format=torch.channels_last) if device == "cuda" else x
        with torch.inference_mode():
            peer_out = peer(x, t, encoder_hidden_states=context, **peer_kwargs).sample
            ours_out = ours(x_ours, t, context, y)
            check = f"max rel diff {rel_diff(ours_out, peer_out):.1e}"
            peer_ms = timer(lambda: peer(x, t, encoder_hidden_states=context, **peer_kwargs))
            ours_ms = timer(lambda: ours(x_ours, t, context, y))
        table.add(f"{label} UNet, CFG batch 2, {side}x{side} latent, {_name(dtype)}", peer_ms, ours_ms, check)
        del peer, ours
        _free(device)


def vae_rows(table: Table, timer: Timer, shapes: Shapes, device: str, dtypes: list[Any]) -> None:
    """Decode and encode at 8x the latent side: ours as the device policy lays it out (NCHW on CUDA)
    and, as a check of that policy, ours channels_last."""
    import torch

    side = shapes.vae_latent
    for dtype in dtypes:
        peer = diffusers_vae(shapes.vae, device, dtype)
        ours = our_vae(peer, device, dtype)
        generator = torch.Generator(device).manual_seed(0)
        latent = torch.randn(1, 4, side, side, device=device, generator=generator).to(dtype)
        image = torch.rand(1, 3, side * 8, side * 8, device=device, generator=generator).to(dtype) * 2 - 1
        size = f"{side * 8}x{side * 8}, {_name(dtype)}"
        with torch.inference_mode():
            check = f"max rel diff {rel_diff(ours.decode(latent), peer.decode(latent).sample):.1e}"
            peer_ms = timer(lambda: peer.decode(latent))
            ours_ms = timer(lambda: ours.decode(latent))
            table.add(f"VAE decode {size}", peer_ms, ours_ms, check)
            check = f"max rel diff {rel_diff(ours.encode(image), peer.encode(image).latent_dist.mean):.1e}"
            peer_encode_ms = timer(lambda: peer.encode(image))
            table.add(f"VAE encode {size}", peer_encode_ms, timer(lambda: ours.encode(image)), check)
            if device == "cuda":
                ours.to(memory_format=torch.channels_last)
                table.add(f"VAE decode {size}, ours channels_last", peer_ms, timer(lambda: ours.decode(latent)))
                table.add(f"VAE encode {size}, ours channels_last", peer_encode_ms,
                          timer(lambda: ours.encode(image.contiguous(memory_format=torch.channels_last))))
        del peer, ours
        _free(device)


def whole_image_rows(table: Table, shapes: Shapes, device: str, dtype: Any, repeats: int) -> None:
    import torch

    peer_unet, peer_vae = diffusers_unet(shapes.sd15_unet, device, dtype), diffusers_vae(shapes.vae, device, dtype)
    ours_unet, ours_vae = our_unet(peer_unet, "sd1", device, dtype), our_vae(peer_vae, device, dtype)
    generator = torch.Generator(device).manual_seed(0)
    width = shapes.sd15_unet["cross_attention_dim"]
    positive = torch.randn(1, shapes.text_tokens, width, device=device, generator=generator).to(dtype)
    negative = torch.randn(1, shapes.text_tokens, width, device=device, generator=generator).to(dtype)
    side = shapes.image_latent
    peer_run = _diffusers_pipeline(peer_unet, peer_vae, positive, negative, side * 8, shapes.steps)
    ours_run = _our_pipeline(ours_unet, ours_vae, positive, negative, side, shapes.steps, device)
    peer_s = _best_seconds(peer_run, repeats, device)
    ours_s = _best_seconds(ours_run, repeats, device)
    table.add(f"{side * 8}x{side * 8}, {shapes.steps} steps euler, cfg 7, decode, warm, {_name(dtype)}",
              peer_s, ours_s, unit="s")
    del peer_unet, peer_vae, ours_unet, ours_vae
    _free(device)


def _diffusers_pipeline(unet: Any, vae: Any, positive: Any, negative: Any, size: int, steps: int) -> Callable[[], Any]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                   scheduler=EulerDiscreteScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return lambda: pipe(prompt_embeds=positive, negative_prompt_embeds=negative, height=size, width=size,
                        num_inference_steps=steps, guidance_scale=7.0, output_type="pt").images


def _our_pipeline(unet: Any, vae: Any, positive: Any, negative: Any, side: int, steps: int,
                  device: str) -> Callable[[], Any]:
    import torch

    from sgm.sampling.denoisers import model_sampling_for
    from sgm.sampling.guiders import GuidedDenoiser
    from sgm.sampling.sample import sample
    from sgm.sampling.schedules import compute_sigmas
    from sgm.text.conditioning import Condition

    model_sampling = model_sampling_for("eps")
    denoiser = GuidedDenoiser(unet, model_sampling, [Condition(context=positive)], [Condition(context=negative)],
                              cfg=7.0)
    sigmas = compute_sigmas("normal", model_sampling, steps).to(device)
    latent = torch.zeros(1, 4, side, side, device=device)

    def run() -> Any:
        with torch.inference_mode():
            samples = sample(denoiser, "euler", sigmas, latent, 0)
            return vae.decode(samples / 0.18215)

    return run


def _best_seconds(run: Callable[[], Any], repeats: int, device: str) -> float:
    import torch

    run()  # warm
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def first_image_rows(table: Table, shapes: Shapes, device: str, dtype: Any, dry_run: bool) -> None:
    """Fresh processes: import, load the model files, sample one 512x512 image, write a PNG."""
    from sgm.io.checkpoints import save_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        peer_unet, peer_vae = diffusers_unet(shapes.sd15_unet, "cpu", dtype), diffusers_vae(shapes.vae, "cpu", dtype)
        peer_unet.save_pretrained(Path(folder) / "unet", safe_serialization=True)
        peer_vae.save_pretrained(Path(folder) / "vae", safe_serialization=True)
        save_checkpoint(Path(folder) / "ours.safetensors", unet=our_unet(peer_unet, "sd1", "cpu", dtype),
                        vae=our_vae(peer_vae, "cpu", dtype))
        del peer_unet, peer_vae
        seconds = {}
        for side in ("diffusers", "ours"):
            command = [sys.executable, __file__, "--child-first-image", side, "--folder", folder, "--device", device,
                       "--dtype", _name(dtype)] + (["--dry-run"] if dry_run else [])
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            seconds[side] = time.perf_counter() - started
            if result.returncode != 0:
                raise RuntimeError(f"first-image child ({side}) failed: {result.stderr[-2000:]}")
    table.add(f"process start to first {shapes.image_latent * 8}px image from files (no text encoder), "
              f"{_name(dtype)}", seconds["diffusers"], seconds["ours"], unit="s")


def child_first_image(side: str, folder: Path, device: str, dtype_name: str, dry_run: bool) -> int:
    import torch

    shapes = TINY if dry_run else FULL
    dtype = getattr(torch, {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[dtype_name])
    generator = torch.Generator(device).manual_seed(0)
    width = shapes.sd15_unet["cross_attention_dim"]
    positive = torch.randn(1, shapes.text_tokens, width, device=device, generator=generator).to(dtype)
    negative = torch.randn(1, shapes.text_tokens, width, device=device, generator=generator).to(dtype)
    if side == "diffusers":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype).to(device)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype).to(device)
        images = _diffusers_pipeline(unet, vae, positive, negative, shapes.image_latent * 8, shapes.steps)()
    else:
        from sgm.devices import prepare_module
        from sgm.io.checkpoints import load_checkpoint

        checkpoint = load_checkpoint(folder / "ours.safetensors", device=device, dtype=dtype, load_text=False)
        unet, vae = prepare_module(checkpoint.unet, device, dtype), prepare_module(checkpoint.vae, device, dtype)
        images = _our_pipeline(unet, vae, positive, negative, shapes.image_latent, shapes.steps, device)()
    from PIL import Image

    pixels = ((images[0].float().clamp(-1, 1) + 1) * 127.5 if side == "ours" else images[0].float() * 255)
    Image.fromarray(pixels.round().byte().permute(1, 2, 0).cpu().numpy()).save(folder / f"{side}.png")
    return 0


def _sd15_step_inputs(shapes: Any, device: str, dtype: Any) -> tuple[Any, Any, Any]:
    """A CFG batch of 2 for the SD1.5-shaped UNet: latent (channels_last on CUDA), context, timesteps."""
    import torch

    side = shapes.sd15_latent
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 4, side, side, device=device, generator=generator).to(dtype)
    if device == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    context = torch.randn(2, shapes.text_tokens, shapes.sd15_unet["cross_attention_dim"], device=device,
                          generator=generator).to(dtype)
    return x, context, torch.tensor([500.0, 500.0], device=device)


def compiled_rows(table: Table, timer: Timer, shapes: Shapes, device: str, dtype: Any, backend: str) -> None:
    import torch

    from sgm.nets.compile import CompileOptions, compile_model, compiled_forward

    peer = diffusers_unet(shapes.sd15_unet, device, dtype)
    ours = our_unet(peer, "sd1", device, dtype)
    del peer
    x, context, t = _sd15_step_inputs(shapes, device, dtype)
    for mode in ("reduce-overhead",):
        compiled = compile_model(ours, CompileOptions(mode=mode, backend=backend,
                                                      cache_dir=Path(tempfile.gettempdir()) / "latentflow-bench-compile"))
        with torch.inference_mode():
            started = time.perf_counter()
            out = compiled(x, t, context)
            if device == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - started
            if compiled_forward(compiled).fallback_reason:
                raise RuntimeError(compiled_forward(compiled).fallback_reason)
            eager_ms = timer(lambda: ours(x, t, context))
            check = f"compile {compile_s:.0f} s, rel diff vs eager {rel_diff(out, ours(x, t, context)):.1e}"
            compiled_ms = timer(lambda: compiled(x, t, context))
        table.add(f"SD1.5 UNet step compiled ({mode}) vs ours eager, {_name(dtype)} [peer column: ours eager]",
                  eager_ms, compiled_ms, check)
    del ours, compiled
    _free(device)


def quantized_rows(table: Table, timer: Timer, shapes: Shapes, device: str, dtype: Any) -> None:
    import torch

    from sgm.nets.quant import quantize_module, weight_bytes

    peer = diffusers_unet(shapes.sd15_unet, device, dtype)
    base = our_unet(peer, "sd1", device, dtype)
    del peer
    x, context, t = _sd15_step_inputs(shapes, device, dtype)
    with torch.inference_mode():
        reference = base(x, t, context)
        base_ms = timer(lambda: base(x, t, context))
    base_bytes = weight_bytes(base)
    for weight_dtype in ("fp8_e4m3fn", "int8"):
        quantized = quantize_module(copy.deepcopy(base), weight_dtype)
        with torch.inference_mode():
            error = rel_diff(quantized(x, t, context), reference)
            ms = timer(lambda: quantized(x, t, context))
        table.add(f"SD1.5 UNet step, {weight_dtype} weights, {_name(dtype)} compute [peer column: ours "
                  f"{_name(dtype)} weights]", base_ms, ms,
                  f"weights {weight_bytes(quantized) / 2**30:.2f} vs {base_bytes / 2**30:.2f} GiB, "
                  f"rel err {error:.1e}")
        del quantized
        _free(device)


def _name(dtype: Any) -> str:
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}[str(dtype)]


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, wall clock (checks the script)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled rows")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--child-first-image", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_first_image:
        return child_first_image(args.child_first_image, args.folder, args.device, args.dtype, args.dry_run)

    try:
        import diffusers
    except ImportError:
        return fail("needs diffusers for the peer columns (pip install diffusers); nothing was measured")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        return fail(f"needs a CUDA GPU (torch {torch.__version__} sees none); nothing was measured. "
                    "Run it with --dry-run to check the script on the CPU with tiny shapes")
    started = time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    shapes = TINY if args.dry_run else FULL
    timer = Timer(cuda=device == "cuda", warmup=1 if args.dry_run else args.warmup,
                  iters=2 if args.dry_run else args.iters)
    half = [torch.float16, torch.bfloat16]
    name = "CPU (dry run, tiny shapes, wall clock)" if args.dry_run else torch.cuda.get_device_name()
    print(f"bench/gpu.py on {name}: torch {torch.__version__}, diffusers {diffusers.__version__}", flush=True)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    table = Table()
    unet_rows(table, timer, shapes, device, half, "sd1")
    unet_rows(table, timer, shapes, device, half, "sdxl")
    vae_rows(table, timer, shapes, device, half)
    whole_image_rows(table, shapes, device, torch.float16, repeats=1 if args.dry_run else 3)
    first_image_rows(table, shapes, device, torch.float16, args.dry_run)
    quantized_rows(table, timer, shapes, device, torch.float16)
    if not args.skip_compile:
        compiled_rows(table, timer, shapes, device, torch.float16, backend="eager" if args.dry_run else "inductor")
    elapsed = time.perf_counter() - started
    print()
    table.print()
    print(f"\n{elapsed:.0f} s in all (budget {BUDGET_S} s)" + (" -- over budget" if elapsed > BUDGET_S else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
