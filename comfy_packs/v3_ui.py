"""``comfy_api.latest.ui``: what a V3 node shows in the editor (PreviewImage, PreviewMask, PreviewText)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class PreviewText:
    def __init__(self, value: str, **_: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": [self.value]}


class PreviewImage:
    """Images written to temp/ (as ComfyUI's PreviewImage) and shown under the node."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **_: Any) -> None:
        from comfy_packs.core_nodes import PreviewImage as Writer

        self.values = Writer().save_images(image)["ui"]["images"]

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values}


class PreviewMask(PreviewImage):
    def __init__(self, mask: Any, cls: Any = None, **_: Any) -> None:
        super().__init__(mask.reshape(-1, mask.shape[-2], mask.shape[-1], 1).expand(-1, -1, -1, 3))


def ui_namespace() -> SimpleNamespace:
    return SimpleNamespace(PreviewText=PreviewText, PreviewImage=PreviewImage, PreviewMask=PreviewMask)
