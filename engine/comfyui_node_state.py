"""A node's editor state (mode, collapsed, pinned, colour) between ComfyUI's UI format and ours.

ComfyUI's frontend saves, per node, ``"mode"`` (0 always, 2 never = muted, 4 bypass),
``"flags"`` (``{"collapsed": true, "pinned": true}``) and ``"color"`` / ``"bgcolor"`` (the title
and body colours, CSS strings). Our editor keeps the same in the node's ``ui``: ``ui.mode``
(``"muted"`` | ``"bypassed"``), ``ui.collapsed``, ``ui.pinned`` and ``ui.color``, a name from the
palette below (litegraph's ``LGraphCanvas.node_colors``, whose names our editor's menu offers).
A colour pair that is not in the palette travels in ``ui.comfyui`` (``{"color", "bgcolor"}``)
so that it comes back unchanged; a palette name set in our editor wins over it.
"""

from __future__ import annotations

from typing import Any, Mapping

MODE_ALWAYS, MODE_MUTED, MODE_BYPASSED = 0, 2, 4  # litegraph's node modes
MUTED, BYPASSED = "muted", "bypassed"  # ours (web/static/js/modes.js)
UI_MODES = {MODE_MUTED: MUTED, MODE_BYPASSED: BYPASSED}
COMFY_MODES = {name: number for number, name in UI_MODES.items()}

# litegraph's node colour palette: name -> (title colour, body colour)
PALETTE: dict[str, tuple[str, str]] = {
    "red": ("#322", "#533"),
    "brown": ("#332922", "#593930"),
    "green": ("#232", "#353"),
    "blue": ("#223", "#335"),
    "pale_blue": ("#2a363b", "#3f5159"),
    "cyan": ("#233", "#355"),
    "purple": ("#323", "#535"),
    "yellow": ("#432", "#653"),
    "black": ("#222", "#000"),
}


def _same_colour(a: Any, b: str) -> bool:
    return isinstance(a, str) and a.strip().lower() == b.lower()


def palette_name(color: Any, bgcolor: Any) -> str | None:
    """The palette entry a node's colours are (the body colour decides; else the title's)."""
    if isinstance(bgcolor, str) and bgcolor:
        return next((name for name, (_, body) in PALETTE.items() if _same_colour(bgcolor, body)), None)
    if isinstance(color, str) and color:
        return next((name for name, (title, _) in PALETTE.items() if _same_colour(color, title)), None)
    return None


def node_ui_from_comfy(node: Mapping[str, Any], keep_mode: bool) -> dict[str, Any]:
    """Our ``ui`` entries for a ComfyUI UI-format node (``keep_mode``: the editor's document,
    where muted and bypassed nodes stay on the canvas)."""
    ui: dict[str, Any] = {}
    mode = node.get("mode")
    if keep_mode and isinstance(mode, int) and mode in UI_MODES:
        ui["mode"] = UI_MODES[mode]
    flags = node.get("flags")
    if isinstance(flags, Mapping):
        for flag in ("collapsed", "pinned"):
            if flags.get(flag) is True:
                ui[flag] = True
    color, bgcolor = node.get("color"), node.get("bgcolor")
    name = palette_name(color, bgcolor)
    if name is not None:
        ui["color"] = name
    else:
        raw = {key: value for key, value in (("color", color), ("bgcolor", bgcolor))
               if isinstance(value, str) and value}
        if raw:
            ui["comfyui"] = raw
    return ui


def comfy_fields_from_ui(ui: Mapping[str, Any]) -> dict[str, Any]:
    """``mode``, ``flags`` and ``color``/``bgcolor`` for a ComfyUI UI-format node from our ``ui``."""
    flags = {flag: True for flag in ("collapsed", "pinned") if ui.get(flag) is True}
    mode = ui.get("mode")
    fields: dict[str, Any] = {"mode": COMFY_MODES.get(mode, MODE_ALWAYS) if isinstance(mode, str) else MODE_ALWAYS,
                              "flags": flags}
    name = ui.get("color")
    if isinstance(name, str) and name in PALETTE:
        fields["color"], fields["bgcolor"] = PALETTE[name]
    else:
        raw = ui.get("comfyui")
        if isinstance(raw, Mapping):
            fields.update({key: raw[key] for key in ("color", "bgcolor") if isinstance(raw.get(key), str)})
    return fields
