"""Benchmark: cold start of ``python main.py sample`` on the embedded model (target <= 2 s on CPU).

    python bench/cold_start.py                 # 5 runs of each row
    python bench/cold_start.py --runs 9 --hog  # also with a busy-looping process on one core

Each run is a fresh process: from just before it is started to the moment its PNG exists on disk
(the file's modification time), so interpreter start, imports, model load, text encoding, 20
euler steps, decode and PNG writing are all in. Rows: ``import torch`` alone (the floor),
then ``main.py sample`` with the thread policy (one thread for a model this small) and with
``--threads N`` (all cores: what ran before the policy). ``--hog`` repeats the sample rows
while another process keeps one core busy (the contention this shared machine sees). Ratios
are against the policy row measured in the same run. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large yellow star in the center on a purple background"


def time_import_torch() -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.time() - start


def time_sample(extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        result = subprocess.run([sys.executable, str(ROOT / "main.py"), "sample", "--prompt", PROMPT, "--seed", "1",
                                 "--quiet", "--out", folder, *extra], cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"main.py sample failed ({result.returncode}): {result.stderr}")
        png = Path(result.stdout.strip().splitlines()[-1])
        return png.stat().st_mtime - start


def row(name: str, seconds: list[float], reference: float | None) -> str:
    best, median = min(seconds), statistics.median(seconds)
    ratio = f"{median / reference:>6.2f}" if reference else f"{'':>6}"
    return f"{name:<58} {best:>7.2f} {median:>7.2f} {ratio}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hog", action="store_true", help="also measure with one core kept busy")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    scenarios = [(False, "")] + ([(True, ", 1 core busy")] if args.hog else [])
    print(f"python main.py sample (embedded model, 64x64, 20 steps euler, cfg 4), {args.runs} fresh processes per row, "
          f"{cores} cores, load average {_load():.1f} at start")
    print(f"{'case':<58} {'min s':>7} {'median':>7} {'ratio':>6}")
    print("-" * 81)
    print(row("import torch alone (the floor)", [time_import_torch() for _ in range(args.runs)], None))
    for hogging, label in scenarios:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hogging else None
        try:
            time.sleep(0.3 if hog else 0)
            # interleaved, so that load changes on a shared machine hit both rows alike
            policy, all_cores = [], []
            for _ in range(args.runs):
                policy.append(time_sample([]))
                all_cores.append(time_sample(["--threads", str(cores)]))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        reference = statistics.median(policy)
        print(row(f"sample, thread policy (1 thread here){label}", policy, reference))
        print(row(f"sample, --threads {cores} (before the policy){label}", all_cores, reference))
    print(f"load average {_load():.1f} at the end")
    return 0


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
