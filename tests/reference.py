"""Reference data the project keeps beside the repository, in ``../shared/reference`` (not copied
into it): ComfyUI 0.3.64's ``/object_info``, the interface spec of the compatibility layer."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_OBJECT_INFO = ROOT.parent / "shared" / "reference" / "comfyui-0.3.64-object_info.json"


@lru_cache(maxsize=1)
def comfyui_object_info() -> dict[str, Any] | None:
    """ComfyUI 0.3.64's ``/object_info``, or None where ``../shared`` is not beside the checkout."""
    if not COMFYUI_OBJECT_INFO.is_file():
        return None
    return json.loads(COMFYUI_OBJECT_INFO.read_text(encoding="utf-8"))
