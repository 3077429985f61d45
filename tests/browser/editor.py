"""Page helpers that drive the editor the way a person does: real mouse moves and keys."""

from __future__ import annotations

import json
import time
from typing import Any

TXT2IMG_LAYOUT = [  # (type, x, y) on screen, in the order the nodes get ids 1..7
    ("LoadCheckpoint", 60, 150),
    ("TextEncode", 360, 80),
    ("TextEncode", 360, 330),
    ("EmptyLatent", 60, 520),
    ("KSampler", 660, 120),
    ("Decode", 980, 120),
    ("SaveImage", 980, 320),
]

TXT2IMG_LINKS = [  # (from id, output, to id, input)
    ("1", "clip", "2", "clip"),
    ("1", "clip", "3", "clip"),
    ("1", "model", "5", "model"),
    ("2", "conditioning", "5", "positive"),
    ("3", "conditioning", "5", "negative"),
    ("4", "latent", "5", "latent"),
    ("1", "vae", "6", "vae"),
    ("5", "latent", "6", "latent"),
    ("6", "image", "7", "images"),
]


def wait_until(page, function: str, arg: Any = None, timeout: float = 15.0) -> Any:
    """Poll ``function`` (JS, called with ``arg``) until it returns something truthy.

    (Playwright's wait_for_function compiles its predicate with eval inside the page, which
    the editor's Content-Security-Policy rightly forbids; page.evaluate is not affected.)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(function, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {function}")
        time.sleep(0.05)


def wait_for_node_count(page, count: int) -> None:
    wait_until(page, "n => document.querySelectorAll('.node').length === n", count)


def wait_for_image(page, selector: str, timeout: float = 15.0) -> Any:
    """The <img> at ``selector`` once it has loaded (its natural size, [width, height])."""
    page.wait_for_selector(selector, timeout=timeout * 1000)
    return wait_until(page, """s => { const img = document.querySelector(s);
        return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null; }""",
                      selector, timeout)


def open_editor(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("body.connected")


def new_canvas(page) -> None:
    page.click("#new-button")
    wait_for_node_count(page, 0)


def add_node(page, node_type: str, x: float, y: float) -> str:
    """Double-click the empty canvas at (x, y), search for ``node_type``, press Enter."""
    before = page.locator(".node").count()
    page.mouse.dblclick(x, y)
    page.fill("#search-input", node_type)
    page.wait_for_selector(f'.search-item.active[data-type="{node_type}"]')
    page.keyboard.press("Enter")
    wait_for_node_count(page, before + 1)
    return page.locator(".node").last.get_attribute("data-node-id")


def center(page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not visible"
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def socket(node_id: str, direction: str, name: str) -> str:
    return f'[data-node-id="{node_id}"] [data-socket="{direction}:{name}"]'


def drag(page, start: tuple[float, float], end: tuple[float, float], steps: int = 8) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def drag_link(page, from_id: str, output: str, to_id: str, input_name: str) -> None:
    drag(page, center(page, socket(from_id, "out", output)), center(page, socket(to_id, "in", input_name)))


def autosaved(page) -> dict[str, Any]:
    """The workflow document the editor autosaved (what a reload restores)."""
    return json.loads(page.evaluate("localStorage.getItem('latentflow.workflow')"))


def link_count(page) -> int:
    return page.locator("#links path.link:not(.temp)").count()


def empty_point(page, near: tuple[float, float] = (700, 700)) -> tuple[float, float]:
    """A point of the empty canvas (no node, no link under it), the nearest to ``near``
    (the editor fits a loaded workflow into view, so where nodes are depends on the window)."""
    point = page.evaluate("""([nx, ny]) => {
        const rect = document.querySelector('#canvas').getBoundingClientRect();
        let best = null;
        for (let y = rect.top + 20; y < rect.bottom - 30; y += 20) {
            for (let x = rect.left + 20; x < rect.right - 20; x += 20) {
                const hit = document.elementFromPoint(x, y);
                if (hit && (hit.id === 'canvas' || hit.id === 'world' || hit.id === 'links')) {
                    const d = (x - nx) ** 2 + (y - ny) ** 2;
                    if (!best || d < best[2]) best = [x, y, d];
                }
            }
        }
        return best && [best[0], best[1]];
    }""", list(near))
    assert point, "no empty spot on the canvas"
    return point[0], point[1]
