"""Rate counters for outbound limits: messages and recipients per subject.

A subject is "user:<login>" or "address:<ip>" (`postvakt.policy.limits.Subject`).
Each counter belongs to a fixed window (the clock hour, the UTC day): a count
whose window has ended reads as zero and is overwritten by the next add. Every
session of the server process shares one store; `now` is always a parameter
(wall-clock seconds, as for grants) so tests can pin time.

The memory store suits one process; with `snapshot` it also rewrites a JSON
view (at most every SNAPSHOT_INTERVAL) for `postvakt limits show`. The SQLite
store (`[store] state = "sqlite"`) survives a restart and is shared by worker
processes on one machine; the Redis one is in `postvakt.store.redis`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from postvakt import sqlitedb
from postvakt.policy.limits import DAY, HOUR, Usage, window_start

MESSAGES = "messages"
RECIPIENTS = "recipients"
WINDOWS = (HOUR, DAY)
# Bound on subjects kept in memory; under a flood of addresses the oldest go first.
MAX_SUBJECTS = 100_000
# How stale the JSON view of the memory store may be (it is a view for the admin).
SNAPSHOT_INTERVAL = 1.0


@dataclass(frozen=True)
class SubjectUsage:
    """One subject's counters, for `limits show`."""

    subject: str
    usage: Usage


class CounterStore(Protocol):
    def add(self, subject: str, messages: int, recipients: int, now: float) -> None: ...
    def usage(self, subject: str, now: float) -> Usage: ...
    def all(self, now: float) -> list[SubjectUsage]: ...
    def flush(self, now: float) -> None: ...


def _usage(rows: dict[tuple[str, float], tuple[float, int]], now: float) -> Usage:
    def get(metric: str, window: float) -> int:
        start, count = rows.get((metric, window), (0.0, 0))
        return count if start == window_start(window, now) else 0

    return Usage(
        messages_hour=get(MESSAGES, HOUR),
        messages_day=get(MESSAGES, DAY),
        recipients_hour=get(RECIPIENTS, HOUR),
        recipients_day=get(RECIPIENTS, DAY),
    )


def _live(usage: Usage) -> bool:
    return bool(
        usage.messages_day or usage.recipients_day or usage.messages_hour or usage.recipients_hour
    )


class MemoryCounterStore:
    """Counters in this process's memory; gone after a restart."""

    def __init__(self, snapshot: Path | None = None) -> None:
        # subject -> (metric, window) -> (window start, count)
        self._rows: dict[str, dict[tuple[str, float], tuple[float, int]]] = {}
        self.snapshot = snapshot
        self._written = float("-inf")
        self._dirty = False

    def add(self, subject: str, messages: int, recipients: int, now: float) -> None:
        rows = self._rows.setdefault(subject, {})
        for metric, amount in ((MESSAGES, messages), (RECIPIENTS, recipients)):
            for window in WINDOWS:
                start = window_start(window, now)
                old_start, count = rows.get((metric, window), (start, 0))
                rows[(metric, window)] = (start, (count if old_start == start else 0) + amount)
        if len(self._rows) > MAX_SUBJECTS:
            self._forget(now)
        self._dirty = True
        if now - self._written >= SNAPSHOT_INTERVAL:
            self.flush(now)

    def _forget(self, now: float) -> None:
        for subject in [s for s, rows in self._rows.items() if not _live(_usage(rows, now))]:
            del self._rows[subject]
        while len(self._rows) > MAX_SUBJECTS:
            del self._rows[next(iter(self._rows))]

    def usage(self, subject: str, now: float) -> Usage:
        rows = self._rows.get(subject)
        return _usage(rows, now) if rows else Usage()

    def all(self, now: float) -> list[SubjectUsage]:
        out = [SubjectUsage(s, _usage(rows, now)) for s, rows in self._rows.items()]
        return sorted((u for u in out if _live(u.usage)), key=lambda u: u.subject)

    def flush(self, now: float) -> None:
        """Rewrite the JSON view if anything changed (atomically; a view only)."""
        if self.snapshot is None or not self._dirty:
            return
        self._dirty = False
        self._written = now
        data = {
            "written": now,
            "subjects": {
                u.subject: [
                    u.usage.messages_hour,
                    u.usage.messages_day,
                    u.usage.recipients_hour,
                    u.usage.recipients_day,
                ]
                for u in self.all(now)
            },
        }
        tmp = self.snapshot.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            tmp.replace(self.snapshot)
        except OSError:
            pass  # never let the view break mail

    @staticmethod
    def read_snapshot(path: Path, now: float) -> list[SubjectUsage]:
        """The view as `limits show` sees it; counts of ended windows read as zero."""
        try:
            data = json.loads(path.read_text())
            written = float(data["written"])
            subjects = dict(data["subjects"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        same_hour = window_start(HOUR, written) == window_start(HOUR, now)
        same_day = window_start(DAY, written) == window_start(DAY, now)
        out = []
        for subject, (mh, md, rh, rd) in subjects.items():
            usage = Usage(
                messages_hour=int(mh) if same_hour else 0,
                messages_day=int(md) if same_day else 0,
                recipients_hour=int(rh) if same_hour else 0,
                recipients_day=int(rd) if same_day else 0,
            )
            if _live(usage):
                out.append(SubjectUsage(str(subject), usage))
        return sorted(out, key=lambda u: u.subject)


class SqliteCounterStore:
    """Counters in data_dir/counters.sqlite3: survive restarts, shared by processes."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlitedb.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS counters (subject TEXT NOT NULL, metric TEXT NOT NULL,"
            " window REAL NOT NULL, start REAL NOT NULL, count INTEGER NOT NULL,"
            " PRIMARY KEY (subject, metric, window))"
        )

    def add(self, subject: str, messages: int, recipients: int, now: float) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for metric, amount in ((MESSAGES, messages), (RECIPIENTS, recipients)):
                    for window in WINDOWS:
                        start = window_start(window, now)
                        self._db.execute(
                            "INSERT INTO counters(subject, metric, window, start, count) VALUES (?, ?, ?, ?, ?)"
                            " ON CONFLICT(subject, metric, window) DO UPDATE SET"
                            " count = CASE WHEN start = excluded.start THEN count + excluded.count"
                            " ELSE excluded.count END, start = excluded.start",
                            (subject, metric, window, start, amount),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _rows(self, subject: str | None) -> dict[str, dict[tuple[str, float], tuple[float, int]]]:
        with self._lock:
            if subject is None:
                cur = self._db.execute("SELECT subject, metric, window, start, count FROM counters")
            else:
                cur = self._db.execute(
                    "SELECT subject, metric, window, start, count FROM counters WHERE subject = ?",
                    (subject,),
                )
            rows = cur.fetchall()
        out: dict[str, dict[tuple[str, float], tuple[float, int]]] = {}
        for s, metric, window, start, count in rows:
            out.setdefault(s, {})[(metric, float(window))] = (float(start), int(count))
        return out

    def usage(self, subject: str, now: float) -> Usage:
        rows = self._rows(subject).get(subject)
        return _usage(rows, now) if rows else Usage()

    def all(self, now: float) -> list[SubjectUsage]:
        with self._lock:
            self._db.execute("DELETE FROM counters WHERE start < ?", (window_start(DAY, now),))
        out = [SubjectUsage(s, _usage(rows, now)) for s, rows in self._rows(None).items()]
        return sorted((u for u in out if _live(u.usage)), key=lambda u: u.subject)

    def flush(self, now: float) -> None:
        """Nothing to do: every add is already on disk."""
