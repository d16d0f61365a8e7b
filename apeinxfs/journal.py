"""The append-only journal of kernel inputs, in SQLite (WAL) in the state directory.

A row is committed before the write(2) that caused it returns, so every acknowledged
write survives kill -9. Rows are (seq, time_us, kind, body); replaying them in seq order
through the kernel rebuilds all state. This module stores and reads rows; it does not
interpret them (kernel/events.py does).
"""
import os
import sqlite3

from .kernel.events import from_row, to_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class Journal:
    """An open journal file; one writer (the daemon) at a time."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def append(self, stamped: list[tuple[int, object]]) -> None:
        """Commit (time_us, event) pairs as one transaction."""
        rows = [(t,) + to_row(e) for t, e in stamped]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO journal (time_us, kind, body) VALUES (?, ?, ?)", rows)

    def replay(self):
        """Yield (seq, time_us, event) in order."""
        for seq, time_us, kind, body in self.db.execute("SELECT seq, time_us, kind, body FROM journal ORDER BY seq"):
            yield seq, time_us, from_row(kind, body)

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM journal").fetchone()[0]

    def close(self) -> None:
        self.db.close()
