"""The agent's local SQLite: last applied desired state and the report outbox.

Both survive the agent's own restart, so a node cut off from the hub keeps
serving what it last applied and loses no report. SQLite in WAL mode with
synchronous=NORMAL is durable across process crashes (SIGKILL); only a
power loss can drop the last commit, and then the hub simply resends state.

The outbox's sequence numbers count within an *incarnation*: a random id
minted when this database is created. If the database is lost (a new disk,
a replaced pod), the next one is a new report stream starting at seq 1, and
the hub, which de-duplicates on (node, incarnation, seq), stores its reports
instead of taking them for re-sends of the old stream's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, created_at REAL NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identity (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, created_at REAL NOT NULL, payload TEXT NOT NULL,
    reason TEXT NOT NULL, dead_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class LocalObject:
    id: str
    kind: str
    name: str
    version: int
    spec: dict


@dataclass(frozen=True, slots=True)
class PendingReport:
    seq: int
    kind: str
    created_at: float
    payload: dict


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A report set aside, never sent: the hub could not store it (see edge_agent/report_check.py)."""

    seq: int
    kind: str
    created_at: float
    payload: str
    """The payload's JSON as queued (it may not even parse as a report)."""
    reason: str
    dead_at: float


class LocalState:
    """Thread-safe: the runtime's threads append reports while the link sends them."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "agent.db"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO identity (key, value) VALUES ('incarnation', ?) ON CONFLICT(key) DO NOTHING",
                (uuid.uuid4().hex,),
            )
            (self.incarnation,) = self._db.execute("SELECT value FROM identity WHERE key = 'incarnation'").fetchone()
            # Reports queued from here on have not been sent yet; the first Welcome checks
            # them against what the hub stored (see `resume_after`). Kept from an earlier
            # run that never reached the hub.
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('unchecked_after', "
                "coalesce((SELECT value FROM meta WHERE key = 'last_seq'), 0)) ON CONFLICT(key) DO NOTHING"
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- desired state ------------------------------------------------------

    def held(self) -> dict[str, int]:
        with self._lock:
            return {i: v for i, v in self._db.execute("SELECT id, version FROM objects")}

    def objects(self, kind: str | None = None) -> list[LocalObject]:
        q, args = "SELECT id, kind, name, version, spec FROM objects", ()
        if kind:
            q, args = q + " WHERE kind = ?", (kind,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY version", args).fetchall()
        return [LocalObject(i, k, n, v, json.loads(s)) for i, k, n, v, s in rows]

    def get(self, object_id: str) -> LocalObject | None:
        with self._lock:
            row = self._db.execute("SELECT id, kind, name, version, spec FROM objects WHERE id = ?", (object_id,)).fetchone()
        return LocalObject(row[0], row[1], row[2], row[3], json.loads(row[4])) if row else None

    def save(self, obj: LocalObject) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO objects (id, kind, name, version, spec) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET kind=excluded.kind, name=excluded.name, version=excluded.version, spec=excluded.spec",
                (obj.id, obj.kind, obj.name, obj.version, json.dumps(obj.spec)),
            )

    def remove(self, object_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM objects WHERE id = ?", (object_id,))

    # -- outbox -------------------------------------------------------------

    def append(self, kind: str, payload: dict, created_at: float) -> int:
        """Durably queue a report; returns its sequence number (never reused)."""
        body = json.dumps(payload)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO meta (key, value) VALUES ('last_seq', 0) ON CONFLICT(key) DO NOTHING")
                self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'last_seq'")
                (seq,) = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
                self._db.execute(
                    "INSERT INTO outbox (seq, kind, created_at, payload) VALUES (?, ?, ?, ?)", (seq, kind, created_at, body)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(seq)

    def pending(self, after: int, limit: int) -> list[PendingReport]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, created_at, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [PendingReport(s, k, c, json.loads(p)) for s, k, c, p in rows]

    def resume_after(self, hub_last: int) -> int:
        """Make sure no new report reuses a seq the hub stored for this incarnation.

        ``hub_last`` is the Welcome's highest stored seq. It is above our own counter only
        if this database was restored from an old backup: the counter then moves past it,
        and reports queued since this state was opened and not yet checked against a
        Welcome (never sent, so never stored) are renumbered after it; the backup's own
        reports keep their numbers (re-sending those is harmless: the hub has them, the
        same ones). Returns how many reports were renumbered.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
                last, unchecked = int(meta.get("last_seq", 0)), meta.get("unchecked_after")
                moved = 0
                if hub_last > last:
                    rows = [] if unchecked is None else [s for (s,) in self._db.execute(
                        "SELECT seq FROM outbox WHERE seq > ? ORDER BY seq", (unchecked,))]
                    # Ascending, each to a number above every seq in the table: no clash.
                    for moved, old in enumerate(rows, start=1):
                        self._db.execute("UPDATE outbox SET seq = ? WHERE seq = ?", (hub_last + moved, old))
                    self._db.execute("INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (hub_last + moved,))
                self._db.execute("DELETE FROM meta WHERE key = 'unchecked_after'")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return moved

    def dead_letter(self, seq: int, reason: str) -> None:
        """Move one report from the outbox to the dead-letter table, never to be sent."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letter (seq, kind, created_at, payload, reason, dead_at) "
                    "SELECT seq, kind, created_at, payload, ?, ? FROM outbox WHERE seq = ?", (reason, time.time(), seq)
                )
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, created_at, payload, reason, dead_at FROM dead_letter ORDER BY seq").fetchall()
        return [DeadLetter(*r) for r in rows]

    def dead_letter_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM dead_letter").fetchone()[0])

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return int(row[0]) if row else 0
