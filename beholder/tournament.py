"""The tournament labeller's state, in SQLite: rounds of 4-image sets, what advanced, per rater.

A round shows 4 images of its pool at a time and the person picks which advance (0-4). Round 1's
pool is the whole gallery; round r's pool is what advanced in round r-1. An image's tier is the
number of rounds it advanced through, final once it is eliminated or has won the last round.
Every submission is committed before the next set is drawn, so a killed server loses nothing.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, priority REAL);
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


class SubmissionError(ValueError):
    """A submission that does not fit the set on screen (unknown set, foreign ids, ...)."""


@dataclass
class Shown:
    set_id: int
    round: int
    image_ids: list[int]


class Tournament:
    def __init__(self, path: str, targets: list[float] = (0.5, 0.1, 0.4), seed: int | None = None):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.targets = list(targets)
        self.random = random.Random(seed)

    @property
    def rounds(self) -> int:
        return len(self.targets)

    def add_images(self, keys: list[str], priorities: dict[str, float] | None = None) -> None:
        """The gallery's images (idempotent). ``priorities``: lower is drawn first (active labelling)."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO images (key) VALUES (?)", [(k,) for k in keys])
            if priorities:
                self.db.executemany("UPDATE images SET priority = ? WHERE key = ?", [(p, k) for k, p in priorities.items()])

    def key_of(self, image_id: int) -> str | None:
        row = self.db.execute("SELECT key FROM images WHERE id = ?", (image_id,)).fetchone()
        return row[0] if row else None

    def _judged(self, rater: str, round_: int) -> dict[int, int]:
        rows = self.db.execute(
            "SELECT d.image_id, d.advanced FROM decisions d JOIN sets s ON s.id = d.set_id "
            "WHERE d.rater = ? AND d.round = ? AND s.undone = 0", (rater, round_))
        return dict(rows.fetchall())

    def _pending(self, rater: str, round_: int) -> list[int]:
        judged = self._judged(rater, round_)
        if round_ == 1:
            pool = [i for (i,) in self.db.execute("SELECT id FROM images")]
        else:
            pool = [i for i, advanced in self._judged(rater, round_ - 1).items() if advanced]
        return [i for i in pool if i not in judged]

    def open_set(self, rater: str) -> Shown | None:
        row = self.db.execute(
            "SELECT id, round, image_ids FROM sets WHERE rater = ? AND submitted IS NULL AND undone = 0 ORDER BY id DESC LIMIT 1",
            (rater,)).fetchone()
        return Shown(row[0], row[1], json.loads(row[2])) if row else None

    def next_set(self, rater: str) -> Shown | None:
        """The set on screen for ``rater``: the open one, or a new one (None when all is labelled).

        Winners move up promptly: the highest round with a full set waiting goes first.
        """
        shown = self.open_set(rater)
        if shown:
            return shown
        pending = {r: self._pending(rater, r) for r in range(1, self.rounds + 1)}
        ready = [r for r in pending if len(pending[r]) >= SET_SIZE] or [r for r in pending if pending[r]]
        if not ready:
            return None
        round_ = max(ready)
        chosen = self._draw(pending[round_])
        with self.db:
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
        shown = self.open_set(rater)
        if shown is None or shown.set_id != set_id:
            raise SubmissionError(f"set {set_id} is not the set on screen for rater {rater!r}")
        foreign = set(advanced) - set(shown.image_ids)
        if foreign:
            raise SubmissionError(f"images {sorted(foreign)} are not in set {set_id}")
        with self.db:  # one transaction: the decisions and the set's closing
            self.db.executemany(
                "INSERT INTO decisions (set_id, image_id, rater, round, advanced) VALUES (?, ?, ?, ?, ?)",
                [(set_id, i, rater, shown.round, int(i in advanced)) for i in shown.image_ids])
            self.db.execute("UPDATE sets SET submitted = ? WHERE id = ?", (time.time(), set_id))

    def undo(self, rater: str) -> Shown | None:
        """Take back the last submission; its set is shown again."""
        last = self.db.execute(
            "SELECT id, round, image_ids FROM sets WHERE rater = ? AND submitted IS NOT NULL AND undone = 0 ORDER BY submitted DESC, id DESC LIMIT 1",
            (rater,)).fetchone()
        if last is None:
            return None
        with self.db:
            self.db.execute("UPDATE sets SET undone = 1 WHERE rater = ? AND submitted IS NULL AND undone = 0", (rater,))
            self.db.execute("UPDATE sets SET undone = 1 WHERE id = ?", (last[0],))
            cursor = self.db.execute("INSERT INTO sets (rater, round, image_ids, shown) VALUES (?, ?, ?, ?)",
                                     (rater, last[1], last[2], time.time()))
        return Shown(cursor.lastrowid, last[1], json.loads(last[2]))

    def tiers(self, rater: str) -> dict[int, tuple[int, int]]:
        """Final tiers of ``rater``: image id -> (tier, matches)."""
        rows = self.db.execute(
            "SELECT d.image_id, d.round, d.advanced FROM decisions d JOIN sets s ON s.id = d.set_id "
            "WHERE d.rater = ? AND s.undone = 0 ORDER BY d.round", (rater,)).fetchall()
        state: dict[int, list] = {}
        for image_id, round_, advanced in rows:
            entry = state.setdefault(image_id, [0, 0, False])  # tier, matches, final
            entry[1] += 1
            if advanced:
                entry[0] = round_
                entry[2] = round_ == self.rounds
            else:
                entry[2] = True
        return {i: (tier, matches) for i, (tier, matches, final) in state.items() if final}

    def raters(self) -> list[str]:
        return [r for (r,) in self.db.execute("SELECT DISTINCT rater FROM sets ORDER BY rater")]

    def progress(self, rater: str) -> dict:
        """What the page shows: this round's acceptance against its target, labelled / pool, labels per hour."""
        shown = self.open_set(rater)
        round_ = shown.round if shown else self.rounds
        judged = self._judged(rater, round_)
        total = self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        labelled = len(self.tiers(rater))
        first = self.db.execute("SELECT MIN(shown) FROM sets WHERE rater = ?", (rater,)).fetchone()[0]
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
