"""Review the model's decisions: the least certain first (the review band, then the kept and the
rejected nearest the cut), or best first; each confirmed or overturned by a key. Stored in a labeller database
(database.py's images, and these tables), each decision one transaction like the tournament's
submissions, so that a killed server loses nothing and a decision sent twice counts once. Exported,
the decisions are labels for a personal model.
"""

from __future__ import annotations

import math
import time

from beholder.core.errors import UserError
from beholder.data.labels import labels_csv
from beholder.data.scores import BANDS
from beholder.decisions.database import ImageDatabase, SubmissionError

REVIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    image_id INTEGER PRIMARY KEY REFERENCES images(id), position INTEGER NOT NULL, band TEXT NOT NULL,
    score REAL NOT NULL, rank INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id), rater TEXT NOT NULL,
    keep INTEGER NOT NULL, at REAL NOT NULL, undone INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS reviews_by_rater ON reviews (rater, undone, image_id);
"""
BAND_ORDER = {band: order for order, band in enumerate(BANDS)}
REVIEW_TIERS = {True: 2, False: 0}  # a kept image counts as top tier, a rejected one as junk


ORDERS = ("uncertain", "best")


def read_decisions(rows: list[dict], order: str = "uncertain") -> list[dict]:
    """scores.csv rows (:func:`~beholder.data.scores.read_scored`) in review order: ``uncertain``, the least certain first (the review band, then
    by distance from the cut: the lowest kept and the highest rejected); or ``best``, kept best
    first, the review band, then rejected. Rows with the reason ``rated`` (the person's own verdict)
    are kept, for the caller to leave out and count."""
    decisions = [{key: row[key] for key in ("image", "score", "band", "rank", "reason")} for row in rows]
    if order == "best":
        return sorted(decisions, key=lambda r: (BAND_ORDER[r["band"]], r["rank"]))
    keep_at = min((d["score"] for d in decisions if d["band"] != "reject"), default=math.inf)
    reject_top = max((d["score"] for d in decisions if d["band"] == "reject"), default=-math.inf)
    distance = {"keep": lambda d: d["score"] - keep_at, "review": lambda d: 0.0, "reject": lambda d: reject_top - d["score"]}
    return sorted(decisions, key=lambda d: (distance[d["band"]](d), d["rank"]))


class Review(ImageDatabase):
    """The review of one model's decisions: its queue, and each rater's decision on each image."""

    TABLES_SQL = REVIEW_SCHEMA

    def _connect(self, read_only: bool):
        db = super()._connect(read_only)
        if not read_only:
            if "reason" not in {row[1] for row in db.execute("PRAGMA table_info(review_items)")}:  # a database from before reasons
                db.execute("ALTER TABLE review_items ADD COLUMN reason TEXT NOT NULL DEFAULT ''")
        return db

    def load(self, decisions: list[dict]) -> None:
        """The model's decisions to review (from read_decisions), replacing any earlier queue; the
        person's decisions so far are kept."""
        self.sync_images([d["image"] for d in decisions])
        ids = {key: i for i, key in self.keys().items()}
        with self._write():
            self.db.execute("DELETE FROM review_items")
            self.db.executemany("INSERT INTO review_items (image_id, position, band, score, rank, reason) VALUES (?, ?, ?, ?, ?, ?)",
                                [(ids[d["image"]], position, d["band"], d["score"], d["rank"], d.get("reason", ""))
                                 for position, d in enumerate(decisions)])

    def next_item(self, rater: str) -> dict | None:
        upcoming = self.upcoming(rater, 1)
        return upcoming[0] if upcoming else None

    def upcoming(self, rater: str, count: int) -> list[dict]:
        """The next ``count`` items ``rater`` has not decided, in queue order."""
        rows = self.db.execute(
            "SELECT i.image_id, i.band, i.score, i.rank, i.reason, g.key FROM review_items i JOIN images g ON g.id = i.image_id "
            "WHERE g.active = 1 AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.image_id = i.image_id AND r.rater = ? AND r.undone = 0) "
            "ORDER BY i.position LIMIT ?", (rater, count)).fetchall()
        return [dict(zip(("id", "band", "score", "rank", "reason", "image"), row)) for row in rows]

    def decide(self, rater: str, image_id: int, keep: bool) -> None:
        with self._write():
            if not self.db.execute("SELECT 1 FROM review_items WHERE image_id = ?", (image_id,)).fetchone():
                raise SubmissionError(f"image {image_id} is not under review")
            if self.db.execute("SELECT 1 FROM reviews WHERE image_id = ? AND rater = ? AND undone = 0", (image_id, rater)).fetchone():
                return  # sent twice: counted once
            self.db.execute("INSERT INTO reviews (image_id, rater, keep, at) VALUES (?, ?, ?, ?)", (image_id, rater, int(keep), time.time()))

    def undo_decision(self, rater: str) -> None:
        with self._write():
            self.db.execute("UPDATE reviews SET undone = 1 WHERE id = (SELECT MAX(id) FROM reviews WHERE rater = ? AND undone = 0)", (rater,))

    def has_reviews(self) -> bool:
        return "reviews" in self.tables() and self.db.execute("SELECT 1 FROM reviews WHERE undone = 0 LIMIT 1").fetchone() is not None

    def review_progress(self, rater: str) -> dict:
        total = self.db.execute("SELECT COUNT(*) FROM review_items").fetchone()[0]
        done, agreed = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(r.keep = (i.band != 'reject')), 0) FROM reviews r JOIN review_items i ON i.image_id = r.image_id "
            "WHERE r.rater = ? AND r.undone = 0", (rater,)).fetchone()
        return {"total": total, "decided": done, "agreed": agreed}


def review_decisions(db: Review, what: str) -> list[tuple[str, bool]]:
    """Every live decision, oldest first, as (image key, kept); ``what`` names the database in the
    one-line error when it holds no review (a labeller's database, say)."""
    if not {"reviews", "review_items"} <= db.tables():
        raise UserError(f"{what}: not a review database (beholder review writes one; a labeller's labels export with beholder label export)")
    rows = db.db.execute(
        "SELECT g.key, r.keep FROM reviews r JOIN images g ON g.id = r.image_id "
        "WHERE r.undone = 0 AND g.active = 1 ORDER BY r.id").fetchall()
    return [(key, bool(keep)) for key, keep in rows]


def review_labels(db: Review) -> tuple[str, int]:
    """The labels CSV of every live review decision (the latest rater's when several decided):
    image, tier (kept 2, rejected 0), rating (1 / 0), the model's band, whether the person agreed, and
    ``source`` review (the import's labels say ``photographer``)."""
    rows = db.db.execute(
        "SELECT g.key, r.keep, i.band FROM reviews r JOIN images g ON g.id = r.image_id JOIN review_items i ON i.image_id = r.image_id "
        "WHERE r.undone = 0 AND g.active = 1 ORDER BY r.id").fetchall()
    latest = {key: (keep, band) for key, keep, band in rows}
    rows = ({"image": key, "tier": REVIEW_TIERS[bool(keep)], "rating": keep, "model_band": band,
             "agreed": str(bool(keep) == (band != "reject")).lower(), "source": "review"} for key, (keep, band) in sorted(latest.items()))
    return labels_csv(rows, ["rating", "model_band", "agreed", "source"]), len(latest)
