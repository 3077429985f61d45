"""The prompt queue: FIFO worker, events tagged by item, interrupt, delete, history paging."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from engine.api import Context, Int, Out, Result, node
from engine.cache import ResultCache
from engine.queue import DuplicatePromptIdError, PromptQueue, QueueClosedError
from engine.registry import NodeRegistry
from engine.scheduler import Executor
from tests.engine.graph_nodes import chain_document, make_registry, validated


def blocking_registry(gate: threading.Event, started: threading.Event) -> NodeRegistry:
    """``Wait`` blocks until ``gate`` is set, reporting progress so cancellation is seen."""

    @node("Wait", category="test", pure=False)
    def wait(tag: Int(min=0) = 0, ctx: Context = None) -> Out(value="INT"):
        started.set()
        while not gate.wait(0.01):
            ctx.progress(0, 1)
        return tag

    @node("Sink", category="test", output=True)
    def sink(value: "INT") -> None:
        return Result(ui={"text": [str(value)]})

    registry = NodeRegistry()
    registry.register_pack([wait, sink], "tests")
    return registry


def wait_doc(tag: int) -> dict:
    return {"version": 1, "nodes": {"1": {"type": "Wait", "inputs": {"tag": tag}},
                                    "2": {"type": "Sink", "inputs": {"value": ["1", "value"]}}}}


@pytest.fixture
def recorded():
    events: list[tuple[str | None, str | None]] = []
    lock = threading.Lock()

    def listener(item, event):
        with lock:
            events.append((item.prompt_id if item else None, event.type if event else None))

    return events, listener


def test_items_run_in_order_and_land_in_history_with_outputs(recorded):
    events, listener = recorded
    registry, calls = make_registry(Counter())
    queue = PromptQueue(Executor(registry, ResultCache()), listener=listener, services={"who": "test"})
    queue.start()
    try:
        docs = [chain_document(3, start=float(i)) for i in (1, 2, 3)]
        items = [queue.submit(validated(d, registry), d, client_id="c1") for d in docs]
        assert [i.number for i in items] == [0, 1, 2]  # ComfyUI counts from 0
        assert queue.wait_idle(10)
    finally:
        queue.stop()
    history = queue.history()
    assert [e.item.prompt_id for e in history] == [i.prompt_id for i in items]
    assert [e.outputs["3"]["text"] for e in history] == [["1.0"], ["2.0"], ["3.0"]]
    assert all(e.status == "success" for e in history)
    # each item's run events come tagged with that item, bracketed by queue-change notices
    first = items[0].prompt_id
    tagged = [kind for pid, kind in events if pid == first]
    # ... and a final (item, None): the item is done and in the history
    assert tagged[0] == "run_started" and tagged[-2:] == ["run_finished", None]
    assert (None, None) in events
    entry = history[0].to_json()
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1] == first and entry["prompt"][2] == docs[0]
    assert entry["meta"]["executed"] == ["1", "2", "3"]


def test_services_include_document_and_prompt_id():
    seen = {}

    @node("Spy", category="test", output=True)
    def spy(ctx: Context = None) -> None:
        seen.update(ctx.services)
        return None

    registry = NodeRegistry()
    registry.register_pack([spy], "tests")
    queue = PromptQueue(Executor(registry), services={"settings": "S"})
    queue.start()
    doc = {"version": 1, "nodes": {"1": {"type": "Spy"}}}
    item = queue.submit(validated(doc, registry), doc)
    assert queue.wait_idle(10)
    queue.stop()
    assert seen["settings"] == "S" and seen["prompt_id"] == item.prompt_id and seen["workflow_document"] == doc


def test_interrupt_running_by_id_and_delete_pending():
    gate, started = threading.Event(), threading.Event()
    registry = blocking_registry(gate, started)
    queue = PromptQueue(Executor(registry))
    queue.start()
    try:
        first = queue.submit(validated(wait_doc(1), registry), wait_doc(1))
        second = queue.submit(validated(wait_doc(2), registry), wait_doc(2))
        third = queue.submit(validated(wait_doc(3), registry), wait_doc(3))
        assert started.wait(5)
        assert queue.running().prompt_id == first.prompt_id
        assert [i.prompt_id for i in queue.pending()] == [second.prompt_id, third.prompt_id]
        assert queue.remaining() == 3
        assert queue.delete([third.prompt_id, "nope"]) == [third.prompt_id]
        assert queue.interrupt(second.prompt_id) is True  # a pending id is removed, the running one untouched
        assert queue.running().prompt_id == first.prompt_id
        assert queue.interrupt("not-running") is False
        assert queue.interrupt(first.prompt_id) is True
        assert queue.wait_idle(5)
    finally:
        gate.set()
        queue.stop()
    entry = queue.history_entry(first.prompt_id)
    assert entry is not None and entry.status == "interrupted"
    assert entry.to_json()["status"]["interrupted"] is True
    assert queue.history_entry(second.prompt_id) is None  # never ran


def test_failed_node_is_an_error_entry_and_the_worker_continues():
    registry, _ = make_registry(Counter())
    bad = {"version": 1, "nodes": {"1": {"type": "Const", "inputs": {"value": 1}},
                                   "2": {"type": "Fail", "inputs": {"x": ["1", 0], "message": "nope"}},
                                   "3": {"type": "Output", "inputs": {"value": ["2", 0]}}}}
    good = chain_document(3)
    queue = PromptQueue(Executor(registry))
    queue.start()
    failed = queue.submit(validated(bad, registry), bad)
    ok = queue.submit(validated(good, registry), good)
    assert queue.wait_idle(10)
    queue.stop()
    entry = queue.history_entry(failed.prompt_id)
    assert entry.status == "error"
    assert entry.error["node_id"] == "2" and "nope" in entry.error["message"]
    assert [m[0] for m in entry.messages][-2:] == ["node_failed", "run_failed"]
    assert queue.history_entry(ok.prompt_id).status == "success"


def test_engine_crash_is_recorded_not_fatal():
    class Broken:
        def run(self, workflow, **kwargs):
            raise KeyError("engine bug")

    registry, _ = make_registry(Counter())
    doc = chain_document(3)
    queue = PromptQueue(Broken())
    queue.start()
    item = queue.submit(validated(doc, registry), doc)
    second = queue.submit(validated(doc, registry), doc)
    assert queue.wait_idle(5)
    queue.stop()
    assert queue.history_entry(item.prompt_id).error["message"] == "KeyError: 'engine bug'"
    assert queue.history_entry(second.prompt_id).status == "error"


def test_history_paging_delete_clear_and_limit():
    registry, _ = make_registry(Counter())
    queue = PromptQueue(Executor(registry), history_limit=4)
    queue.start()
    ids = [queue.submit(validated(chain_document(3, float(i)), registry), chain_document(3, float(i))).prompt_id
           for i in range(6)]
    assert queue.wait_idle(10)
    queue.stop()
    assert [e.item.prompt_id for e in queue.history()] == ids[2:]  # oldest dropped
    assert [e.item.prompt_id for e in queue.history(max_items=2, offset=1)] == ids[3:5]
    assert queue.history(max_items=5, offset=10) == []
    with pytest.raises(ValueError):
        queue.history(offset=-1)
    assert queue.delete_history([ids[2], ids[0]]) == [ids[2]]
    assert queue.history_size() == 3
    queue.clear_history()
    assert queue.history() == []


def test_clear_pending_and_stopped_queue_refuses_work():
    gate, started = threading.Event(), threading.Event()
    registry = blocking_registry(gate, started)
    queue = PromptQueue(Executor(registry))
    queue.start()
    queue.submit(validated(wait_doc(1), registry), wait_doc(1))
    for tag in (2, 3):
        queue.submit(validated(wait_doc(tag), registry), wait_doc(tag))
    assert started.wait(5)
    assert queue.clear() == 2
    assert queue.pending() == []
    queue.stop()
    gate.set()
    with pytest.raises(QueueClosedError):
        queue.submit(validated(wait_doc(4), registry), wait_doc(4))


def test_duplicate_prompt_id_is_refused_while_queued_and_reused_once_finished():
    registry, _ = make_registry(Counter())
    queue = PromptQueue(Executor(registry))
    doc = chain_document(3)
    queue.submit(validated(doc, registry), doc, prompt_id="abc")
    with pytest.raises(DuplicatePromptIdError, match="already queued or running"):
        queue.submit(validated(doc, registry), doc, prompt_id="abc")
    queue.start()
    assert queue.wait_idle(10)
    other = chain_document(3, start=5.0)
    queue.submit(validated(other, registry), other, prompt_id="abc")  # a finished id may be reused
    assert queue.wait_idle(10)
    queue.stop()
    assert queue.history_size() == 1 and queue.history_entry("abc").outputs["3"]["text"] == ["5.0"]


def test_numbers_front_and_explicit_order_the_queue_as_comfyui():
    gate, started = threading.Event(), threading.Event()
    registry = blocking_registry(gate, started)
    queue = PromptQueue(Executor(registry))
    queue.start()
    try:
        running = queue.submit(validated(wait_doc(0), registry), wait_doc(0))
        assert started.wait(5)
        later = queue.submit(validated(wait_doc(1), registry), wait_doc(1))
        first = queue.submit(validated(wait_doc(2), registry), wait_doc(2), front=True)
        middle = queue.submit(validated(wait_doc(3), registry), wait_doc(3), number=1.5)
        assert (running.number, later.number, first.number, middle.number) == (0, 1, -2, 1.5)
        assert [i.prompt_id for i in queue.pending()] == [first.prompt_id, later.prompt_id, middle.prompt_id]
        assert queue.submit(validated(wait_doc(4), registry), wait_doc(4)).number == 3  # explicit ones don't count
    finally:
        queue.clear()
        gate.set()
        queue.stop()


def test_free_request_clears_the_executor_cache_between_prompts():
    registry, calls = make_registry(Counter())
    executor = Executor(registry, ResultCache())
    queue = PromptQueue(executor)
    queue.start()
    doc = chain_document(3)
    queue.submit(validated(doc, registry), doc)
    assert queue.wait_idle(10) and len(executor.cache) == 3
    queue.request_free(free_memory=True)
    for _ in range(200):
        if len(executor.cache) == 0:
            break
        time.sleep(0.01)
    queue.stop()
    assert len(executor.cache) == 0


def test_a_stored_queue_comes_back_after_stop_and_refuses_what_no_longer_validates(tmp_path):
    from engine.store import PromptStore
    from engine.validation import validate_document

    gate, started = threading.Event(), threading.Event()
    registry = blocking_registry(gate, started)

    def parse(stored):
        report = validate_document(stored.document or stored.prompt, registry)
        if not report.ok:
            raise ValueError(report.format())
        return report.workflow

    first = PromptQueue(Executor(registry, ResultCache()), store=PromptStore(tmp_path / "q.sqlite3"))
    first.start()
    gate.set()
    done = first.submit(validated(wait_doc(1), registry), wait_doc(1), prompt_id="done")
    assert first.wait_idle()
    gate.clear()
    running = first.submit(validated(wait_doc(2), registry), wait_doc(2), prompt_id="running")
    assert started.wait(5)
    first.submit(validated(wait_doc(3), registry), wait_doc(3), prompt_id="pending")
    broken = wait_doc(4)
    first.submit(validated(broken, registry), {**broken, "nodes": {"1": {"type": "Gone", "inputs": {}}}},
                 prompt_id="stale")  # stands for a prompt whose plugin was removed before the restart
    first.stop()  # a shutdown, not a failure: "running" is not recorded as interrupted
    assert [e.item.prompt_id for e in first.history()] == ["done"]

    second = PromptQueue(Executor(registry, ResultCache()), store=PromptStore(tmp_path / "q.sqlite3"))
    assert second.restore(parse) == (1, 2)
    assert [i.prompt_id for i in second.pending()] == ["running", "pending"]
    assert [i.number for i in second.pending()] == [running.number, running.number + 1]
    stale = second.history_entry("stale")
    assert stale is not None and stale.status == "error" and "Gone" in stale.error["message"]
    assert second.history_entry("done").item.prompt == done.prompt
    gate.set()
    second.start()
    try:
        assert second.wait_idle()
        assert {e.item.prompt_id: e.status for e in second.history()} == {
            "done": "success", "stale": "error", "running": "success", "pending": "success"}
        assert second.submit(validated(wait_doc(5), registry), wait_doc(5)).number == running.number + 3
    finally:
        second.stop()
