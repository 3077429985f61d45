"""ComfyUI's V3 node API: ``io``, ``ui``, ``ComfyExtension`` (comfy_packs.v3)."""

from comfy_packs.v3 import ComfyExtension, io_namespace as _io_namespace  # noqa: F401
from comfy_packs.v3_ui import ui_namespace as _ui_namespace

io = _io_namespace()
ui = _ui_namespace()
IO = io
UI = ui
