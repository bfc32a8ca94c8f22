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
import random
import time
from dataclasses import dataclass

from beholder.core.errors import UserError
from beholder.decisions.database import ImageDatabase, SubmissionError

SCHEMA = """
CREATE TABLE IF NOT EXISTS sets (
    id INTEGER PRIMARY KEY, rater TEXT NOT NULL, round INTEGER NOT NULL, image_ids TEXT NOT NULL,
    shown REAL NOT NULL, submitted REAL, undone INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS decisions (
    set_id INTEGER NOT NULL REFERENCES sets(id), image_id INTEGER NOT NULL REFERENCES images(id),
    rater TEXT NOT NULL, round INTEGER NOT NULL, advanced INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_by_rater ON decisions (rater, round, image_id);
"""
SET_SIZE = 4
TABLES = {"sets", "decisions"}
DEFAULT_TARGETS = (0.5, 0.1, 0.4)


@dataclass
class Shown:
    set_id: int
    round: int
    image_ids: list[int]


class Tournament(ImageDatabase):
    """One labeller's tournament (:class:`ImageDatabase`). ``targets``: None takes the stored ones
    (or the default for a new one)."""

    TABLES_SQL = SCHEMA

    def __init__(self, path: str, targets: list[float] | None = None, seed: int | None = None, read_only: bool = False,
                 option: str = "--db"):
        super().__init__(path, read_only, option)
        if not TABLES <= self.tables():
            raise UserError(f"{option} {path}: holds no labelling rounds (beholder label writes them; a review's decisions "
                            "export once one is made)")
        self.random = random.Random(seed)
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

    @property
    def rounds(self) -> int:
        return len(self.targets)

    def _images_gone(self, gone: set[int]) -> None:
        """Sets still open on a deleted image are withdrawn."""
        for set_id, image_ids in self.db.execute("SELECT id, image_ids FROM sets WHERE submitted IS NULL AND undone = 0").fetchall():
            if gone & set(json.loads(image_ids)):
                self.db.execute("UPDATE sets SET undone = 1 WHERE id = ?", (set_id,))

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
