"""Headless runs: ``--set`` overrides, ``--sweep`` combinations, JSONL event logs."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, TextIO

from engine.workflow import comfyui_prompt_to_document, is_comfyui_prompt


class OverrideError(ValueError):
    """A --set / --sweep argument that cannot be applied."""


@dataclass(frozen=True)
class Override:
    node_id: str
    input: str
    value: Any

    def label(self) -> str:
        return f"{self.node_id}.{self.input}={json.dumps(self.value)}"


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, null, quoted text), else the raw text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignment(text: str) -> tuple[str, str, str]:
    target, sep, value = text.partition("=")
    node_id, dot, name = target.rpartition(".")
    if not sep or not dot or not node_id or not name:
        raise OverrideError(
            f"cannot read {text!r}: write NODE.INPUT=VALUE, e.g. 3.seed=42 or 6.text=\"a red fox\"")
    return node_id, name, value


def parse_set(text: str) -> Override:
    node_id, name, value = parse_assignment(text)
    return Override(node_id, name, parse_value(value))


def parse_sweep(text: str) -> list[Override]:
    node_id, name, values = parse_assignment(text)
    items = [v for v in values.split(",")]
    if not values or any(v == "" for v in items):
        raise OverrideError(f"cannot read sweep {text!r}: write NODE.INPUT=V1,V2,... with no empty values")
    return [Override(node_id, name, parse_value(v)) for v in items]


def apply_overrides(document: Mapping[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of ``document`` (our format or a ComfyUI prompt) with the overrides applied."""
    result = comfyui_prompt_to_document(document) if is_comfyui_prompt(document) else copy.deepcopy(dict(document))
    nodes = result.get("nodes")
    for override in overrides:
        if not isinstance(nodes, dict) or override.node_id not in nodes:
            known = ", ".join(sorted(nodes)[:20]) if isinstance(nodes, dict) else "(none)"
            raise OverrideError(f"--set/--sweep names node {override.node_id!r}, which is not in the "
                                f"workflow; its nodes are: {known}")
        node = nodes[override.node_id]
        inputs = node.setdefault("inputs", {})
        value = override.value
        inputs[override.input] = {"value": value} if isinstance(value, list) else value
    return result


def combinations(sweeps: Sequence[Sequence[Override]]) -> Iterator[tuple[Override, ...]]:
    """Every combination of the sweep values, in the order given (the last varies fastest)."""
    if not sweeps:
        yield ()
        return
    yield from itertools.product(*sweeps)


class JsonlEventWriter:
    """Writes one JSON object per event, tagged with the index of the run in a sweep."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.run_index = 0

    def __call__(self, event: Any) -> None:
        record = event.to_json()
        record["run_index"] = self.run_index
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
