"""A labeller's database: the gallery's images, by id, in SQLite; the tournament
(tournament.py) and the review of a model's decisions (review.py) keep their own tables beside them.

Safe to share between threads (one lock around the connection) and between processes (``BEGIN
IMMEDIATE`` transactions: the check of what a write depends on and the write happen together).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager

from beholder.core.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, priority REAL, active INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
TABLES = {"images", "meta"}


class SubmissionError(ValueError):
    """A submission that does not fit what is on screen (an unknown set or image, foreign ids, ...)."""


class ImageDatabase:
    """The images' table, shared by both apps. ``read_only`` opens the file without writing anything
    (for export); ``option`` names it in errors (``--db``). A subclass adds its ``TABLES_SQL``."""

    TABLES_SQL = ""

    def __init__(self, path: str, read_only: bool = False, option: str = "--db"):
        self.path, self.option = str(path), option
        self.lock = threading.RLock()
        self.db = self._connect(read_only)

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise UserError(f"{self.option} {self.path}: is a folder; give a file")
        if read_only and not os.path.isfile(self.path):
            raise UserError(f"{self.option} {self.path}: no such file")
        fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        try:
            if read_only:
                db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro", uri=True,
                                     check_same_thread=False, isolation_level=None)
            else:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not fresh and not TABLES <= tables:
                db.close()
                raise UserError(f"{self.option} {self.path}: not a beholder labeller database (its tables: "
                                f"{', '.join(sorted(tables)) or 'none'}); it was left as it is")
            if not read_only:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA + self.TABLES_SQL)
                columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
                if "active" not in columns:  # a database from before deleted images were tracked
                    db.execute("ALTER TABLE images ADD COLUMN active INTEGER NOT NULL DEFAULT 1")
        except sqlite3.DatabaseError as error:
            raise UserError(f"{self.option} {self.path}: not a readable SQLite database ({error})") from None
        return db

    @contextmanager
    def _write(self):
        """One transaction, taken before reading what it checks: no other thread or process can
        write in between. Rolled back whole on any error."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def tables(self) -> set[str]:
        return {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def sync_images(self, keys: list[str], priorities: dict[str, float] | None = None) -> None:
        """Make the pool the gallery's images now: new ones join, deleted ones leave it (their
        labels are kept, and :meth:`_images_gone` hears of them).
        ``priorities``: lower is drawn first (active labelling)."""
        with self._write():
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (key TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM listed")
            self.db.executemany("INSERT OR IGNORE INTO listed (key) VALUES (?)", [(k,) for k in keys])
            self.db.execute("INSERT OR IGNORE INTO images (key) SELECT key FROM listed")
            self.db.execute("UPDATE images SET active = (key IN (SELECT key FROM listed))")
            if priorities:
                self.db.executemany("UPDATE images SET priority = ? WHERE key = ?", [(p, k) for k, p in priorities.items()])
            self._images_gone({i for (i,) in self.db.execute("SELECT id FROM images WHERE active = 0")})

    def key_of(self, image_id: int) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT key FROM images WHERE id = ? AND active = 1", (image_id,)).fetchone()
        return row[0] if row else None

    def keys(self) -> dict[int, str]:
        """Every image ever labelled or listed, active or not: id -> key."""
        with self.lock:
            return dict(self.db.execute("SELECT id, key FROM images").fetchall())

    def active_ids(self) -> set[int]:
        with self.lock:
            return {i for (i,) in self.db.execute("SELECT id FROM images WHERE active = 1")}

    def _images_gone(self, gone: set[int]) -> None:
        """Inside :meth:`sync_images`' transaction: what a subclass withdraws of the images no longer in the gallery."""
