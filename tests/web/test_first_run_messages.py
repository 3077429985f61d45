"""What a new user reads in the terminal: a taken port is one line, a failing plugin is
reported once, node descriptions are whole, `convert --help` has no markup, a failed first
node is not preceded by "nothing to do", and the server logs one line per prompt."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from engine.cli import format_summary
from engine.scheduler import Event
from web.cli import port_problem
from web.events import _RunState, prompt_summary

ROOT = Path(__file__).resolve().parents[2]


def run_main(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_a_taken_port_is_one_line_not_a_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "already in use" in (port_problem("127.0.0.1", port) or "")
        done = run_main("serve", "--port", str(port), "--custom-nodes", str(tmp_path / "none"),
                        "--queue-db", str(tmp_path / "queue.sqlite3"))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: port {port} on 127.0.0.1 is already in use (another latentflow or ComfyUI?); "
                         f"stop it or pass --port {port + 1}")
    assert "Traceback" not in done.stderr and "open http" not in done.stderr


def test_a_failing_plugin_is_reported_once_and_descriptions_are_whole(tmp_path):
    plugins = tmp_path / "custom_nodes"
    plugins.mkdir()
    (plugins / "broken.py").write_text("raise ImportError('needs a GPU')\n")
    done = run_main("nodes", "--custom-nodes", str(plugins))
    assert done.returncode == 0
    assert done.stderr.count("failed to load") == 1, done.stderr
    assert "broken.py failed to load: ImportError: needs a GPU" in done.stderr
    # SaveImage's docstring wraps over lines: the summary is its whole first paragraph
    assert "Never overwrites a file." in done.stdout


def test_convert_help_has_no_markup():
    done = run_main("convert", "--help", timeout=60)
    assert done.returncode == 0 and "``" not in done.stdout and "python main.py convert SRC DST" in done.stdout


def test_a_failure_in_the_first_node_prints_no_empty_summary():
    failed = SimpleNamespace(status="failed", executed=[], cached=[], timings={}, seconds=0.1)
    assert format_summary(failed, None) == ""
    finished = SimpleNamespace(status="finished", executed=[], cached=[], timings={}, seconds=0.0)
    assert format_summary(finished, None) == "run finished: nothing to do"


def test_the_server_logs_one_line_per_prompt():
    item = SimpleNamespace(number=3, prompt_id="0123456789abcdef")
    state = _RunState(executed=["5", "6", "7"], cached_ids=["1", "2", "3", "4"])
    line = prompt_summary(item, state, Event("run_finished", "r", seconds=1.234))
    assert line == "prompt #3 01234567 done: 3 nodes run, 4 cached, 1.23s"
    failed = prompt_summary(item, state, Event("run_failed", "r", "5", "SampleLatent", seconds=0.5))
    assert failed == "prompt #3 01234567 failed at node 5 (SampleLatent): 3 nodes run, 4 cached, 0.50s"


def test_the_readme_plugin_example_is_not_named_like_a_shipped_plugin():
    import re

    readme = (ROOT / "README.md").read_text()
    (name,) = re.findall(r"# custom_nodes/(\w+\.py)", readme)
    assert not (ROOT / "custom_nodes" / name).exists(), f"copying the example would overwrite {name}"
