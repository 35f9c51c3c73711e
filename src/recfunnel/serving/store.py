"""The live rating store: ratings posted to the service, in an embedded SQLite database.

    store = RatingStore("runs/default/serving/ratings.sqlite3")
    store.add(42, [(1193, 5), (661, 3)], floor=last_known_time)   # committed on return
    store.history(42)   # [(movie_id, rating, timestamp), ...], the latest rating per movie

Why SQLite in WAL mode: one file next to the run, no server to run, readers never block the
writer, and every write is a transaction. Durability: `add` returns only after COMMIT, and
with `synchronous=FULL` the commit fsyncs the write-ahead log, so an acknowledged rating
survives a kill -9 of the server and also a power cut. (NORMAL in WAL mode would survive a
kill -9 too, since the log is in the OS page cache, but could lose the last commits on power
loss; ratings are written rarely next to reads, so the fsync is the better trade.)
Concurrent writers (threads or processes) are serialised by SQLite's lock; `busy_timeout`
makes a writer wait for it instead of failing with "database is locked".
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from recfunnel.errors import RecfunnelError

BUSY_TIMEOUT_MS = 10_000  # how long a writer waits for another's lock before failing

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: the later of two ratings wins
    user_id INTEGER NOT NULL,
    movie_id INTEGER NOT NULL,
    rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
    timestamp INTEGER NOT NULL              -- unix seconds, what the funnel reads as history
);
CREATE INDEX IF NOT EXISTS ratings_user ON ratings (user_id, seq);
"""


class StoreError(RecfunnelError):
    """The rating database cannot be opened or written (path, permissions, corruption)."""


class RatingStore:
    """Live ratings by user, in the SQLite file `path` (created with its folder if absent).

    One connection per thread (sqlite3 connections must not be shared across threads without
    care); every call is one short transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the rating database {self.path}: {error}") from None
        if str(mode).lower() != "wal":  # e.g. a file system without shared memory support
            raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: transactions are the explicit BEGIN ... COMMIT below.
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def add(
        self, user_id: int, ratings: Iterable[tuple[int, int]], *, floor: int = 0
    ) -> list[tuple[int, int, int]]:
        """Record `ratings` ((movie_id, rating) pairs) for `user_id` and return them as stored
        (movie_id, rating, timestamp). The timestamp is the server's clock, but never earlier
        than `floor` + 1 (the user's last known rating) or the user's last stored one: a
        request's "now" follows its newest history entry, and the funnel drops history dated
        after "now" (`types.Requests`), so a rating must never look older than what it
        follows. The call returns only after the transaction is committed."""
        pairs = [(int(m), int(r)) for m, r in ratings]
        db = self._connect()
        try:
            # IMMEDIATE takes the write lock first, so the last timestamp read below cannot
            # be overtaken by another writer before this insert.
            db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = db.execute(
                    "SELECT COALESCE(MAX(timestamp), 0) FROM ratings WHERE user_id = ?",
                    (user_id,),
                ).fetchone()
                stamp = max(int(time.time()), int(floor) + 1, int(last))
                rows = [(user_id, m, r, stamp) for m, r in pairs]
                db.executemany(
                    "INSERT INTO ratings (user_id, movie_id, rating, timestamp) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise StoreError(f"cannot write to the rating database {self.path}: {error}") from None
        return [(m, r, stamp) for m, r in pairs]

    def history(self, user_id: int) -> list[tuple[int, int, int]]:
        """The user's live ratings (movie_id, rating, timestamp), the latest per movie, in
        the order the movies were first rated."""
        try:
            rows = (
                self._connect()
                .execute(
                    "SELECT movie_id, rating, timestamp FROM ratings "
                    "WHERE user_id = ? ORDER BY seq",
                    (user_id,),
                )
                .fetchall()
            )
        except sqlite3.Error as error:
            raise StoreError(f"cannot read the rating database {self.path}: {error}") from None
        latest = {movie: (movie, rating, stamp) for movie, rating, stamp in rows}
        return list(latest.values())

    def count(self) -> int:
        """Rows stored (every rating ever posted, repeats included)."""
        return int(self._connect().execute("SELECT COUNT(*) FROM ratings").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
