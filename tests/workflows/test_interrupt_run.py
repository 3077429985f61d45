"""An interrupt stops a run within a second even while one sampler step takes many seconds
(the check lands between UNet blocks and attention chunks, not only between steps)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.validation import validate_document
from tests.workflows.test_engine_runs import document, make_executor, shared_runtime  # noqa: F401 - fixture


def test_interrupt_lands_within_a_second_inside_a_long_step(shared_runtime, settings: Any) -> None:  # noqa: F811
    executor = make_executor(shared_runtime, settings)
    workflow_document = document(width=2048, height=2048, steps=2)  # one step: far more than 3 s on a CPU
    workflow_document["nodes"]["6"]["inputs"]["tiled"] = True  # the untiled decode is refused at this size
    report = validate_document(workflow_document, executor.registry)
    assert report.ok, report.format()
    events: list[Any] = []
    cancel = threading.Event()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(
        executor.run(report.workflow, on_event=events.append, cancel=cancel)))
    thread.start()
    deadline = time.monotonic() + 120
    while not any(e.type == "node_started" and e.node_type == "SampleLatent" for e in events):
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    time.sleep(3.0)
    assert not [e for e in events if e.type == "node_progress"], "a step finished: pick a bigger size"
    cancel.set()
    interrupted = time.perf_counter()
    thread.join(30)
    latency = time.perf_counter() - interrupted
    assert not thread.is_alive() and result[0].status == "cancelled"
    assert latency < 2.0, f"the interrupt took {latency:.2f} s"
    assert events[-1].type == "run_cancelled" and events[-1].node_id == "5"
