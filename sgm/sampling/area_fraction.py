"""Condition areas given as fractions of the latent (ComfyUI's ConditioningSetAreaPercentage).

A :class:`AreaFraction` does not know the latent's size; it becomes an ``Area`` in latent pixels
(``sgm.text.conditioning.Area``) when sampling starts, by :func:`resolve_area` with the latent's
height and width: each size is ``max(1, round(fraction x latent size))``, each offset
``round(fraction x latent size)`` (ComfyUI's rounding), so a fraction area equals the pixel area
that ConditioningSetArea would give for the same rectangle whenever that rectangle is whole latent
pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from sgm.text.conditioning import Area, Condition


@dataclass(frozen=True)
class AreaFraction:
    """A rectangle as fractions (0..1) of the latent's width and height: left ``x``, top ``y``."""

    x: float
    y: float
    width: float
    height: float

    def __post_init__(self) -> None:
        for name in ("x", "y", "width", "height"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"area {name} must be a fraction of the image in [0, 1], got {value}")

    def in_latent(self, height: int, width: int) -> Area:
        """The rectangle in latent pixels of a ``height`` x ``width`` latent."""
        return Area(x=round(self.x * width), y=round(self.y * height),
                    width=max(1, round(self.width * width)), height=max(1, round(self.height * height)))


def resolve_area(area: Any, height: int, width: int) -> Area | None:
    """``area`` in latent pixels: an ``AreaFraction`` resolved for a ``height`` x ``width`` latent; an
    ``Area`` or None as it is."""
    return area.in_latent(height, width) if isinstance(area, AreaFraction) else area


def resolve_areas(conditions: Sequence[Condition], height: int, width: int) -> list[Condition]:
    """The conditions with fraction areas turned into latent-pixel areas (others unchanged)."""
    return [replace(c, area=resolve_area(c.area, height, width)) if isinstance(c.area, AreaFraction) else c
            for c in conditions]
