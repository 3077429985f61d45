"""The workflow document: parsing our JSON format and ComfyUI's API prompt shape.

Our format (``engine/workflow.schema.json``)::

    {"version": 1,
     "nodes": {"1": {"type": "LoadCheckpoint", "inputs": {"ckpt_name": "x.safetensors"}},
               "2": {"type": "TextEncode", "inputs": {"clip": ["1", "clip"], "text": "a cat"}}}}

An input is a literal, a link ``[source_node_id, output_name_or_index]`` or, for a
literal list, ``{"value": [...]}``. ComfyUI's API prompt shape
(``{id: {"class_type": ..., "inputs": {...}}}`` with ``[id, index]`` links) is accepted too
and converted to the same :class:`Workflow`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Link:
    """An input fed by another node's output (given by name or index)."""

    node_id: str
    output: str | int

    def to_json(self) -> list[Any]:
        return [self.node_id, self.output]


@dataclass(frozen=True)
class NodeInstance:
    id: str
    type: str
    inputs: Mapping[str, Any]  # input name -> literal value or Link
    ui: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workflow:
    nodes: Mapping[str, NodeInstance]
    ui: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    source_format: Literal["latentflow", "comfyui-api"] = "latentflow"

    def to_json(self) -> dict[str, Any]:
        """The document in our format (ComfyUI prompts come out converted)."""
        nodes: dict[str, Any] = {}
        for node_id, instance in self.nodes.items():
            inputs = {}
            for name, value in instance.inputs.items():
                if isinstance(value, Link):
                    inputs[name] = value.to_json()
                elif isinstance(value, (list, tuple, dict)):
                    inputs[name] = {"value": copy.deepcopy(value)}
                else:
                    inputs[name] = value
            entry: dict[str, Any] = {"type": instance.type, "inputs": inputs}
            if instance.ui:
                entry["ui"] = dict(instance.ui)
            nodes[node_id] = entry
        document: dict[str, Any] = {"version": FORMAT_VERSION, "nodes": nodes}
        if self.ui:
            document["ui"] = dict(self.ui)
        if self.meta:
            document["meta"] = dict(self.meta)
        return document

    def upstream_of(self, roots: list[str]) -> set[str]:
        """``roots`` and every node they read from, directly or not (iterative: no depth limit).

        Links to missing nodes are skipped (validation reports them)."""
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            node_id = stack.pop()
            if node_id in seen or node_id not in self.nodes:
                continue
            seen.add(node_id)
            stack.extend(v.node_id for v in self.nodes[node_id].inputs.values() if isinstance(v, Link))
        return seen

    def with_input(self, node_id: str, name: str, value: Any) -> "Workflow":
        """A copy with one input replaced (workflows are values; never mutated)."""
        instance = self.nodes[node_id]
        inputs = dict(instance.inputs)
        inputs[name] = value
        nodes = dict(self.nodes)
        nodes[node_id] = NodeInstance(instance.id, instance.type, inputs, instance.ui)
        return Workflow(nodes, self.ui, self.meta, self.source_format)


@lru_cache(maxsize=1)
def workflow_schema() -> dict[str, Any]:
    """The JSON Schema of our workflow format, as shipped in ``engine/workflow.schema.json``."""
    text = (Path(__file__).resolve().parent / "workflow.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def is_comfyui_prompt(document: Any) -> bool:
    """True for ComfyUI's API prompt shape: ``{id: {"class_type": ..., "inputs": {...}}}``."""
    return (
        isinstance(document, dict)
        and bool(document)
        and "nodes" not in document
        and all(isinstance(v, dict) and "class_type" in v for v in document.values())
    )


def comfyui_prompt_to_document(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """Convert ComfyUI's API prompt to our document shape (links stay ``[id, index]``)."""
    nodes: dict[str, Any] = {}
    for node_id, entry in prompt.items():
        inputs: dict[str, Any] = {}
        raw_inputs = entry.get("inputs", {})
        for name, value in (raw_inputs if isinstance(raw_inputs, dict) else {}).items():
            if isinstance(value, list) and not _looks_like_link(value):
                inputs[name] = {"value": value}
            else:
                inputs[name] = value
        # A malformed inputs value is kept as sent so the schema check reports it.
        node: dict[str, Any] = {"type": entry["class_type"],
                                "inputs": inputs if isinstance(raw_inputs, dict) else raw_inputs}
        title = (entry.get("_meta") or {}).get("title")
        if title:
            node["ui"] = {"title": title}
        nodes[str(node_id)] = node
    return {"version": FORMAT_VERSION, "nodes": nodes}


def _looks_like_link(value: list[Any]) -> bool:
    return (
        len(value) == 2
        and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
        and isinstance(value[1], (str, int)) and not isinstance(value[1], bool)
    )


def document_to_workflow(document: Mapping[str, Any], source_format: str = "latentflow") -> Workflow:
    """Build a :class:`Workflow` from a document that passed the schema.

    Lenient about node entries that are not objects (the validator reports those).
    """
    nodes: dict[str, NodeInstance] = {}
    raw_nodes = document.get("nodes")
    for node_id, entry in (raw_nodes if isinstance(raw_nodes, dict) else {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            continue
        inputs: dict[str, Any] = {}
        raw_inputs = entry.get("inputs") or {}
        if isinstance(raw_inputs, dict):
            for name, value in raw_inputs.items():
                inputs[name] = _parse_input(value)
        node_ui = entry.get("ui")
        nodes[str(node_id)] = NodeInstance(str(node_id), entry["type"], inputs,
                                           dict(node_ui) if isinstance(node_ui, dict) else {})
    ui, meta = document.get("ui"), document.get("meta")
    return Workflow(nodes, dict(ui) if isinstance(ui, dict) else {}, dict(meta) if isinstance(meta, dict) else {},
                    source_format)  # type: ignore[arg-type]


def _parse_input(value: Any) -> Any:
    if isinstance(value, list) and _looks_like_link(value):
        return Link(str(value[0]), value[1])
    if isinstance(value, dict) and set(value) == {"value"}:
        return value["value"]
    return value


def read_workflow_file(path: str | Path) -> dict[str, Any]:
    """Read a workflow document from JSON, or from the text chunk of a PNG we saved.

    Raises ``ValueError`` with a message that says what was wrong with the file.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"workflow file {str(path)!r} does not exist")
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _workflow_from_png(path, data)
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    if isinstance(document, dict) and "prompt" in document and is_comfyui_prompt(document["prompt"]):
        document = document["prompt"]  # a saved POST /api/prompt body
    return document


def _workflow_from_png(path: Path, data: bytes) -> dict[str, Any]:
    """The workflow stored by SaveImage in a PNG ``tEXt``/``iTXt`` chunk named ``workflow``."""
    chunks = _png_text_chunks(data)
    for key in ("workflow", "prompt"):
        if key in chunks:
            try:
                return json.loads(chunks[key])
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: the PNG's {key!r} text chunk is not valid JSON: {error}") from error
    raise ValueError(
        f"{path}: this PNG carries no workflow (no 'workflow' or 'prompt' text chunk); "
        f"only images written by SaveImage embed their workflow"
    )


def _png_text_chunks(data: bytes) -> dict[str, str]:
    """tEXt, zTXt and iTXt chunks of a PNG (stdlib only, so the engine needs no Pillow)."""
    import struct
    import zlib

    chunks: dict[str, str] = {}
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            key, _, text = body.partition(b"\x00")
            chunks[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            chunks[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            compressed, _method = rest[0], rest[1]
            rest = rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            chunks[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        elif kind == b"IEND":
            break
    return chunks
