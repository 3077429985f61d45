import textwrap
from types import SimpleNamespace

import pytest

from engine import registry as registry_module
from engine.api import Out, node
from engine.registry import DuplicateNodeError, NodeRegistry


@node("Same")
def same_a() -> Out(x="INT"):
    return 1


@node("Same")
def same_b() -> Out(x="INT"):
    return 2


def test_duplicate_id_names_both_sources():
    registry = NodeRegistry()
    registry.register_pack([same_a], "pack_one")
    with pytest.raises(DuplicateNodeError) as error:
        registry.register_pack([same_b], "pack_two")
    assert "pack_one" in str(error.value) and "pack_two" in str(error.value)
    assert registry.get("Same").function is same_a.function


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


GOOD_PLUGIN = """
    from engine.api import Int, Out, node

    @node("Double", category="plugin")
    def double(x: Int() = 1) -> Out(x="INT"):
        return 2 * x

    NODES = [double]
"""


def test_broken_plugin_next_to_a_good_one(tmp_path):
    _write(tmp_path, "good.py", GOOD_PLUGIN)
    _write(tmp_path, "broken.py", "import not_a_module_that_exists\nNODES = []\n")
    _write(tmp_path, "pkg/__init__.py", "from .impl import NODES\n")
    _write(tmp_path, "pkg/impl.py", GOOD_PLUGIN.replace("Double", "Triple"))
    _write(tmp_path, "nolist.py", "x = 1\n")
    registry = NodeRegistry()
    registry.load_custom_nodes(tmp_path)
    assert "good.Double" in registry and "pkg.Triple" in registry
    sources = {f.source: f for f in registry.failures}
    assert set(sources) == {"custom_nodes/broken.py", "custom_nodes/nolist.py"}
    assert "ModuleNotFoundError" in sources["custom_nodes/broken.py"].message
    assert "not_a_module_that_exists" in sources["custom_nodes/broken.py"].traceback
    assert "exports no NODES" in sources["custom_nodes/nolist.py"].message
    assert registry.get("good.Double").function(x=4) == 8


def test_plugin_duplicate_of_builtin_is_reported_not_fatal(tmp_path):
    _write(tmp_path, "clash.py", GOOD_PLUGIN.replace('"Double"', '"core.Double"'))
    registry = NodeRegistry()

    @node("core.Double")
    def builtin() -> Out(x="INT"):
        return 0

    registry.register_pack([builtin], "nodes.core")
    registry.load_custom_nodes(tmp_path)
    assert len(registry.failures) == 1
    assert "nodes.core" in registry.failures[0].message and "custom_nodes/clash.py" in registry.failures[0].message


def test_entry_point_plugins(monkeypatch):
    @node("Hello")
    def hello() -> Out(text="STRING"):
        return "hi"

    def broken():
        raise RuntimeError("plugin init failed")

    entry_points = [
        SimpleNamespace(name="hellopack", value="hellopack:NODES", load=lambda: [hello]),
        SimpleNamespace(name="badpack", value="badpack:NODES", load=lambda: broken),
    ]
    monkeypatch.setattr(registry_module.importlib.metadata, "entry_points",
                        lambda group: entry_points if group == "latentflow.nodes" else [])
    registry = NodeRegistry()
    registry.load_entry_points()
    assert "hellopack.Hello" in registry
    assert registry.failures[0].source.startswith("entry point badpack")
    assert "plugin init failed" in registry.failures[0].message
