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
import struct
import zlib
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
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                inputs[name] = {"value": value["__value__"]}  # the frontend's wrapping of a literal list
            else:
                inputs[name] = value
        # A malformed inputs value is kept as sent so the schema check reports it.
        node: dict[str, Any] = {"type": entry["class_type"],
                                "inputs": inputs if isinstance(raw_inputs, dict) else raw_inputs}
        meta = entry.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        if isinstance(title, str) and title:
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


MAX_WORKFLOW_FILE_BYTES = 256 << 20
MAX_PNG_TEXT_CHARS = 32 << 20  # one text chunk, decompressed (a UI graph is well under 1 MiB)


def read_workflow_file(path: str | Path) -> dict[str, Any]:
    """Read a workflow document from JSON, or from the text chunks of a PNG (ours or ComfyUI's).

    Raises ``ValueError`` with a message that says what was wrong with the file.
    """
    from engine.json_input import JSONInputError, load_json

    path = Path(path)
    if not path.exists():
        raise ValueError(f"workflow file {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a workflow .json file or a PNG that carries one")
    try:
        size = path.stat().st_size
        if size > MAX_WORKFLOW_FILE_BYTES:
            raise ValueError(f"{path} is {size >> 20} MiB; a workflow file is at most "
                             f"{MAX_WORKFLOW_FILE_BYTES >> 20} MiB")
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror or error}") from None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _workflow_from_png(path, data)
    try:
        document = load_json(data)
    except JSONInputError as error:
        raise ValueError(f"{path}: {error}") from None
    if isinstance(document, dict) and "prompt" in document and is_comfyui_prompt(document["prompt"]):
        document = document["prompt"]  # a saved POST /api/prompt body
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a workflow must be a JSON object, got {type(document).__name__}; write "
                         '{"version": 1, "nodes": {...}}, a ComfyUI API prompt or a ComfyUI UI workflow')
    return document


def _workflow_from_png(path: Path, data: bytes) -> dict[str, Any]:
    """The workflow a PNG carries in its text chunks, best first:

    1. our own document, under whichever key (``workflow`` in the PNGs we wrote so far);
    2. ``prompt``: ComfyUI's API prompt, exactly what ran (ComfyUI writes it beside the UI graph);
    3. ``workflow`` holding ComfyUI's UI graph (returned as is: the caller converts it with
       the node catalogue, see :func:`engine.comfyui_graph.ui_graph_to_document`).
    """
    from engine.json_input import JSONInputError, load_json

    try:
        chunks = _png_text_chunks(data)
    except (ValueError, zlib.error, struct.error, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: damaged PNG text chunk ({error})") from None
    parsed: dict[str, Any] = {}
    broken: list[str] = []
    for key, text in chunks.items():
        if key in ("workflow", "prompt") or text.lstrip().startswith("{"):
            try:
                parsed[key] = load_json(text)
            except JSONInputError as error:
                broken.append(f"the PNG's {key!r} text chunk is refused: {error}")
    for document in parsed.values():
        if _is_our_document(document):
            return document
    if is_comfyui_prompt(parsed.get("prompt")):
        return parsed["prompt"]
    if isinstance(parsed.get("workflow"), dict):
        return parsed["workflow"]
    if broken:
        raise ValueError(f"{path}: {'; '.join(broken)}")
    found = ", ".join(repr(k) for k in chunks) or "none"
    raise ValueError(
        f"{path}: this PNG carries no workflow (text chunks: {found}; expected 'prompt' or 'workflow'); "
        f"only images written by SaveImage (ours or ComfyUI's) embed their workflow"
    )


def _is_our_document(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("nodes"), dict) and "version" in document


def _inflate(data: bytes, key: bytes) -> bytes:
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, MAX_PNG_TEXT_CHARS)
    if inflater.unconsumed_tail:
        raise ValueError(f"text chunk {key.decode('latin-1')!r} inflates past {MAX_PNG_TEXT_CHARS >> 20} MiB")
    return text


def _png_text_chunks(data: bytes) -> dict[str, str]:
    """tEXt, zTXt and iTXt chunks of a PNG (stdlib only, so the engine needs no Pillow).

    Compressed chunks are inflated at most to ``MAX_PNG_TEXT_CHARS`` (a zTXt bomb is refused,
    not expanded)."""
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
            chunks[key.decode("latin-1")] = _inflate(rest[1:], key).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            compressed, _method = rest[0], rest[1]
            rest = rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _translated, _, text = rest.partition(b"\x00")
            chunks[key.decode("latin-1")] = (_inflate(text, key) if compressed else text).decode("utf-8")
    return chunks
