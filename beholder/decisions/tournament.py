"""The tournament labeller's state, in SQLite: rounds of 4-image sets, what advanced, per rater.

A round shows 4 images of its pool at a time and the person picks which advance (0-4). Round 1's
pool is the whole gallery; round r's pool is what advanced in round r-1. An image's tier is the
number of rounds it advanced through, final once it is eliminated or has won the last round.
Every submission is one SQLite transaction (``BEGIN IMMEDIATE``: the check that the set is still
open and the writes happen together), committed before the next set is drawn, so a killed server
loses nothing and a submission counts once however many clients send it. The targets, and so the
number of rounds, are stored with the tournament.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass

from beholder.core.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, priority REAL, active INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS sets (
    id INTEGER PRIMARY KEY, rater TEXT NOT NULL, round INTEGER NOT NULL, image_ids TEXT NOT NULL,
    shown REAL NOT NULL, submitted REAL, undone INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS decisions (
    set_id INTEGER NOT NULL REFERENCES sets(id), image_id INTEGER NOT NULL REFERENCES images(id),
    rater TEXT NOT NULL, round INTEGER NOT NULL, advanced INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_by_rater ON decisions (rater, round, image_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
SET_SIZE = 4
TABLES = {"images", "sets", "decisions", "meta"}
DEFAULT_TARGETS = (0.5, 0.1, 0.4)


class SubmissionError(ValueError):
    """A submission that does not fit the set on screen (unknown set, foreign ids, ...)."""


@dataclass
class Shown:
    set_id: int
    round: int
    image_ids: list[int]


class Tournament:
    """One labeller database. Safe to share between threads (one lock around the connection) and
    between processes (``BEGIN IMMEDIATE`` transactions). ``read_only`` opens it without writing
    anything, for export. ``targets``: None takes the stored ones (or the default for a new one)."""

    def __init__(self, path: str, targets: list[float] | None = None, seed: int | None = None, read_only: bool = False,
                 option: str = "--db"):
        self.path, self.option = str(path), option
        self.lock = threading.RLock()
        self.random = random.Random(seed)
        self.db = self._connect(read_only)
        stored = json.loads(self._meta("targets") or "null")
        if read_only:
            self.targets = stored or list(DEFAULT_TARGETS)
            return
        self.targets = list(targets) if targets is not None else stored or list(DEFAULT_TARGETS)
        if stored and stored != self.targets and self.db.execute("SELECT 1 FROM decisions LIMIT 1").fetchone():
            raise UserError(f"--targets {','.join(map(str, self.targets))}: {self.path} was labelled with "
                            f"--targets {','.join(map(str, stored))}; use those (or a new --db)")
        with self._write():
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('targets', ?)", (json.dumps(self.targets),))

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
                db.executescript(SCHEMA)
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

    @property
    def rounds(self) -> int:
        return len(self.targets)

    def sync_images(self, keys: list[str], priorities: dict[str, float] | None = None) -> None:
        """Make the pool the gallery's images now: new ones join, deleted ones leave it (their
        labels are kept), and sets still open on a deleted image are withdrawn.
        ``priorities``: lower is drawn first (active labelling)."""
        with self._write():
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (key TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM listed")
            self.db.executemany("INSERT OR IGNORE INTO listed (key) VALUES (?)", [(k,) for k in keys])
            self.db.execute("INSERT OR IGNORE INTO images (key) SELECT key FROM listed")
            self.db.execute("UPDATE images SET active = (key IN (SELECT key FROM listed))")
            if priorities:
                self.db.executemany("UPDATE images SET priority = ? WHERE key = ?", [(p, k) for k, p in priorities.items()])
            gone = {i for (i,) in self.db.execute("SELECT id FROM images WHERE active = 0")}
            for set_id, image_ids in self.db.execute("SELECT id, image_ids FROM sets WHERE submitted IS NULL AND undone = 0").fetchall():
                if gone & set(json.loads(image_ids)):
                    self.db.execute("UPDATE sets SET undone = 1 WHERE id = ?", (set_id,))

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

    def _judged(self, rater: str, round_: int) -> dict[int, int]:
        rows = self.db.execute(
            "SELECT d.image_id, d.advanced FROM decisions d JOIN sets s ON s.id = d.set_id "
            "WHERE d.rater = ? AND d.round = ? AND s.undone = 0", (rater, round_))
        return dict(rows.fetchall())

    def _pending(self, rater: str, round_: int) -> list[int]:
        judged, active = self._judged(rater, round_), self.active_ids()
        if round_ == 1:
            pool = sorted(active)
        else:
            pool = [i for i, advanced in self._judged(rater, round_ - 1).items() if advanced and i in active]
        return [i for i in pool if i not in judged]

    def _open_set(self, rater: str) -> Shown | None:
        row = self.db.execute(
            "SELECT id, round, image_ids FROM sets WHERE rater = ? AND submitted IS NULL AND undone = 0 ORDER BY id DESC LIMIT 1",
            (rater,)).fetchone()
        return Shown(row[0], row[1], json.loads(row[2])) if row else None

    def open_set(self, rater: str) -> Shown | None:
        """The set on screen for ``rater``, if any (reads only)."""
        with self.lock:
            return self._open_set(rater)

    def next_set(self, rater: str) -> Shown | None:
        """The set on screen for ``rater``: the open one, or a new one (None when all is labelled).

        Winners move up promptly: the highest round with a full set waiting goes first.
        """
        with self._write():
            shown = self._open_set(rater)
            if shown:
                return shown
            pending = {r: self._pending(rater, r) for r in range(1, self.rounds + 1)}
            ready = [r for r in pending if len(pending[r]) >= SET_SIZE] or [r for r in pending if pending[r]]
            if not ready:
                return None
            round_ = max(ready)
            chosen = self._draw(pending[round_])
            cursor = self.db.execute("INSERT INTO sets (rater, round, image_ids, shown) VALUES (?, ?, ?, ?)",
                                     (rater, round_, json.dumps(chosen), time.time()))
            return Shown(cursor.lastrowid, round_, chosen)

    def _draw(self, candidates: list[int]) -> list[int]:
        """Images seen by fewest raters first (shared work), then the model's priority, then chance."""
        seen = dict(self.db.execute("SELECT image_id, COUNT(DISTINCT rater) FROM decisions GROUP BY image_id").fetchall())
        priority = dict(self.db.execute("SELECT id, priority FROM images WHERE priority IS NOT NULL").fetchall())
        shuffled = self.random.sample(candidates, len(candidates))
        shuffled.sort(key=lambda i: (seen.get(i, 0), priority.get(i, 0.0)))
        return shuffled[:SET_SIZE]

    def submit(self, rater: str, set_id: int, advanced: list[int]) -> None:
        """Record the set's decisions and close it, all or nothing; a set closes once."""
        with self._write():
            shown = self._open_set(rater)
            if shown is None or shown.set_id != set_id:
                raise SubmissionError(f"set {set_id} is not the set on screen for rater {rater!r}")
            foreign = set(advanced) - set(shown.image_ids)
            if foreign:
                raise SubmissionError(f"images {sorted(foreign)} are not in set {set_id}")
            closed = self.db.execute("UPDATE sets SET submitted = ? WHERE id = ? AND submitted IS NULL AND undone = 0",
                                     (time.time(), set_id))
            if closed.rowcount != 1:
                raise SubmissionError(f"set {set_id} was submitted already")
            self.db.executemany(
                "INSERT INTO decisions (set_id, image_id, rater, round, advanced) VALUES (?, ?, ?, ?, ?)",
                [(set_id, i, rater, shown.round, int(i in advanced)) for i in shown.image_ids])

    def undo(self, rater: str) -> Shown | None:
        """Take back the last submission; its set is shown again."""
        with self._write():
            last = self.db.execute(
                "SELECT id, round, image_ids FROM sets WHERE rater = ? AND submitted IS NOT NULL AND undone = 0 ORDER BY submitted DESC, id DESC LIMIT 1",
                (rater,)).fetchone()
            if last is None:
                return None
            self.db.execute("UPDATE sets SET undone = 1 WHERE rater = ? AND submitted IS NULL AND undone = 0", (rater,))
            self.db.execute("UPDATE sets SET undone = 1 WHERE id = ?", (last[0],))
            cursor = self.db.execute("INSERT INTO sets (rater, round, image_ids, shown) VALUES (?, ?, ?, ?)",
                                     (rater, last[1], last[2], time.time()))
            return Shown(cursor.lastrowid, last[1], json.loads(last[2]))

    def tiers(self, rater: str) -> dict[int, tuple[int, int]]:
        """Final results of ``rater``: image id -> (rounds advanced through, matches)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT d.image_id, d.round, d.advanced FROM decisions d JOIN sets s ON s.id = d.set_id "
                "WHERE d.rater = ? AND s.undone = 0 ORDER BY d.round", (rater,)).fetchall()
        state: dict[int, list] = {}
        for image_id, round_, advanced in rows:
            entry = state.setdefault(image_id, [0, 0, False])  # rounds advanced, matches, final
            entry[1] += 1
            if advanced:
                entry[0] = round_
                entry[2] = round_ == self.rounds
            else:
                entry[2] = True
        return {i: (tier, matches) for i, (tier, matches, final) in state.items() if final}

    def raters(self) -> list[str]:
        with self.lock:
            return [r for (r,) in self.db.execute("SELECT DISTINCT rater FROM sets ORDER BY rater")]

    def progress(self, rater: str) -> dict:
        """What the page shows: this round's acceptance against its target, labelled / pool, labels per hour."""
        with self.lock:
            shown = self._open_set(rater)
            round_ = shown.round if shown else self.rounds
            judged = self._judged(rater, round_)
            total = self.db.execute("SELECT COUNT(*) FROM images WHERE active = 1").fetchone()[0]
            first = self.db.execute("SELECT MIN(shown) FROM sets WHERE rater = ?", (rater,)).fetchone()[0]
        labelled = len(self.tiers(rater))
        hours = (time.time() - first) / 3600 if first else 0
        return {
            "round": round_,
            "rounds": self.rounds,
            "target": self.targets[round_ - 1],
            "judged_in_round": len(judged),
            "advanced_in_round": sum(judged.values()),
            "acceptance": sum(judged.values()) / len(judged) if judged else None,
            "labelled": labelled,
            "pool": total,
            "labels_per_hour": labelled / hours if hours > 1 / 360 else None,
        }
