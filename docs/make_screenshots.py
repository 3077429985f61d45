"""Write docs/editor-{rest,running,done,workspace}.png: the editor at 1280x720 on the embedded
model (workspace: two workflow tabs, a template being picked, the model library, the minimap).

    python docs/make_screenshots.py      (needs Debian's /usr/bin/chromium and playwright)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from playwright.sync_api import sync_playwright

    import main as cli
    from engine.settings import Settings
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
    from tests.browser.editor import wait_until  # (the editor's CSP forbids wait_for_function)
    from tests.browser.server import ServerThread
    from web.app import create_app

    output = Path(tempfile.mkdtemp(prefix="latentflow-shots-"))
    settings = Settings.for_root(ROOT, output_dir=output, workflows_dir=ROOT / "workflows")
    registry = cli.build_registry(custom_nodes=ROOT / "custom_nodes", entry_points=False, settings=settings)
    with ServerThread(create_app(registry, settings)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(server.url)
        page.wait_for_selector("body.connected")
        page.select_option("#workflow-select", "txt2img")
        time.sleep(0.5)
        page.screenshot(path=str(ROOT / "docs" / "editor-rest.png"))
        page.evaluate("() => window.latentflow.graph.setValue('5', 'steps', 400)")  # slow enough to watch
        page.click("#queue-button")
        wait_until(page, "() => document.querySelector('#run-progress-text').textContent.includes('ETA')", timeout=60)
        time.sleep(1.5)
        page.screenshot(path=str(ROOT / "docs" / "editor-running.png"))
        wait_until(page, "() => document.querySelector('#run-progress-text').textContent.startsWith('done')",
                   timeout=300)
        wait_until(page, """() => { const i = document.querySelector('[data-node-id="7"] .node-images img');
                            return i && i.complete && i.naturalWidth > 0; }""")
        page.screenshot(path=str(ROOT / "docs" / "editor-done.png"))
        page.click("#templates-button")
        page.click('.template[data-template="hires_fix"]')
        wait_until(page, "() => document.querySelectorAll('#tabs .tab').length === 2")
        page.click("#models-button")
        page.wait_for_selector('.model-file[data-file="tiny-shapes.safetensors"]')
        page.click("#templates-button")
        page.wait_for_selector('.template[data-template="lora"]')
        page.hover('.template[data-template="lora"]')
        time.sleep(0.5)
        page.screenshot(path=str(ROOT / "docs" / "editor-workspace.png"))
        browser.close()
    from PIL import Image

    for name in ("rest", "running", "done", "workspace"):  # a palette keeps each file small
        path = ROOT / "docs" / f"editor-{name}.png"
        Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)


if __name__ == "__main__":
    main()
