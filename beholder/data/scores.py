"""scores.csv, what ``beholder predict`` decided: one row per photo, best first. The one owner of
the format: predict writes it here, and review, ``ratings write``, ``similar`` and the benches read
it here.

Columns: image, score (taste), technical (its quality, 0-1, when the technical checks ran), tier,
the tier probabilities (softmax and ordinal heads), band (:data:`BANDS`), keep (the band ``keep``),
reason (of a reject: ``score``, ``lowest`` (under a personal model's lowest line), ``burst`` or a
technical failure such as ``out of focus``; of a photo sent to review for one, that; ``rated``: the
person's own verdict), rank (the final order), and when grouped, group, group_rank, group_size.
"""

from __future__ import annotations

from beholder.core.errors import UserError
from beholder.core.storage import Store, join
from beholder.core.tables import csv_bytes, read_csv

FILE = "scores.csv"
BANDS = ("keep", "review", "reject")
GROUP_FIELDS = ["group", "group_rank", "group_size"]
REQUIRED = ("image", "score", "band", "rank")


def scores_csv(ranked: list[dict], probability_names: list[str]) -> bytes:
    """``ranked``: rows best first, with the module docstring's fields (``probabilities`` a list in
    the order of ``probability_names``)."""
    grouped = bool(ranked) and "group" in ranked[0]
    technical = bool(ranked) and "technical" in ranked[0]
    fields = ["image", "score", *(["technical"] if technical else []), "tier", *probability_names, "band", "keep", "reason", "rank",
              *(GROUP_FIELDS if grouped else [])]
    rows = ({"image": row["image"], "score": f"{row['score']:.6f}", **({"technical": f"{row['technical']:.4f}"} if technical else {}),
             "tier": row["tier"],
             **({name: f"{p:.4f}" for name, p in zip(probability_names, row["probabilities"])} if probability_names else {}),
             "band": row["band"], "keep": str(row["band"] == "keep").lower(), "reason": row["reason"], "rank": row["rank"],
             **({field: row[field] for field in GROUP_FIELDS} if grouped else {})} for row in ranked)
    return csv_bytes(fields, rows)


def read_scores(text: str, source: str) -> list[dict]:
    """A scores.csv's rows, checked: ``score`` a float, ``rank`` an int, ``band`` one of
    :data:`BANDS`, ``reason`` a string, each image once; anything else is one line naming
    ``source`` (how the user gave the file, e.g. ``--scored culled``) and the line."""
    columns, rows = read_csv(text)
    if not rows or not set(REQUIRED) <= set(columns):
        raise UserError(f"{source}: not a {FILE} of beholder predict ({', '.join(REQUIRED)})")
    seen = {}
    for line, row in enumerate(rows, start=2):
        try:
            row["score"], row["rank"] = float(row["score"]), int(row["rank"])
        except (TypeError, ValueError):
            raise UserError(f"{source}: line {line}: score {row['score']!r} and rank {row['rank']!r} must be numbers") from None
        if row["band"] not in BANDS:
            raise UserError(f"{source}: line {line}: band {row['band']!r} is not {', '.join(BANDS[:-1])} or {BANDS[-1]}")
        if row["image"] in seen:
            raise UserError(f"{source}: line {line}: {row['image']} again (first on line {seen[row['image']]})")
        seen[row["image"]] = line
        row["reason"] = row.get("reason") or ""
    return rows


def scored_file(scored: str) -> str:
    """The scores.csv of ``--scored``: a predict run's output folder (or s3:// prefix), or the file itself."""
    return scored if scored.lower().endswith(".csv") else join(scored, FILE)


def read_scored(store: Store, scored: str, flag: str = "--scored") -> list[dict]:
    """:func:`read_scores` of the scores.csv that ``scored`` names (:func:`scored_file`); a missing
    file is one line naming ``flag``."""
    try:
        text = store.read(scored_file(scored)).decode()
    except FileNotFoundError:
        raise UserError(f"{flag} {scored}: no {FILE} there (give beholder predict's output=)") from None
    return read_scores(text, f"{flag} {scored}")
