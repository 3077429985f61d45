"""The procedural ``shapes`` dataset: one coloured shape on a coloured background.

Every image is a pure function of ``(seed, index)``: the attributes (colour, shape, size,
position, background) are drawn from ``numpy.random.default_rng([seed, index])``, so any
worker process can produce any item, a resumed run continues the exact stream, and the
analyser in :mod:`sgm.training.shapes_eval` can be checked against the ground truth.

Captions read "a small red circle at the top left on a blue background". A fixed set of
attribute combinations (:func:`held_out_combos`) never appears in training; the eval
generates exactly those.

Geometry (in pixels of a 64 x 64 image, scaled with ``size``): a shape of radius ``r`` has
a bounding box of about ``2r x 2r`` centred on its position, whatever its type, so that
size and position are read the same way for every shape.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# Well-separated colours (RGB 0-255): the closest pair (red, orange) is ~105 apart, so a
# nearest-palette read of a slightly blurry generated image is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "orange": (240, 130, 10),
    "yellow": (250, 230, 50),
    "green": (40, 170, 60),
    "blue": (30, 70, 210),
    "purple": (130, 40, 170),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Radius in pixels of a 64-pixel image; bounding boxes of 12, 19 and 26 pixels.
SIZES: dict[str, float] = {"small": 6.0, "medium": 9.5, "large": 13.0}
# Position name -> (column, row) in a 3 x 3 grid, and the caption phrase for it.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
# Grid-cell centres for a 64-pixel image: a large shape (r = 13) still fits at the edges.
GRID_CENTRES: tuple[float, float, float] = (14.0, 32.0, 50.0)
POSITION_JITTER = 2.5  # pixels (64-pixel scale), uniform in [-j, j]
RADIUS_JITTER = 0.05  # relative, uniform in [-j, j]
SUPERSAMPLE = 4  # anti-aliased edges: render 4x larger, box-filter down
STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
HELD_OUT_SEED = 20240611
HELD_OUT_COUNT = 96


@dataclass(frozen=True)
class ShapeSpec:
    """The attributes of one image (the caption's content)."""

    colour: str
    shape: str
    size: str
    position: str
    background: str

    def caption(self) -> str:
        """The training caption, e.g. "a small red circle at the top left on a blue background"."""
        return (
            f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]}"
            f" on {_article(self.background)} {self.background} background"
        )

    def as_tuple(self) -> tuple[str, str, str, str, str]:
        return (self.colour, self.shape, self.size, self.position, self.background)


@dataclass(frozen=True)
class Placement:
    """Where a shape is drawn, in pixels of the rendered image (after jitter)."""

    centre_x: float
    centre_y: float
    radius: float


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def all_combos() -> list[ShapeSpec]:
    """Every valid attribute combination (the background differs from the shape colour)."""
    return [
        ShapeSpec(colour, shape, size, position, background)
        for colour, shape, size, position, background in itertools.product(
            COLOURS, SHAPES, SIZES, POSITIONS, COLOURS
        )
        if background != colour
    ]


@lru_cache(maxsize=4)
def held_out_combos(count: int = HELD_OUT_COUNT, seed: int = HELD_OUT_SEED) -> tuple[ShapeSpec, ...]:
    """A fixed set of combinations that training never shows and the eval generates."""
    combos = all_combos()
    picked = np.random.default_rng(seed).choice(len(combos), size=count, replace=False)
    return tuple(combos[i] for i in sorted(picked.tolist()))


def sample_spec(rng: np.random.Generator, exclude: frozenset[ShapeSpec] = frozenset()) -> ShapeSpec:
    """Uniform attributes, redrawn while they hit an excluded (held-out) combination."""
    colours = list(COLOURS)
    while True:
        colour = colours[rng.integers(len(colours))]
        background = colours[rng.integers(len(colours) - 1)]
        if background == colour:  # skip the shape colour without biasing the rest
            background = colours[-1]
        spec = ShapeSpec(
            colour=colour,
            shape=SHAPES[rng.integers(len(SHAPES))],
            size=list(SIZES)[rng.integers(len(SIZES))],
            position=list(POSITIONS)[rng.integers(len(POSITIONS))],
            background=background,
        )
        if spec not in exclude:
            return spec


def place(spec: ShapeSpec, image_size: int = 64, rng: np.random.Generator | None = None) -> Placement:
    """The shape's centre and radius in pixels; ``rng`` adds jitter (None: exact grid)."""
    scale = image_size / 64.0
    column, row = POSITIONS[spec.position]
    radius = SIZES[spec.size]
    centre_x, centre_y = GRID_CENTRES[column], GRID_CENTRES[row]
    if rng is not None:
        radius *= 1.0 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
        centre_x += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
        centre_y += rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    # Keep the whole shape inside the frame (one pixel margin).
    centre_x = float(np.clip(centre_x, radius + 1.0, 63.0 - radius))
    centre_y = float(np.clip(centre_y, radius + 1.0, 63.0 - radius))
    return Placement(centre_x * scale, centre_y * scale, radius * scale)


def shape_polygon(shape: str, centre_x: float, centre_y: float, radius: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape (square, triangle, star) with a ~2r x 2r bounding box."""
    if shape == "square":
        return [(centre_x - radius, centre_y - radius), (centre_x + radius, centre_y - radius),
                (centre_x + radius, centre_y + radius), (centre_x - radius, centre_y + radius)]
    if shape == "triangle":  # pointing up, base 2r, height 2r
        return [(centre_x, centre_y - radius), (centre_x + radius, centre_y + radius),
                (centre_x - radius, centre_y + radius)]
    if shape == "star":
        # A point-up star spans R above its centre and R cos 36 below; choose R and shift
        # so that its bounding box is 2r tall and centred on the requested position.
        outer = 2.0 * radius / (1.0 + np.cos(np.pi / 5))
        shift = (outer - outer * np.cos(np.pi / 5)) / 2.0
        points = []
        for k in range(10):
            r_k = outer if k % 2 == 0 else outer * STAR_INNER
            angle = -np.pi / 2 + k * np.pi / 5
            points.append((centre_x + r_k * np.cos(angle), centre_y + shift + r_k * np.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_coverage(shape: str, placement: Placement, image_size: int,
                   supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape, (H, W) float32."""
    big = image_size * supersample
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    s = float(supersample)
    cx, cy, r = placement.centre_x * s, placement.centre_y * s, placement.radius * s
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r), fill=255)
    small = canvas.resize((image_size, image_size), Image.BOX) if supersample > 1 else canvas
    return np.asarray(small, dtype=np.float32) / 255.0


def render(spec: ShapeSpec, image_size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """The image for ``spec``: (H, W, 3) uint8. ``rng`` jitters position and radius."""
    placement = place(spec, image_size, rng)
    alpha = shape_coverage(spec.shape, placement, image_size)[..., None]  # (H, W, 1)
    foreground = np.asarray(COLOURS[spec.colour], dtype=np.float32)
    background = np.asarray(COLOURS[spec.background], dtype=np.float32)
    image = background * (1.0 - alpha) + foreground * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
