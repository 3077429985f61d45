"""engine.store: the queue and history survive a restart and a kill -9; bounds; damaged files."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.store import PromptStore, StoredPrompt

ROOT = Path(__file__).resolve().parents[2]


def _item(prompt_id: str, number: float, sequence: int, **extra: object) -> StoredPrompt:
    return StoredPrompt(prompt_id, number, sequence, {"1": {"class_type": "X", "inputs": {"v": sequence}}},
                        submitted_at=100.0 + sequence, client_id="c1", outputs=("1",), **extra)  # type: ignore[arg-type]


def test_a_restart_gets_back_the_queue_in_order_the_running_one_retried_and_the_history(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "queue.sqlite3")
    for sequence, (prompt_id, number) in enumerate([("a", 0), ("b", 1), ("front", -2), ("c", 3)], start=1):
        store.add(_item(prompt_id, number, sequence), next_number=number + 1, next_sequence=sequence + 1)
    store.mark_running("front")
    store.finish("front", {"status": {"completed": True}, "outputs": {"9": {"images": []}}})
    store.mark_running("a")  # the process dies while "a" runs
    store.remove(["b"])  # deleted by a client
    del store  # no close(): as after a crash

    again = PromptStore(tmp_path / "queue.sqlite3")
    unfinished = again.unfinished()
    assert [(p.prompt_id, p.number, p.retries) for p in unfinished] == [("a", 0, 1), ("c", 3, 0)]
    assert unfinished[0].prompt == {"1": {"class_type": "X", "inputs": {"v": 1}}}
    assert unfinished[0].outputs == ("1",) and unfinished[0].client_id == "c1"
    [(done, record)] = again.history()
    assert done.prompt_id == "front" and done.number == -2 and done.prompt == {"1": {"class_type": "X", "inputs": {"v": 3}}}
    assert record == {"status": {"completed": True}, "outputs": {"9": {"images": []}}}
    assert again.counters() == (4, 5)
    assert [p.prompt_id for p in again.unfinished()] == ["a", "c"]  # handed back once; no second retry
    assert [p.retries for p in again.unfinished()] == [1, 0]


def test_history_is_bounded_by_count_and_by_bytes_dropping_the_oldest(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "q.sqlite3", history_limit=3)
    for i in range(5):
        store.add(_item(f"p{i}", i, i), next_number=i + 1, next_sequence=i + 1)
        store.finish(f"p{i}", {"i": i})
    assert [p.prompt_id for p, _ in store.history()] == ["p2", "p3", "p4"]
    small = PromptStore(tmp_path / "small.sqlite3", history_max_bytes=2000)
    for i in range(5):
        small.add(_item(f"p{i}", i, i), next_number=i + 1, next_sequence=i + 1)
        small.finish(f"p{i}", {"blob": "x" * 900})
    kept = [p.prompt_id for p, _ in small.history()]
    assert kept == ["p4"] or kept == ["p3", "p4"], kept
    assert len(kept) < 5


def test_credentials_are_never_written_and_nan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = PromptStore(path)
    store.add(_item("a", 0, 1, extra_data={"auth_token_comfy_org": "SECRET-123", "client_id": "c1"}),
              next_number=1, next_sequence=2)
    store.close()
    assert b"SECRET-123" not in b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert PromptStore(path).unfinished()[0].extra_data == {"client_id": "c1"}
    with pytest.raises(ValueError, match="JSON compliant"):
        PromptStore(path).add(StoredPrompt("n", 1, 3, {"1": {"inputs": {"cfg": math.nan}}}),
                              next_number=2, next_sequence=4)


def test_history_delete_and_clear_and_pending_clear(tmp_path: Path) -> None:
    store = PromptStore(tmp_path / "q.sqlite3")
    for i in range(4):
        store.add(_item(f"p{i}", i, i), next_number=i + 1, next_sequence=i + 1)
    store.finish("p0", {"i": 0})
    store.finish("p1", {"i": 1})
    store.delete_history(["p0", "p2"])  # p2 is pending: not history, kept
    assert [p.prompt_id for p, _ in store.history()] == ["p1"]
    store.clear_pending()
    assert store.unfinished() == []
    store.clear_history()
    assert store.history() == []


def test_a_damaged_file_is_moved_aside_and_a_fresh_queue_starts(tmp_path: Path, caplog) -> None:
    path = tmp_path / "queue.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = PromptStore(path)
    assert store.unfinished() == [] and store.counters() == (0, 0)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("queue.sqlite3.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert "unreadable" in caplog.text


def test_kill_9_between_writes_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    """A child process stores prompts and prints each id once stored; SIGKILL at a random point."""
    path = tmp_path / "queue.sqlite3"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine.store import PromptStore, StoredPrompt
        store = PromptStore({str(path)!r})
        for i in range(100000):
            store.add(StoredPrompt(f"p{{i}}", i, i, {{"n": i, "pad": "x" * 2000}}), next_number=i + 1,
                      next_sequence=i + 1)
            if i % 2:
                store.mark_running(f"p{{i}}")
                store.finish(f"p{{i}}", {{"i": i}})
            print(f"p{{i}}", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    assert child.stdout is not None
    for line in child.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 60:
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait(30)
    store = PromptStore(path)
    pending = {p.prompt_id for p in store.unfinished()}
    done = {p.prompt_id for p, _ in store.history()}
    for prompt_id in acknowledged:
        number = int(prompt_id[1:])
        assert prompt_id in (done if number % 2 else pending), prompt_id
    assert store.counters()[0] >= len(acknowledged)
