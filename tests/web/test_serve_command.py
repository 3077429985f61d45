"""``python main.py serve`` as a user runs it: a real process, the built-in nodes, one prompt."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"text": text}


def _drain(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]


def test_serve_command_runs_a_prompt_with_the_builtin_nodes(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "main.py", "serve", "--port", str(port), "--custom-nodes", str(tmp_path / "none"),
         "--output-dir", str(tmp_path / "output"), "--queue-db", str(tmp_path / "queue.sqlite3")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, info = request(f"{base}/api/object_info")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, f"serve exited early:\n{process.stdout.read()}"
                assert time.monotonic() < deadline, "serve did not answer within 90s"
                time.sleep(0.25)
        assert status == 200 and {"KSampler", "SaveImage", "MathExpression"} <= set(info)
        document = {"version": 1, "nodes": {
            "1": {"type": "PrimitiveFloat", "inputs": {"value": 6}},
            "2": {"type": "MathExpression", "inputs": {"a": ["1", "value"], "b": 7, "op": "*"}},
            "3": {"type": "ShowValue", "inputs": {"value": ["2", "int"]}}}}
        status, refused = request(f"{base}/api/prompt", {"prompt": document}, {"Origin": "http://evil.example"})
        assert status == 403
        status, queued = request(f"{base}/api/prompt", {"prompt": document})
        assert status == 200, f"{queued}\nserver output so far:\n{_drain(process)}"
        for _ in range(200):
            _, history = request(f"{base}/api/history/{queued['prompt_id']}")
            if history:
                break
            time.sleep(0.05)
        assert history[queued["prompt_id"]]["outputs"]["3"] == {"text": ["42"]}
    finally:
        output = _drain(process) if process.poll() is None else ""
    assert f"open http://127.0.0.1:{port}/" in output
