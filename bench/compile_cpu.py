"""Benchmark: the compiled UNet on the CPU (inductor's C++ backend) against eager, cold and warm start.

    python bench/compile_cpu.py                 # needs a C++ compiler (gcc/clang); ~3 min on 2 cores
    python bench/compile_cpu.py --cache-dir user/compile-cache

Two fresh processes share one inductor cache folder (a new temporary one unless --cache-dir):
the first compiles from nothing (cold), the second finds the compiled graph on disk (warm), as a
second ``main.py --compile`` process would. Each loads the embedded model as the engine does
(policy dtype, channels_last, packed weights), compiles it through ``sgm.nets.compile`` and
reports the first call (compile + run) and ms per CFG step (batch 2, 8x8 latent, best of 3 x
--steps) for eager and compiled, plus the largest difference of their outputs. Ratios are
against eager in the same process. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(cache_dir: Path, steps: int, threads: int) -> dict:
    import torch

    from sgm.devices import prepare_module
    from sgm.io.checkpoints import load_checkpoint
    from sgm.nets.compile import CompileOptions, compile_model, compiled_forward

    torch.set_num_threads(threads)
    unet = load_checkpoint(ROOT / "models" / "checkpoints" / "tiny-shapes.safetensors").unet
    unet = prepare_module(unet, "cpu")
    dtype = next(unet.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator).to(dtype)  # (B, 4, H/8, W/8)
    context = torch.randn(2, 16, unet.context_dim, generator=generator).to(dtype)
    t = torch.tensor([500.0, 500.0])
    compiled = compile_model(unet, CompileOptions(cache_dir=cache_dir))
    with torch.inference_mode():
        start = time.perf_counter()
        out = compiled(x, t, context)
        first = time.perf_counter() - start
        difference = float((out.float() - unet(x, t, context).float()).abs().max())
        timings = {}
        for name, module in (("eager", unet), ("compiled", compiled)):
            module(x, t, context)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(steps):
                    module(x, t, context)
                best = min(best, (time.perf_counter() - start) / steps)
            timings[name] = best * 1e3
    return {"first_call_s": first, "eager_ms": timings["eager"], "compiled_ms": timings["compiled"],
            "max_abs_difference": difference, "dtype": str(dtype).removeprefix("torch."),
            "fallback": compiled_forward(compiled).fallback_reason}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="inductor cache (default: a new temporary one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.cache_dir, args.steps, args.threads)))
        return 0
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        print("bench/compile_cpu.py: no C++ compiler found (inductor's CPU backend needs one); install one, e.g. "
              "apt-get install build-essential", file=sys.stderr)
        return 2
    temporary = None if args.cache_dir else tempfile.TemporaryDirectory()
    cache_dir = args.cache_dir or Path(temporary.name)
    rows = []
    for label in ("cold (empty cache)", "warm (second process)"):
        result = subprocess.run([sys.executable, __file__, "--child", "--cache-dir", str(cache_dir),
                                 "--steps", str(args.steps), "--threads", str(args.threads)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        rows.append((label, json.loads(result.stdout.strip().splitlines()[-1])))
    print(f"embedded model UNet, {rows[0][1]['dtype']}, CFG batch 2, 8x8 latent, torch threads {args.threads}, "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}")
    print(f"{'start':<24} {'first call s':>12} {'eager ms':>9} {'compiled ms':>12} {'ratio':>6} {'max |diff|':>11}")
    for label, r in rows:
        if r["fallback"]:
            print(f"{label}: fell back to eager: {r['fallback']}")
            continue
        print(f"{label:<24} {r['first_call_s']:>12.1f} {r['eager_ms']:>9.2f} {r['compiled_ms']:>12.2f} "
              f"{r['compiled_ms'] / r['eager_ms']:>6.2f} {r['max_abs_difference']:>11.4f}")
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
