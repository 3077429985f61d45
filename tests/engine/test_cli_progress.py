"""The CLI's progress line counts the workflow's nodes; nodes added by graph expansion (events
naming a ``parent_node``) do not push it past the total."""

from __future__ import annotations

import io

from engine.cli import ProgressRenderer
from engine.scheduler import Event


def test_expanded_nodes_do_not_count_towards_the_workflow_total() -> None:
    stream = io.StringIO()
    progress = ProgressRenderer(stream, enabled=True)
    progress(Event("run_started", "r", data={"nodes": 2}))
    progress(Event("node_cached", "r", "1", "Count"))
    for child in ("2.0.0.1", "2.0.0.2"):
        progress(Event("node_finished", "r", child, "Count", seconds=0.0,
                       data={"display_node": "2", "parent_node": "2"}))
    progress(Event("node_finished", "r", "2", "Loop", seconds=0.0))
    assert (progress.done, progress.total) == (2, 2)
    assert "done 2 Loop" in stream.getvalue()
