"""The queue and history on disk: one SQLite file (stdlib ``sqlite3``, WAL), so a restart loses nothing.

A prompt is written before the server answers ``/api/prompt``; its state moves
``pending`` -> ``running`` -> ``done`` (with its history entry). On start, whatever was
``pending`` or ``running`` when the process died is handed back to be queued again (a
running one counts a retry), the history comes back in finishing order, and prompt
numbers go on from where they were. Each change is one transaction with
``synchronous=FULL``: a ``kill -9`` (or a power cut) between two of them loses nothing
that a client was told.

Credentials a client put in ``extra_data`` (see ``SENSITIVE_KEYS``) are never written.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts (
    prompt_id    TEXT PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    number       REAL NOT NULL,
    sequence     INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    client_id    TEXT,
    prompt       TEXT NOT NULL,
    document     TEXT,
    extra_data   TEXT NOT NULL,
    outputs      TEXT NOT NULL,
    retries      INTEGER NOT NULL DEFAULT 0,
    history      TEXT,
    finished_seq INTEGER,
    size         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS prompts_by_state ON prompts (state, number, sequence);
CREATE INDEX IF NOT EXISTS prompts_by_finish ON prompts (finished_seq);
"""


class StoreError(RuntimeError):
    """The queue database cannot be used (message names the file and what to do)."""


@dataclass(frozen=True)
class StoredPrompt:
    """A queued prompt as kept on disk: everything needed to validate and run it again."""

    prompt_id: str
    number: float
    sequence: int
    prompt: Mapping[str, Any]
    submitted_at: float = 0.0
    client_id: str | None = None
    document: Mapping[str, Any] | None = None
    extra_data: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    retries: int = 0


_PROMPT_COLUMNS = ("prompt_id, number, sequence, prompt, submitted_at, client_id, document, extra_data, "
                   "outputs, retries")


def _stored(r: tuple[Any, ...]) -> StoredPrompt:
    return StoredPrompt(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], None if r[6] is None else json.loads(r[6]),
                        json.loads(r[7]), tuple(json.loads(r[8])), r[9])


def _dumps(value: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON; a client must never get them back.
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


class PromptStore:
    """Queue and history rows in one SQLite file; thread-safe (one connection, one lock)."""

    def __init__(self, path: Path, *, history_limit: int = 1000, history_max_bytes: int = 512 << 20) -> None:
        if history_limit < 1 or history_max_bytes < 1:
            raise ValueError("history_limit and history_max_bytes must be >= 1")
        self.path = Path(path)
        self.history_limit = history_limit
        self.history_max_bytes = history_max_bytes
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._open(self.path)
        except sqlite3.DatabaseError as error:
            # A file that is not (or no longer) a database: keep it for inspection, start anew.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            self.path.rename(aside)
            log.error("queue database %s is unreadable (%s); moved it to %s and started an empty one",
                      self.path, error, aside)
            return self._open(self.path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            db.close()
            raise StoreError(f"{path} was written by a newer version (schema {row[0]} > {SCHEMA_VERSION}); "
                             "upgrade, or move the file away to start with an empty queue")
        db.execute("PRAGMA quick_check").fetchone()  # raises DatabaseError on a damaged file
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ counters

    def counters(self) -> tuple[int, int]:
        """(next automatic prompt number, next sequence) as last stored."""
        with self._lock:
            rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('number', 'sequence')"))
        return int(rows.get("number", 0)), int(rows.get("sequence", 0))

    # ------------------------------------------------------------------ queue

    def add(self, item: StoredPrompt, *, next_number: int, next_sequence: int) -> None:
        """Store a new pending prompt and the counters after it, in one transaction."""
        extra = {k: v for k, v in item.extra_data.items() if k not in SENSITIVE_KEYS}
        prompt, document = _dumps(item.prompt), None if item.document is None else _dumps(item.document)
        extra_text, outputs = _dumps(extra), _dumps(list(item.outputs))
        size = len(prompt) + len(document or "") + len(extra_text)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO prompts (prompt_id, state, number, sequence, submitted_at, client_id, "
                "prompt, document, extra_data, outputs, retries, size) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (item.prompt_id, item.number, item.sequence, item.submitted_at, item.client_id, prompt, document,
                 extra_text, outputs, item.retries, size))
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 (("number", str(next_number)), ("sequence", str(next_sequence))))

    def mark_running(self, prompt_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE prompts SET state='running' WHERE prompt_id=? AND state='pending'", (prompt_id,))

    def finish(self, prompt_id: str, history: Mapping[str, Any]) -> None:
        """Record the history entry of a finished prompt and trim the history to its bounds."""
        text = json.dumps(history, allow_nan=False, separators=(",", ":"), default=repr)  # outputs may hold odd values
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            last = self._db.execute("SELECT COALESCE(MAX(finished_seq), 0) FROM prompts").fetchone()[0]
            self._db.execute(
                "UPDATE prompts SET state='done', history=?, finished_seq=?, size=size+? WHERE prompt_id=?",
                (text, last + 1, len(text), prompt_id))
            self._trim()

    def _trim(self) -> None:
        count, total = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM prompts WHERE state='done'").fetchone()
        if count <= self.history_limit and total <= self.history_max_bytes:
            return
        drop: list[str] = []
        for prompt_id, size in self._db.execute(
                "SELECT prompt_id, size FROM prompts WHERE state='done' ORDER BY finished_seq"):
            if count <= self.history_limit and total <= self.history_max_bytes:
                break
            drop.append(prompt_id)
            count, total = count - 1, total - size
        self._db.executemany("DELETE FROM prompts WHERE prompt_id=?", ((i,) for i in drop))

    def remove(self, prompt_ids: Iterable[str]) -> None:
        """Forget pending prompts (deleted from the queue by a client)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM prompts WHERE prompt_id=? AND state='pending'",
                                 ((i,) for i in prompt_ids))

    def clear_pending(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM prompts WHERE state='pending'")

    def unfinished(self) -> list[StoredPrompt]:
        """Prompts that were pending or running, in queue order; running ones count a retry.

        They become pending again, so each is handed back exactly once per start.
        """
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE prompts SET state='pending', retries=retries+1 WHERE state='running'")
            rows = self._db.execute(
                f"SELECT {_PROMPT_COLUMNS} FROM prompts WHERE state='pending' ORDER BY number, sequence").fetchall()
        return [_stored(row) for row in rows]

    # ------------------------------------------------------------------ history

    def history(self) -> list[tuple[StoredPrompt, dict[str, Any]]]:
        """(the prompt, its history record) of finished prompts, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_PROMPT_COLUMNS}, history FROM prompts WHERE state='done' ORDER BY finished_seq").fetchall()
        return [(_stored(row), json.loads(row[-1])) for row in rows]

    def delete_history(self, prompt_ids: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM prompts WHERE prompt_id=? AND state='done'", ((i,) for i in prompt_ids))

    def clear_history(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM prompts WHERE state='done'")
