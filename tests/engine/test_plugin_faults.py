"""Faulty plugins stay confined to themselves: real plugin folders written to tmp_path, loaded
by the real loader. Import-time exits, failing choice lists, a broken widget class, and nodes
that never return or raise BaseException at run time (no torch, no server here; the server
side is in tests/web/test_plugin_faults_server.py)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from engine.api import ChoicesUnavailable, Choice
from engine.cache import ResultCache
from engine.queue import PromptQueue
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from engine.validation import validate_document

GOOD = '''
from engine.api import Int, Out, Result, node

@node("Add1", category="test")
def add1(x: Int(min=0) = 1) -> Out(value="INT"):
    return x + 1

@node("Show", category="test", output=True)
def show(value: "INT") -> None:
    return Result(ui={"text": [str(value)]})

NODES = [add1, show]
'''

# The choice list fails while a file named "broken" sits next to the plugin.
BAD_CHOICES = '''
from pathlib import Path
from engine.api import Choice, Out, node

def styles():
    if (Path(__file__).parent / "broken").exists():
        raise RuntimeError("styles.csv is unreadable")
    return ["plain", "fancy"]

@node("Styled", category="test")
def styled(style: Choice(choices=styles) = "plain") -> Out(text="STRING"):
    return style

NODES = [styled]
'''

PLUGINS = {
    "good.py": GOOD,
    "bad_choices.py": BAD_CHOICES,
    "exits.py": "import sys\nsys.exit('this plugin needs a GPU')\n",
    "exits_zero.py": "import sys\nsys.exit()\n",
    "ctrl_c.py": "raise KeyboardInterrupt\n",
    "own_base.py": "class Stop(BaseException):\n    pass\nraise Stop('a BaseException of its own')\n",
    "exits_in_nodes/__init__.py": "import sys\ndef NODES():\n    sys.exit(3)\n",
}


def write_plugins(folder: Path, plugins: dict[str, str]) -> Path:
    for name, code in plugins.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
    return folder


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return write_plugins(tmp_path / "custom_nodes", PLUGINS)


def load(folder: Path) -> NodeRegistry:
    registry = NodeRegistry()
    registry.load_custom_nodes(folder)
    return registry


def by_source(registry: NodeRegistry) -> dict[str, str]:
    return {f.source: f.message for f in registry.failures}


def test_plugins_that_exit_or_interrupt_at_import_are_reported_and_the_rest_loads(plugins: Path) -> None:
    registry = load(plugins)  # would end the test process if any of these escaped
    assert {"good.Add1", "good.Show", "bad_choices.Styled"} <= set(registry.ids())
    failures = by_source(registry)
    assert failures["custom_nodes/exits.py"].startswith("SystemExit: this plugin needs a GPU (raised by the plugin")
    assert failures["custom_nodes/exits_zero.py"].startswith("SystemExit (raised by the plugin while loading")
    assert failures["custom_nodes/ctrl_c.py"].startswith("KeyboardInterrupt (raised by the plugin")
    assert failures["custom_nodes/own_base.py"].startswith("Stop: a BaseException of its own")
    assert failures["custom_nodes/exits_in_nodes"].startswith("SystemExit: 3")
    assert "it is skipped and everything else loads" in failures["custom_nodes/exits.py"]
    assert "sys.exit('this plugin needs a GPU')" in {f.source: f for f in registry.failures}[
        "custom_nodes/exits.py"].traceback
    # healthy plugins are not reported
    assert not any(source.startswith("custom_nodes/good") for source in failures)


def test_a_failing_choice_list_is_reported_at_load_and_in_object_info(plugins: Path) -> None:
    (plugins / "broken").touch()
    registry = load(plugins)
    reported = [f for f in registry.failures if f.node]
    assert [(f.source, f.node) for f in reported] == [("custom_nodes/bad_choices.py", "bad_choices.Styled")]
    message = reported[0].message
    assert message.startswith("node 'bad_choices.Styled' lists no choices for input 'style' (")
    assert "latentflow_plugins.bad_choices.styles raised RuntimeError: styles.csv is unreadable" in message
    assert "fix or remove the plugin" in message and "styles.csv is unreadable" in reported[0].traceback
    assert reported[0].to_dict()["node"] == "bad_choices.Styled"

    info = registry.object_info()  # does not raise
    assert {"good.Add1", "good.Show"} <= set(info)
    choices, options = info["bad_choices.Styled"]["input"]["required"]["style"]
    assert choices == [] and "styles.csv is unreadable" in options["choices_error"]
    assert options["default"] == "plain"
    assert info["bad_choices.Styled"]["errors"] == [f"input 'style': {options['choices_error']}"]
    assert "errors" not in info["good.Add1"]
    for _ in range(3):
        registry.object_info()
    assert len([f for f in registry.failures if f.node]) == 1  # reported once, not once per request


def test_the_report_goes_away_when_the_choices_work_again(plugins: Path) -> None:
    (plugins / "broken").touch()
    registry = load(plugins)
    load_failures = [f for f in registry.failures if not f.node]
    assert any(f.node for f in registry.failures)
    (plugins / "broken").unlink()
    info = registry.object_info()
    assert info["bad_choices.Styled"]["input"]["required"]["style"][0] == ["plain", "fancy"]
    assert registry.failures == load_failures  # import failures stay; the node's report is gone
    (plugins / "broken").touch()
    assert registry.object_info()["bad_choices.Styled"]["input"]["required"]["style"][0] == []
    assert [f.node for f in registry.failures if f.node] == ["bad_choices.Styled"]


def test_validation_refuses_the_broken_node_and_passes_prompts_without_it(plugins: Path) -> None:
    (plugins / "broken").touch()
    registry = load(plugins)
    using_it = {"version": 1, "nodes": {
        "1": {"type": "bad_choices.Styled", "inputs": {"style": "plain"}},
        "2": {"type": "good.Add1", "inputs": {"x": 2}},
        "3": {"type": "good.Show", "inputs": {"value": ["2", "value"]}}}}
    report = validate_document(using_it, registry)
    (problem,) = report.errors
    # the node type carries the plugin's name; the exception is ComfyUI's inner-validation one,
    # with the plugin's own type, message and file in the traceback
    assert (problem.node_id, problem.node_type, problem.input) == ("1", "bad_choices.Styled", "style")
    assert problem.message == "checking input 'style' failed: RuntimeError: styles.csv is unreadable"
    assert problem.extra_info["exception_type"] == "RuntimeError"
    assert any(str(plugins / "bad_choices.py") in line for line in problem.extra_info["traceback"])
    # the same prompt in ComfyUI's API shape gets the same node-level error
    api = {node_id: {"class_type": n["type"], "inputs": n["inputs"]} for node_id, n in using_it["nodes"].items()}
    assert [e.node_id for e in validate_document(api, registry).errors] == ["1"]
    without = {"version": 1, "nodes": {k: v for k, v in using_it["nodes"].items() if k != "1"}}
    assert validate_document(without, registry).ok


@pytest.mark.parametrize("choices, said", [
    ("lambda: (_ for _ in ()).throw(SystemExit(2))", "raised SystemExit: 2"),
    ("lambda: None", "returned NoneType None, not a list of names"),
    ("lambda: 'abc'", "returned str 'abc', not a list of names"),
    ("lambda: 1 / 0", "raised ZeroDivisionError: division by zero"),
])
def test_any_choice_failure_is_confined(tmp_path: Path, choices: str, said: str) -> None:
    write_plugins(tmp_path, {"odd.py": f'''
from engine.api import Choice, node

@node("Odd", category="test")
def odd(pick: Choice(choices={choices})) -> "STRING":
    return pick

NODES = [odd]
''', "good.py": GOOD})
    registry = load(tmp_path)
    info = registry.object_info()
    assert said in info["odd.Odd"]["input"]["required"]["pick"][1]["choices_error"]
    assert "good.Add1" in info and [f.node for f in registry.failures] == ["odd.Odd"]
    report = validate_document({"version": 1, "nodes": {"1": {"type": "odd.Odd", "inputs": {"pick": "x"}}}},
                               registry)  # does not raise, whatever the callable did
    assert [(e.node_id, e.input) for e in report.errors if e.node_id] == [("1", "pick")]


def test_choice_options_turn_exits_into_an_exception_naming_the_callable() -> None:
    def scan() -> list[str]:
        raise SystemExit("scan gave up")

    with pytest.raises(ChoicesUnavailable, match=r"test_plugin_faults\.test_choice_options_turn_exits_into_an_"
                                                 r"exception_naming_the_callable\.<locals>\.scan raised "
                                                 r"SystemExit: scan gave up"):
        Choice(choices=scan).options()

    def unreadable() -> list[str]:
        raise PermissionError("models/ is not readable")

    with pytest.raises(PermissionError, match="not readable"):  # an Exception passes as it is
        Choice(choices=unreadable).options()
    assert Choice(choices=("a", "b")).options() == ["a", "b"]
    assert Choice(choices=lambda: (n for n in (1, "b"))).options() == ["1", "b"]


def test_a_node_whose_widget_class_is_broken_is_left_out_and_reported(tmp_path: Path) -> None:
    write_plugins(tmp_path, {"weird.py": '''
from dataclasses import dataclass
from engine.api import Int, node

@dataclass(frozen=True)
class Slider(Int):
    def spec_options(self):
        raise ValueError("slider options are not ready")

@node("Slide", category="test")
def slide(x: Slider() = 3) -> "INT":
    return x

NODES = [slide]
''', "good.py": GOOD})
    registry = load(tmp_path)
    info = registry.object_info()
    assert "weird.Slide" not in info and "good.Add1" in info
    (failure,) = registry.failures
    assert failure.node == "weird.Slide" and failure.source == "custom_nodes/weird.py"
    assert failure.message == ("node 'weird.Slide' is left out of the catalogue: "
                               "ValueError: slider options are not ready")


# ------------------------------------------------------------------ run time

RUN_TIME = '''
import time
from engine.api import Context, Int, Out, Result, node

class Halt(BaseException):
    pass

@node("Forever", category="test", pure=False)
def forever(tag: Int() = 0, ctx: Context = None) -> Out(value="INT"):
    """Never returns on its own, but looks at cancellation (a long kernel loop should)."""
    while True:
        time.sleep(0.005)
        ctx.check_cancelled()

@node("Exit", category="test", pure=False)
def exit_(tag: Int() = 0) -> Out(value="INT"):
    raise SystemExit("node called sys.exit()")

@node("Halt", category="test", pure=False)
def halt(tag: Int() = 0) -> Out(value="INT"):
    raise Halt("a BaseException of the plugin's own")

@node("Echo", category="test", pure=False)
def echo(tag: Int() = 0) -> Out(value="INT"):
    return tag

@node("Show", category="test", output=True)
def show(value: "INT") -> None:
    return Result(ui={"text": [str(value)]})

NODES = [forever, exit_, halt, echo, show]
'''


def doc(node_type: str, tag: int) -> dict:
    return {"version": 1, "nodes": {"1": {"type": f"runtime.{node_type}", "inputs": {"tag": tag}},
                                    "2": {"type": "runtime.Show", "inputs": {"value": ["1", "value"]}}}}


def test_a_node_that_never_returns_is_interrupted_and_the_queue_goes_on(tmp_path: Path) -> None:
    registry = load(write_plugins(tmp_path, {"runtime.py": RUN_TIME}))
    assert registry.failures == []
    queue = PromptQueue(Executor(registry, ResultCache()))
    queue.start()
    try:
        items = [queue.submit(validate_document(d, registry).workflow, d)
                 for d in (doc("Forever", 1), doc("Exit", 2), doc("Halt", 3), doc("Echo", 4))]
        deadline = time.monotonic() + 10
        while (queue.running() is None or queue.running().prompt_id != items[0].prompt_id) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # it is inside its loop now
        asked = time.time()
        assert queue.interrupt(items[0].prompt_id)
        assert queue.wait_idle(10), "the queue is wedged"
        status = {e.item.prompt_id: e for e in queue.history()}
    finally:
        queue.stop()
    forever, exits, halts, echo = (status[i.prompt_id] for i in items)
    assert forever.status == "interrupted" and forever.finished_at - asked < 1.0
    assert exits.status == "error" and "SystemExit: node called sys.exit()" in exits.error["message"]
    assert halts.status == "error" and "Halt: a BaseException of the plugin's own" in halts.error["message"]
    assert echo.status == "success" and echo.outputs["2"]["text"] == ["4"]
