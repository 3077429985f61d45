"""`main.py run` / `validate` take ComfyUI's UI-format workflows and ComfyUI's PNGs (no torch)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

import main
from engine.comfyui_graph import prompt_to_ui_graph
from tests.engine.graph_nodes import chain_document, make_registry


@pytest.fixture
def registry(monkeypatch):
    registry, _calls = make_registry()
    monkeypatch.setattr(main, "build_registry", lambda custom_nodes=None, entry_points=True, settings=None: registry)
    return registry


def ui_chain(registry, start: float, factor: float) -> dict[str, Any]:
    """Const(start) -> Scale(factor) -> Output, saved as the ComfyUI frontend would."""
    document = chain_document(3, start=start)
    document["nodes"]["2"]["inputs"]["factor"] = factor
    return prompt_to_ui_graph(document, registry.object_info())


def png_with_text(chunks: dict[str, str]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    text = b"".join(chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("utf-8"))
                    for key, value in chunks.items())
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + text + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
            + chunk(b"IEND", b""))


def test_run_and_validate_take_a_ui_format_file(tmp_path: Path, capsys, registry) -> None:
    graph = ui_chain(registry, start=2.0, factor=3.0)
    scale = next(n for n in graph["nodes"] if n["type"] == "Scale")
    assert scale["widgets_values"] == [3.0] and [i["name"] for i in scale["inputs"]] == ["x", "factor"]
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(graph))
    assert main.main(["validate", str(path)]) == 0
    assert "OK (0 errors, 0 warnings)" in capsys.readouterr().out
    assert main.main(["run", str(path), "--quiet", "--set", "1.value=5"]) == 0
    assert capsys.readouterr().out.strip() == "node 3: 15.0"  # ids survive: --set 1.value reached Const


def test_conversion_problems_are_reported_per_node_not_dumped(tmp_path: Path, capsys, registry) -> None:
    graph = ui_chain(registry, start=2.0, factor=3.0)
    graph["nodes"].append({"id": 9, "type": "FancyUpscaler", "pos": [0, 0], "mode": 0, "inputs": [],
                           "outputs": [], "widgets_values": [2.0, "lanczos"]})
    const = next(n for n in graph["nodes"] if n["type"] == "Const")
    const["widgets_values"] = [2.0, "extra", "values"]
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(graph))
    assert main.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "'nodes'" not in out and '"widgets_values"' not in out  # no dump of the document
    # the unknown node: reported once, with validation's suggestions and the values it lost
    assert out.count("unknown node type") == 1 and "not in the node catalogue" not in out
    assert "node 9 (FancyUpscaler): unknown node type 'FancyUpscaler'; its widget values [2.0, 'lanczos']" in out
    assert "warning: node 1 (Const): has 3 widget values but Const has 1 widget entries (value)" in out
    assert "INVALID (1 error, 2 warnings)" in out  # the second: node 9 feeds no output
    assert main.main(["run", str(path), "--quiet"]) == 1
    assert "not run, 1 error(s)" in capsys.readouterr().err


def test_a_png_with_prompt_and_ui_workflow_runs_the_prompt(tmp_path: Path, capsys, registry) -> None:
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 2.0}},
              "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 4.0}},
              "3": {"class_type": "Output", "inputs": {"value": ["2", 0]}}}
    png = tmp_path / "ComfyUI_00001_.png"  # as ComfyUI writes it: prompt, then the UI graph
    png.write_bytes(png_with_text({"prompt": json.dumps(prompt),
                                   "workflow": json.dumps(ui_chain(registry, start=2.0, factor=1.0))}))
    assert main.main(["validate", str(png)]) == 0
    capsys.readouterr()
    assert main.main(["run", str(png), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "node 3: 8.0"  # the prompt's factor 4, not the graph's 1


def test_a_png_with_only_a_ui_workflow_is_converted(tmp_path: Path, capsys, registry) -> None:
    png = tmp_path / "ui_only.png"
    png.write_bytes(png_with_text({"workflow": json.dumps(ui_chain(registry, start=2.0, factor=5.0))}))
    assert main.main(["run", str(png), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "node 3: 10.0"


def test_our_own_document_in_a_png_still_wins(tmp_path: Path, capsys, registry) -> None:
    ours = chain_document(3, start=7.0)
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1.0}},
              "2": {"class_type": "Scale", "inputs": {"x": ["1", 0], "factor": 1.0}},
              "3": {"class_type": "Output", "inputs": {"value": ["2", 0]}}}
    png = tmp_path / "ours.png"
    png.write_bytes(png_with_text({"prompt": json.dumps(prompt), "latentflow": json.dumps(ours)}))
    assert main.main(["run", str(png), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "node 3: 7.0"
