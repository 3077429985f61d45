"""Placement of prompts on workers (engine.backends.place): affinity first, then the least loaded."""

from __future__ import annotations

import pytest

from engine.backends import InProcessBackend, WorkerInfo, model_files, place
from engine.queue import QueueItem
from engine.workflow import Link, NodeInstance, Workflow


def item(number: int, *models: str) -> QueueItem:
    nodes = {str(i + 1): NodeInstance(str(i + 1), "Load", {"ckpt_name": name}) for i, name in enumerate(models)}
    nodes["9"] = NodeInstance("9", "Save", {"images": Link("1", "image")} if models else {})
    return QueueItem(f"p{number}", number, Workflow(nodes), {}, sequence=number)


W1, W2 = WorkerInfo("w1", "process"), WorkerInfo("w2", "process")


def test_model_files_are_the_model_inputs_of_the_workflow():
    workflow = Workflow({"1": NodeInstance("1", "Load", {"ckpt_name": "a.safetensors", "seed": 3}),
                         "2": NodeInstance("2", "Lora", {"lora_name": "x", "model": Link("1", "model")}),
                         "3": NodeInstance("3", "Text", {"text": "not a file"})})
    assert model_files(workflow) == {"a.safetensors", "x"}


def test_an_idle_worker_holding_the_checkpoint_gets_the_prompt():
    held = {"w1": frozenset({"a"}), "w2": frozenset({"b"})}
    assert place([item(0, "b")], [W1, W2], held) == (item(0, "b"), W2)
    # w2 is busy: the first item it could take waits; w1 takes the next one it holds...
    assert place([item(0, "b"), item(1, "a")], [W1], held) == (item(1, "a"), W1)


def test_without_a_holder_the_head_goes_to_the_least_loaded_idle_worker():
    held = {"w1": frozenset({"a", "c"}), "w2": frozenset({"b"})}
    assert place([item(0, "d"), item(1)], [W1, W2], held)[1] == W2
    # an idle worker never waits for a busy one holding the models (a batch spreads)
    assert place([item(0, "b"), item(1, "b")], [W1], held) == (item(0, "b"), W1)
    assert place([], [W1], held) is None and place([item(0)], [], held) is None


def test_the_in_process_backend_is_one_worker_over_the_executor():
    backend = InProcessBackend(executor=object())
    assert [w.kind for w in backend.workers()] == ["in-process"] == [w.kind for w in backend.wait_ready()]
