"""ComfyUI's notes: text on the canvas that runs nothing.

ComfyUI's frontend defines Note and MarkdownNote itself and never sends them in a prompt
(``engine.comfyui_graph`` drops them from UI graphs too). They are here so a prompt or one of
our documents that carries one still validates, and so our editor can offer them.
"""

from __future__ import annotations

from engine.api import NodeSpec, Text, node
from nodes.comfy import COMPAT


def nodes() -> list[NodeSpec]:
    @node("Note", display_name="Note", category="utils", compat=COMPAT)
    def note(text: Text(multiline=True, default="")) -> None:
        """A note on the canvas; it does nothing."""
        return None

    @node("MarkdownNote", display_name="Markdown Note", category="utils", compat=COMPAT)
    def markdown_note(text: Text(multiline=True, default="")) -> None:
        """A note in Markdown on the canvas; it does nothing."""
        return None

    return [note, markdown_note]
