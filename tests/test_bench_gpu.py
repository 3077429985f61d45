"""bench/gpu.py refuses clearly where it cannot measure (this CPU machine: no CUDA; or no diffusers).

Its ``--dry-run`` (tiny shapes on the CPU, every code path but CUDA events) takes about two
minutes on two shared cores, so it is run by hand, not here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would measure")
def test_without_cuda_it_exits_2_saying_what_it_needs_and_how_to_check_the_script() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert "bench/gpu.py: needs a CUDA GPU" in result.stderr and "nothing was measured" in result.stderr
    assert "--dry-run" in result.stderr


def test_without_diffusers_it_exits_2_naming_the_package() -> None:
    code = ("import sys, runpy; sys.modules['diffusers'] = None; sys.argv = ['bench/gpu.py', '--dry-run']; "
            "runpy.run_path('bench/gpu.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "needs diffusers for the peer columns (pip install diffusers); nothing was measured" in result.stderr
