"""The workspace database: SQLite in WAL mode with an append-only list of migrations.

Never edit a migration that has shipped; append a new one. `Store.open` brings any older
database forward, so a workspace made by an earlier protege keeps working.

Tables (what each stage reads and writes):
  datasets   named, versioned-by-content-hash sets of records, with lineage to their sources
  records    the canonical record (messages, label, metadata, provenance, review, split)
  calls      every model call: teacher requests, captured proxy traffic, judge calls
  feedback   ratings and corrections attached to a call
  runs       training and evaluation runs: config, status, metrics, where outputs went
  review_actions  every reviewer action on a record (append-only: a record's status is its latest)
  preferences     compare-mode verdicts between two models' answers to one input
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        n_records INTEGER NOT NULL,
        source TEXT,              -- JSON: how it was made (import file, distill run, ...)
        parents TEXT,             -- JSON list of dataset ids it was derived from
        created_at REAL NOT NULL,
        UNIQUE (name, version)
    );
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        messages TEXT NOT NULL,   -- JSON list of {role, content}
        label TEXT,
        metadata TEXT,            -- JSON
        provenance TEXT,          -- JSON: source file/line, teacher, prompt hash, cost
        review TEXT NOT NULL DEFAULT 'pending',
        split TEXT
    );
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,       -- teacher | capture | judge
        cache_key TEXT,           -- hash of (model, messages, parameters) for teacher calls
        model TEXT,
        request TEXT NOT NULL,    -- JSON, never with credentials
        response TEXT,            -- JSON
        status TEXT NOT NULL,     -- ok | error | rejected
        error TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost REAL,
        latency_ms REAL,
        tags TEXT,                -- JSON list
        created_at REAL NOT NULL
    );
    CREATE INDEX calls_cache_key ON calls(cache_key);
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        call_id INTEGER NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        rating REAL,
        correction TEXT,
        comment TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,       -- train | eval | distill
        config TEXT,              -- JSON
        status TEXT NOT NULL,     -- running | done | failed | interrupted
        metrics TEXT,             -- JSON
        output_dir TEXT,
        created_at REAL NOT NULL,
        finished_at REAL
    );
    """,
    # 2: reviewers' notes on records, and the lookups the review page and exports make.
    """
    ALTER TABLE records ADD COLUMN review_note TEXT;
    ALTER TABLE records ADD COLUMN reviewed_at REAL;
    CREATE INDEX records_dataset ON records(dataset_id, idx);
    CREATE INDEX calls_kind ON calls(kind, created_at);
    """,
    # 3: the review stage. Actions are never updated or deleted: an undo is an action of its own that
    # restores the value the undone action replaced, so the history is whole and the latest action
    # of a record is its current state. A record is found by dataset *name* and a key of its input
    # (review.actions.record_key), so reviews carry over to the dataset's later versions.
    """
    CREATE TABLE review_actions (
        id INTEGER PRIMARY KEY,
        dataset TEXT NOT NULL,        -- dataset name
        dataset_id INTEGER REFERENCES datasets(id) ON DELETE SET NULL,  -- the version on the page
        idx INTEGER NOT NULL,         -- the record's index in that version
        record_key TEXT NOT NULL,     -- hash of the record's input
        reviewer TEXT NOT NULL,
        action TEXT NOT NULL,         -- accept | edit | reject | undo
        status TEXT NOT NULL,         -- the record's status after the action
        old_value TEXT,               -- JSON {status, answer} before
        new_value TEXT,               -- JSON {status, answer, kind} after
        note TEXT,
        seconds REAL,                 -- time the reviewer spent on the record before acting
        undoes INTEGER REFERENCES review_actions(id),
        created_at REAL NOT NULL
    );
    CREATE INDEX review_actions_record ON review_actions(dataset, record_key, id);
    CREATE INDEX review_actions_reviewer ON review_actions(dataset, reviewer, id);
    CREATE TABLE preferences (
        id INTEGER PRIMARY KEY,
        dataset TEXT NOT NULL,
        dataset_id INTEGER REFERENCES datasets(id) ON DELETE SET NULL,
        idx INTEGER NOT NULL,
        record_key TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        model_a TEXT NOT NULL,        -- the two models, in the order given (not as shown)
        model_b TEXT NOT NULL,
        answer_a TEXT,
        answer_b TEXT,
        shown_left TEXT NOT NULL,     -- a | b: which one the page showed on the left
        verdict TEXT NOT NULL,        -- a | b | tie | both_bad | undo
        undoes INTEGER REFERENCES preferences(id),
        seconds REAL,
        created_at REAL NOT NULL
    );
    CREATE INDEX preferences_record ON preferences(dataset, record_key, id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """One connection shared by the threads of a process, serialised by a lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.lock = threading.RLock()

    @classmethod
    def open(cls, path: str | Path) -> Store:
        store = cls(path)
        store.migrate()
        return store

    @property
    def version(self) -> int:
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return row[0] or 0

    def migrate(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply every migration above the current version, each in its own transaction."""
        applied = []
        with self.lock:
            for number in range(self.version + 1, target + 1):
                script = MIGRATIONS[number - 1]
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(script):
                        self.conn.execute(statement)
                    self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                    self.conn.execute("COMMIT")
                except Exception:
                    self.conn.execute("ROLLBACK")
                    raise
                applied.append(number)
        return applied

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: an import with one bad row leaves the database as it was."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def execute(self, sql: str, params: tuple | dict = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.conn.execute(sql, params)

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()

    # Runs are shared by train, evaluate and distill, so their bookkeeping lives here.
    def start_run(self, name: str, kind: str, config: dict[str, Any], output_dir: str | None) -> int:
        with self.lock:
            self.conn.execute(
                "INSERT INTO runs (name, kind, config, status, output_dir, created_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET config=excluded.config, status=excluded.status, "
                "output_dir=excluded.output_dir",
                (name, kind, dumps(config), "running", output_dir, time.time()),
            )
            return self.conn.execute("SELECT id FROM runs WHERE name=?", (name,)).fetchone()[0]

    def finish_run(self, name: str, status: str, metrics: dict[str, Any] | None = None) -> None:
        self.execute(
            "UPDATE runs SET status=?, metrics=?, finished_at=? WHERE name=?",
            (status, dumps(metrics), time.time(), name),
        )

    def get_run(self, name: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM runs WHERE name=?", (name,))
        if not rows:
            return None
        run = dict(rows[0])
        run["config"], run["metrics"] = loads(run["config"]), loads(run["metrics"])
        return run


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]
