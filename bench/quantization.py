"""Benchmark: weight-only quantization of the embedded model's UNet (sgm.nets.quant).

    python bench/quantization.py                   # bf16 (where the CPU has native bf16) and fp32
    python bench/quantization.py --steps 40 --threads 2

For each compute dtype and weight storage (as loaded, fp8_e4m3fn, fp8_e5m2, int8): the bytes of
the UNet's weights, ms per CFG step (batch 2, 64x64 px: an 8x8 latent here, best of --repeats),
and the output's relative L2 error against the unquantized model in the same compute dtype and
against fp32 (same inputs, several noise levels). Ratios are against the unquantized row of the
same compute dtype, measured in the same run. Joint accuracy: ``python main.py eval shapes --n 96
--weight-dtype int8`` (see the issue notes). Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sgm.devices import cpu_has_native_bf16, prepare_module  # noqa: E402
from sgm.io.checkpoints import load_checkpoint  # noqa: E402
from sgm.nets.quant import WeightDtype, quantize_module, weight_bytes  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "checkpoints" / "tiny-shapes.safetensors"


def step_ms(unet: torch.nn.Module, inputs: tuple[torch.Tensor, ...], steps: int, repeats: int) -> float:
    with torch.inference_mode():
        unet(*inputs)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                unet(*inputs)
            best = min(best, (time.perf_counter() - start) / steps)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CLI's policy for this model: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = load_checkpoint(CHECKPOINT, dtype=torch.float32).unet.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, base.in_channels, 8, 8, generator=generator)  # (B, 4, H/8, W/8), CFG batch
    context = torch.randn(2, 16, base.context_dim, generator=generator)  # (B, S, context_dim)
    checks = [(x * sigma, torch.tensor([t, t])) for sigma, t in ((14.0, 950.0), (3.0, 600.0), (0.5, 200.0))]
    with torch.inference_mode():
        fp32_out = [base(xs, t, context) for xs, t in checks]

    dtypes = ([torch.bfloat16] if cpu_has_native_bf16() else []) + [torch.float32]
    print(f"embedded model UNet ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters), CFG batch 2, "
          f"8x8 latent, {args.steps} steps best of {args.repeats}, torch threads {args.threads}, "
          f"load average {_load():.1f}")
    header = (f"{'compute':<9} {'weights':<12} {'UNet MiB':>9} {'ratio':>6} {'ms/step':>8} {'ratio':>6} "
              f"{'rel.err vs same dtype':>22} {'rel.err vs fp32':>16}")
    print(header)
    print("-" * len(header))
    for dtype in dtypes:
        reference_bytes = reference_ms = None
        reference_out: list[torch.Tensor] = []
        for weight_dtype in WeightDtype:
            unet = quantize_module(prepare_module(copy.deepcopy(base), "cpu", dtype), weight_dtype)
            channels_last = unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
            inputs = (x.to(dtype).contiguous(memory_format=torch.channels_last if channels_last
                                             else torch.contiguous_format), checks[1][1], context.to(dtype))
            ms = step_ms(unet, inputs, args.steps, args.repeats)
            with torch.inference_mode():
                outs = [unet(xs.to(dtype), t, context.to(dtype)).float() for xs, t in checks]
            size = weight_bytes(unet)
            if weight_dtype == WeightDtype.DEFAULT:
                reference_bytes, reference_ms, reference_out = size, ms, outs
            same = _rel(outs, reference_out)
            vs32 = _rel(outs, fp32_out)
            name = "as loaded" if weight_dtype == WeightDtype.DEFAULT else weight_dtype.value
            print(f"{str(dtype).removeprefix('torch.'):<9} {name:<12} {size / 2**20:>9.2f} {size / reference_bytes:>6.2f} "
                  f"{ms:>8.2f} {ms / reference_ms:>6.2f} {same:>22.4f} {vs32:>16.4f}")
    return 0


def _rel(outs: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    """Relative L2 error over all checked noise levels together."""
    error = sum(float((o - r).pow(2).sum()) for o, r in zip(outs, references))
    norm = sum(float(r.pow(2).sum()) for r in references)
    return (error / norm) ** 0.5


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
