"""Project-wide test configuration: the repository root is importable."""

import os
import sys
from pathlib import Path

# As in main.py: passive OpenMP waiting, set before anything imports torch, so tests
# sharing cores with other processes do not slow down ~100x in spin-waits.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"
