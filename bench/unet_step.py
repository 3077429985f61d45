"""One SD1.5-size UNet step and one 512x512 VAE decode: ours fp32, ours default policy, diffusers fp32.

    python bench/unet_step.py [--quick] [--repeats N] [--skip-load]

Random weights (no downloads). Ours and diffusers share the same weights (copied through our
key mapping), and the table reports the relative difference of their outputs as a sanity check.
"Default" is ``sgm.devices`` policy: bf16 + channels_last on a CPU with AMX/AVX512-BF16, fp32
otherwise, fp16 on CUDA. Peak memory is the largest resident-set growth during the timed calls
(sampled every 2 ms), i.e. activations and workspace on top of the weights. Variants run
round-robin and the table shows the best of N, in wall time and in process CPU time.

The load section writes an SD1.5-size fp16 checkpoint (UNet + VAE, random weights) to a
temporary folder and loads it in a fresh process, reporting peak RSS against the file size.
"""

from __future__ import annotations

import argparse
import json
import os
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

from sgm.nets.autoencoder import AutoencoderKL  # noqa: E402
from sgm.io.convert import unet_diffusers_to_original, vae_diffusers_to_original  # noqa: E402
from sgm.devices import default_device, default_dtype, prepare_module, use_channels_last  # noqa: E402
from sgm.nets.unet import UNetModel  # noqa: E402

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


def interleaved(variants: list[tuple[str, Callable[[], torch.Tensor]]], repeats: int) -> list[dict]:
    """Time each variant ``repeats`` times, round-robin, after one warm-up call each.

    Round-robin and best-of-N keep a busy shared machine from favouring whichever variant
    ran in a quiet moment. CPU time (all threads of this process) is reported beside wall
    time: on a shared machine wall time also measures the neighbours.
    """
    results = []
    with torch.inference_mode():
        for name, fn in variants:  # warm-up: oneDNN primitives, packed weights, allocator growth
            results.append({"variant": name, "out": fn(), "wall": [], "cpu": [], "peak": 0})
        for _ in range(repeats):
            for result, (_, fn) in zip(results, variants):
                with PeakRSS() as peak:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    fn()
                    result["wall"].append(time.perf_counter() - start)
                    result["cpu"].append(time.process_time() - start_cpu)
                result["peak"] = max(result["peak"], peak.growth)
    return results


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _policy_copy(module: torch.nn.Module, factory: Callable[[], torch.nn.Module], device: torch.device) -> torch.nn.Module:
    """A second instance in the policy dtype, built on meta so the fp32 copy is not duplicated."""
    dtype = default_dtype(device)
    with torch.device("meta"):
        copy = factory()
    copy.load_state_dict({k: v.to(dtype) for k, v in module.state_dict().items()}, assign=True)
    return prepare_module(copy, device, dtype)


def bench_unet(repeats: int, device: torch.device) -> list[tuple]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    reference = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval().to(device)
    with torch.device("meta"):
        ours = UNetModel(**SD15_UNET)
    ours.load_state_dict({k: v.clone() for k, v in unet_diffusers_to_original(reference.state_dict()).items()}, assign=True)
    ours.eval().to(device)
    policy = _policy_copy(ours, lambda: UNetModel(**SD15_UNET), device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=generator).to(device)  # batch 2 as with CFG
    t = torch.tensor([999.0, 999.0], device=device)
    context = torch.randn(2, 77, 768, generator=generator).to(device)
    dtype = default_dtype(device)
    return _rows("UNet step", interleaved([
        ("diffusers fp32", lambda: reference(x, t, context).sample),
        ("ours fp32", lambda: ours(x, t, context)),
        (f"ours default ({_policy(device, dtype)})", lambda: policy(x, t, context)),
    ], repeats))


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
    policy = _policy_copy(ours, lambda: AutoencoderKL(**SD_VAE), device)
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)  # -> 512x512
    dtype = default_dtype(device)
    return _rows("VAE decode 512", interleaved([
        ("diffusers fp32", lambda: reference.decode(latents).sample),
        ("ours fp32", lambda: ours.decode(latents)),
        (f"ours default ({_policy(device, dtype)})", lambda: policy.decode(latents)),
    ], repeats))


def _rows(case: str, results: list[dict]) -> list[tuple]:
    expected = results[0]["out"]
    return [(case, r["variant"], min(r["wall"]), min(r["cpu"]), r["peak"], rel(r["out"], expected)) for r in results]


def _policy(device: torch.device, dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return name + (" + channels_last" if use_channels_last(device, dtype) else "")


def bench_load() -> dict:
    """Write an SD1.5-size fp16 file, then load it in a fresh process and report its peak RSS."""
    from sgm.io.checkpoints import save_checkpoint

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


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def load_child(path: str) -> None:
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the parent's peak.
    from sgm.io.checkpoints import load_checkpoint

    before = _status_bytes("VmHWM")
    start = time.perf_counter()
    checkpoint = load_checkpoint(path, dtype=torch.float16)
    load_s = time.perf_counter() - start
    after_load = rss_bytes()
    # Touch every weight, as a first denoising step would: all pages become resident.
    total = sum(float(p.float().sum()) for m in (checkpoint.unet, checkpoint.vae) for p in m.parameters())
    peak = _status_bytes("VmHWM")
    print(json.dumps({"before": before, "after_load": after_load, "peak_touched": peak, "load_s": load_s,
                      "checksum": total}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of three")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--skip-load", action="store_true", help="skip the checkpoint-load memory measurement")
    parser.add_argument("--skip-vae", action="store_true")
    parser.add_argument("--only-load", action="store_true", help="run only the checkpoint-load measurement")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        load_child(args.load_child)
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    device = default_device()
    if args.only_load:
        report_load()
        return 0
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
        report_load()
    return 0


def report_load() -> None:
    load = bench_load()
    size, before = load["file_bytes"], load["before"]
    print(f"\nload SD1.5-size fp16 file ({size / 2**30:.2f} GiB, UNet + VAE): {load['load_s']:.2f} s")
    print(f"  process RSS before load (python + torch): {before / 2**30:.2f} GiB")
    print(f"  growth right after load_checkpoint:       {(load['after_load'] - before) / 2**30:.2f} GiB "
          f"({(load['after_load'] - before) / size:.2f}x file)")
    print(f"  peak growth with every weight read:       {(load['peak_touched'] - before) / 2**30:.2f} GiB "
          f"({(load['peak_touched'] - before) / size:.2f}x file; total peak {load['peak_touched'] / size:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
