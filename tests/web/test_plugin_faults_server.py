"""Faulty plugins against the real server: the catalogue, validation, the queue and the
process itself keep working (plugin folders written to tmp_path; see also
tests/engine/test_plugin_faults.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from tests.engine.test_plugin_faults import GOOD, PLUGINS, RUN_TIME, write_plugins
from tests.web.fake_pack import make_fake_registry, txt2img_document
from tests.web.helpers import api_prompt, wait_for_history
from tests.web.test_serve_command import ROOT, _drain, free_port, request
from web.app import create_app



@pytest.fixture
def faulty_app(tmp_path: Path, settings, sampler_gate):
    folder = write_plugins(tmp_path / "plugins", {**PLUGINS, "runtime.py": RUN_TIME})
    (folder / "broken").touch()  # bad_choices.Styled's choice list fails
    registry = make_fake_registry(sampler_gate, settings.input_dir)
    registry.load_custom_nodes(folder)
    return create_app(registry, settings)


@pytest.mark.asyncio
async def test_object_info_lists_the_healthy_nodes_and_reports_the_broken_one(faulty_app, aiohttp_client):
    client = await aiohttp_client(faulty_app)
    response = await client.get("/api/object_info")
    assert response.status == 200
    info = await response.json()
    assert {"KSampler", "SaveImage", "good.Add1", "runtime.Forever"} <= set(info)
    style = info["bad_choices.Styled"]["input"]["required"]["style"]
    assert style[0] == [] and "styles.csv is unreadable" in style[1]["choices_error"]
    one = await client.get("/api/object_info/KSampler")
    assert one.status == 200 and (await one.json())["KSampler"]["name"] == "KSampler"
    broken = await client.get("/api/object_info/bad_choices.Styled")
    assert broken.status == 200 and (await broken.json())["bad_choices.Styled"]["errors"]
    failures = await (await client.get("/api/node_failures")).json()
    by_source = {f["source"]: f for f in failures}
    assert by_source["custom_nodes/bad_choices.py"]["node"] == "bad_choices.Styled"
    assert by_source["custom_nodes/exits.py"]["message"].startswith("SystemExit: this plugin needs a GPU")
    stats = await (await client.get("/api/system_stats")).json()
    assert stats["latentflow"]["plugin_failures"] == len(failures) == 6


@pytest.mark.asyncio
async def test_a_prompt_using_the_broken_node_gets_a_node_error_others_run(faulty_app, aiohttp_client):
    client = await aiohttp_client(faulty_app)
    prompt = {"99": {"class_type": "bad_choices.Styled", "inputs": {"style": "plain"}},
              **api_prompt(txt2img_document(seed=3))}
    refused = await client.post("/api/prompt", json={"prompt": prompt})
    body = await refused.json()
    assert refused.status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    assert list(body["node_errors"]) == ["99"]  # the txt2img nodes next to it are fine
    error = body["node_errors"]["99"]
    assert error["class_type"] == "bad_choices.Styled"
    assert error["errors"][0]["type"] == "exception_during_inner_validation"
    assert error["errors"][0]["message"] == "checking input 'style' failed: RuntimeError: styles.csv is unreadable"
    accepted = await client.post("/api/prompt", json={"prompt": api_prompt(txt2img_document(seed=4))})
    assert accepted.status == 200
    entry = await wait_for_history(client, (await accepted.json())["prompt_id"])
    assert entry["status"]["status_str"] == "success"


@pytest.mark.asyncio
async def test_a_never_returning_node_is_interrupted_and_later_prompts_run(faulty_app, aiohttp_client):
    client = await aiohttp_client(faulty_app)

    def document(node_type: str, tag: int) -> dict:
        return {"version": 1, "nodes": {"1": {"type": f"runtime.{node_type}", "inputs": {"tag": tag}},
                                        "2": {"type": "runtime.Show", "inputs": {"value": ["1", "value"]}}}}

    ids = []
    for node_type, tag in (("Forever", 1), ("Exit", 2), ("Halt", 3), ("Echo", 4)):
        response = await client.post("/api/prompt", json={"prompt": document(node_type, tag)})
        assert response.status == 200, await response.text()
        ids.append((await response.json())["prompt_id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        running = (await (await client.get("/api/queue")).json())["queue_running"]
        if running and running[0][1] == ids[0]:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert (await client.post("/api/interrupt", json={"prompt_id": ids[0]})).status == 200
    statuses = [(await wait_for_history(client, prompt_id, timeout=10))["status"]["status_str"] for prompt_id in ids]
    assert statuses == ["error", "error", "error", "success"]  # ComfyUI reports an interrupt as "error"
    forever = await wait_for_history(client, ids[0])
    assert any(kind == "execution_interrupted" for kind, _ in forever["status"]["messages"])
    queue = await (await client.get("/api/queue")).json()
    assert queue == {"queue_running": [], "queue_pending": []}  # not wedged


def test_serve_starts_and_reports_faulty_plugins(tmp_path: Path) -> None:
    """`python main.py serve --custom-nodes DIR` with plugins that exit at import: it starts,
    prints each failure, and answers with the healthy nodes."""
    folder = write_plugins(tmp_path / "plugins", {**PLUGINS, "good.py": GOOD})
    (folder / "broken").touch()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "main.py", "serve", "--port", str(port), "--custom-nodes", str(folder),
         "--output-dir", str(tmp_path / "output"), "--queue-db", str(tmp_path / "queue.sqlite3")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"the server exited: {process.communicate()[0]}"
            try:
                status, info = request(f"{base}/api/object_info")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert status == 200 and {"good.Add1", "KSampler", "SaveImage"} <= set(info)
        assert info["bad_choices.Styled"]["input"]["required"]["style"][0] == []
        status, failures = request(f"{base}/api/node_failures")
        assert status == 200 and len(failures) == 6
    finally:
        output = _drain(process)
    for source in ("exits.py", "exits_zero.py", "ctrl_c.py", "own_base.py", "exits_in_nodes", "bad_choices.py"):
        assert f"plugin custom_nodes/{source}" in output, output  # each failure is printed
    assert "plugin custom_nodes/exits.py failed to load: SystemExit: this plugin needs a GPU" in output
