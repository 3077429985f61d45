"""One SD1.5-size UNet step and one 512x512 VAE decode: ours fp32, ours default policy, diffusers fp32.

    python bench/unet_step.py [--quick] [--repeats N] [--skip-load]

Random weights (no downloads). Ours and diffusers share the same weights (copied through our
key mapping), and the table reports the relative difference of their outputs as a sanity check.
"Default" is ``sgm.devices`` policy: bf16 + channels_last on a CPU with AMX/AVX512-BF16, fp32
otherwise, fp16 on CUDA. Peak memory is the largest resident-set growth during the timed calls
(sampled every 2 ms), i.e. activations and workspace on top of the weights.

The load section writes an SD1.5-size fp16 checkpoint (UNet + VAE, random weights) to a
temporary folder and loads it in a fresh process, reporting peak RSS against the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sgm.autoencoder import AutoencoderKL  # noqa: E402
from sgm.convert import unet_diffusers_to_original, vae_diffusers_to_original  # noqa: E402
from sgm.devices import default_device, default_dtype, prepare_module, use_channels_last  # noqa: E402
from sgm.unet import UNetModel  # noqa: E402

SD15_UNET = dict(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2,
                 attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768)
SD_VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Largest RSS growth over the baseline while the block runs (a 2 ms sampling thread)."""

    def __enter__(self) -> "PeakRSS":
        self.baseline = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, float, int, torch.Tensor]:
    """(median wall s, median process CPU s, peak RSS growth, output) over ``repeats`` calls after a warm-up.

    CPU time (all threads of this process) is reported beside wall time because on a shared
    machine wall time mostly measures the neighbours; ratios of CPU time stay meaningful.
    """
    with torch.inference_mode():
        out = fn()  # warm-up: oneDNN primitive creation, allocator growth
        walls, cpus = [], []
        with PeakRSS() as peak:
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                out = fn()
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus), peak.growth, out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def bench_unet(repeats: int, device: torch.device) -> list[tuple]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    reference = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval().to(device)
    with torch.device("meta"):
        ours = UNetModel(**SD15_UNET)
    ours.load_state_dict({k: v.clone() for k, v in unet_diffusers_to_original(reference.state_dict()).items()}, assign=True)
    ours.eval().to(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=generator).to(device)  # batch 2 as with CFG
    t = torch.tensor([999.0, 999.0], device=device)
    context = torch.randn(2, 77, 768, generator=generator).to(device)

    rows = []
    sec, cpu, mem, expected = timed(lambda: reference(x, t, context).sample, repeats)
    rows.append(("UNet step", "diffusers fp32", sec, cpu, mem, 0.0))
    sec, cpu, mem, out = timed(lambda: ours(x, t, context), repeats)
    rows.append(("UNet step", "ours fp32", sec, cpu, mem, rel(out, expected)))
    dtype = default_dtype(device)
    prepare_module(ours, device, dtype)
    x_policy = x.to(memory_format=torch.channels_last) if use_channels_last(device, dtype) else x
    sec, cpu, mem, out = timed(lambda: ours(x_policy, t, context), repeats)
    rows.append(("UNet step", f"ours default ({_policy(device, dtype)})", sec, cpu, mem, rel(out, expected)))
    return rows


def bench_vae(repeats: int, device: torch.device) -> list[tuple]:
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(0)
    reference = DiffusersVAE(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4).eval().to(device)
    with torch.device("meta"):
        ours = AutoencoderKL(**SD_VAE)
    ours.load_state_dict({k: v.clone() for k, v in vae_diffusers_to_original(reference.state_dict()).items()}, assign=True)
    ours.eval().to(device)
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)  # -> 512x512

    rows = []
    sec, cpu, mem, expected = timed(lambda: reference.decode(latents).sample, repeats)
    rows.append(("VAE decode 512", "diffusers fp32", sec, cpu, mem, 0.0))
    sec, cpu, mem, out = timed(lambda: ours.decode(latents), repeats)
    rows.append(("VAE decode 512", "ours fp32", sec, cpu, mem, rel(out, expected)))
    dtype = default_dtype(device)
    prepare_module(ours, device, dtype)
    z = latents.to(memory_format=torch.channels_last) if use_channels_last(device, dtype) else latents
    sec, cpu, mem, out = timed(lambda: ours.decode(z), repeats)
    rows.append(("VAE decode 512", f"ours default ({_policy(device, dtype)})", sec, cpu, mem, rel(out, expected)))
    return rows


def _policy(device: torch.device, dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return name + (" + channels_last" if use_channels_last(device, dtype) else "")


def bench_load() -> dict:
    """Write an SD1.5-size fp16 file, then load it in a fresh process and report its peak RSS."""
    from sgm.checkpoints import save_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sd15-random.safetensors"
        torch.manual_seed(0)
        with torch.device("meta"):
            unet, vae = UNetModel(**SD15_UNET), AutoencoderKL(**SD_VAE)
        # Real-valued weights without a full fp32 copy in memory: fill fp16 tensors directly.
        for module in (unet, vae):
            module.to_empty(device="cpu").to(torch.float16)
            for param in module.parameters():
                param.data.normal_(0, 0.02)
        save_checkpoint(path, unet=unet, vae=vae)
        del unet, vae
        size = path.stat().st_size
        child = subprocess.run([sys.executable, __file__, "--load-child", str(path)], capture_output=True, text=True,
                               check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    result["file_bytes"] = size
    return result


def load_child(path: str) -> None:
    import resource

    from sgm.checkpoints import load_checkpoint

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    checkpoint = load_checkpoint(path, dtype=torch.float16)
    load_s = time.perf_counter() - start
    after_load = rss_bytes()
    # Touch every weight, as a first denoising step would: all pages become resident.
    total = sum(float(p.float().sum()) for m in (checkpoint.unet, checkpoint.vae) for p in m.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "after_load": after_load, "peak_touched": peak, "load_s": load_s,
                      "checksum": total}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of three")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--skip-load", action="store_true", help="skip the checkpoint-load memory measurement")
    parser.add_argument("--skip-vae", action="store_true")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        load_child(args.load_child)
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    device = default_device()
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {repeats}")
    rows = bench_unet(repeats, device)
    if not args.skip_vae:
        rows += bench_vae(repeats, device)
    print(f"\n{'case':<16}{'variant':<38}{'wall s':>8}{'x diff.':>9}{'CPU s':>8}{'x diff.':>9}{'peak MB':>9}{'rel diff':>10}")
    baseline: dict[str, tuple[float, float]] = {}
    for case, variant, sec, cpu, mem, diff in rows:
        base_wall, base_cpu = baseline.setdefault(case, (sec, cpu))
        print(f"{case:<16}{variant:<38}{sec:>8.2f}{sec / base_wall:>9.2f}{cpu:>8.2f}{cpu / base_cpu:>9.2f}"
              f"{mem / 2**20:>9.0f}{diff:>10.1e}")
    if not args.skip_load:
        load = bench_load()
        size = load["file_bytes"]
        print(f"\nload SD1.5-size fp16 file ({size / 2**30:.2f} GiB): {load['load_s']:.2f} s; "
              f"RSS after load {load['after_load'] / 2**30:.2f} GiB ({load['after_load'] / size:.2f}x file), "
              f"peak with every weight touched {load['peak_touched'] / 2**30:.2f} GiB ({load['peak_touched'] / size:.2f}x file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
