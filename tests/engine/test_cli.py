"""The headless CLI, driven in-process through main.main (no torch needed)."""

import json
import struct
import zlib

import pytest

import main
from engine.registry import NodeRegistry
from tests.engine.graph_nodes import chain_document, make_registry


@pytest.fixture
def registry_factory(monkeypatch):
    registry, calls = make_registry()

    def build_registry(custom_nodes=None, entry_points=True, settings=None):
        return registry

    monkeypatch.setattr(main, "build_registry", build_registry)
    return registry, calls


def write_json(path, document):
    path.write_text(json.dumps(document))
    return path


def test_validate_prints_every_problem_and_exits_nonzero(tmp_path, capsys, registry_factory):
    document = chain_document(4)
    document["nodes"]["2"]["inputs"]["factor"] = 99
    document["nodes"]["3"]["type"] = "Scael"
    path = write_json(tmp_path / "bad.json", document)
    assert main.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "node 2 (Scale) / input 'factor': 99 is above the maximum 10" in out
    assert "unknown node type 'Scael'" in out and "did you mean 'Scale'" in out
    assert "INVALID (2 errors" in out
    assert main.main(["validate", str(write_json(tmp_path / "ok.json", chain_document(4)))]) == 0


def test_run_with_set_sweep_and_events(tmp_path, capsys, registry_factory):
    registry, calls = registry_factory
    path = write_json(tmp_path / "chain.json", chain_document(4, start=2.0))
    events = tmp_path / "events.jsonl"
    code = main.main(["run", str(path), "--set", "3.factor=3", "--sweep", "2.factor=1,2,5",
                      "--events", str(events), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["node 4: 6.0", "node 4: 12.0", "node 4: 30.0"]
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert {r["run_index"] for r in records} == {0, 1, 2}
    executed = {i: sorted(r["node_id"] for r in records if r["run_index"] == i and r["type"] == "node_finished")
                for i in range(3)}
    # the sweep shares upstream work: Const runs once, only the swept node and below re-run
    assert executed == {0: ["1", "2", "3", "4"], 1: ["2", "3", "4"], 2: ["2", "3", "4"]}
    assert calls["Const"] == 1
    assert all("seconds" in r for r in records if r["type"] == "node_finished")


def test_run_reports_a_failing_node(tmp_path, capsys, registry_factory):
    document = chain_document(3)
    document["nodes"]["2"] = {"type": "Fail", "inputs": {"x": ["1", 0], "message": "no memory"}}
    assert main.main(["run", str(write_json(tmp_path / "f.json", document)), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "node 2 (Fail) failed: RuntimeError: no memory" in err and "x = 1.0" in err


def test_bad_override_is_explained(tmp_path, capsys, registry_factory):
    path = write_json(tmp_path / "c.json", chain_document(3))
    assert main.main(["run", str(path), "--set", "seed=3"]) == 2
    assert "write NODE.INPUT=VALUE" in capsys.readouterr().err
    assert main.main(["run", str(path), "--set", "77.seed=3"]) == 2
    assert "names node '77', which is not in the workflow" in capsys.readouterr().err


def _png_with_text(key: str, text: str) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", key.encode() + b"\x00" + text.encode())
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def test_run_workflow_embedded_in_png(tmp_path, capsys, registry_factory):
    png = tmp_path / "image.png"
    png.write_bytes(_png_with_text("workflow", json.dumps(chain_document(3, start=4.0))))
    assert main.main(["run", str(png), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "node 3: 4.0"
    plain = tmp_path / "plain.png"
    plain.write_bytes(_png_with_text("Comment", "hello"))
    with pytest.raises(SystemExit, match="carries no workflow"):
        main.main(["run", str(plain)])


def test_nodes_lists_the_catalogue(capsys, registry_factory):
    assert main.main(["nodes"]) == 0
    out = capsys.readouterr().out
    assert "Scale" in out and "(x:FLOAT, factor:FLOAT) -> x:FLOAT" in out
    assert main.main(["nodes", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["Split"]["output_name"] == ["low", "high"]


def test_real_registry_loads_builtins_and_example_plugin():
    registry = main.build_registry(entry_points=False)
    assert isinstance(registry, NodeRegistry)
    assert "ShowValue" in registry and "example_text.Reverse" in registry
    assert registry.failures == []

