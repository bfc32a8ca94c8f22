"""beholder label export: the labeller's (or a review's) database as the labels CSV that beholder train reads, with rater agreement."""

from __future__ import annotations

import sys
from collections import Counter
from itertools import permutations

from beholder.core.errors import exit_on_user_error
from beholder.core.storage import Store
from beholder.core.vocabulary import CommandParser
from beholder.data.labels import NUM_TIERS, labels_csv
from beholder.decisions.review import Review, review_labels
from beholder.decisions.tournament import Tournament


def tier_of(rounds_advanced: int) -> int:
    """The training tier of an image that advanced through ``rounds_advanced`` rounds: the same
    number, capped at the top tier (3). With the default 3 rounds that is 0 junk, 1 fine, 2 top
    5 %, 3 top 2 %; with fewer rounds the top tiers stay empty, with more they merge into tier 3."""
    return min(rounds_advanced, NUM_TIERS - 1)


def ordinal_alpha(units: list[list[int]]) -> float | None:
    """Krippendorff's alpha for ordinal values; ``units``: the values given to each item (items with
    fewer than two values are left out). None when there is nothing to compare."""
    units = [u for u in units if len(u) >= 2]
    if not units:
        return None
    coincidence: Counter = Counter()
    for values in units:
        for a, b in permutations(range(len(values)), 2):
            coincidence[(values[a], values[b])] += 1 / (len(values) - 1)
    categories = sorted({c for pair in coincidence for c in pair})
    totals = {c: sum(v for (a, _), v in coincidence.items() if a == c) for c in categories}
    n = sum(totals.values())

    def distance(c, k):
        low, high = min(c, k), max(c, k)
        between = sum(totals[g] for g in categories if low <= g <= high)
        return (between - (totals[c] + totals[k]) / 2) ** 2

    observed = sum(v * distance(c, k) for (c, k), v in coincidence.items())
    expected = sum(totals[c] * totals[k] * distance(c, k) for c in categories for k in categories) / (n - 1)
    return 1.0 if expected == 0 else 1 - observed / expected


def export(tournament: Tournament) -> tuple[str, dict]:
    """CSV text (image, tier, matches, raters, tier_mean, tier_by_<rater>...) and a summary. Images
    no longer in the gallery (as of the labeller's last start) are left out and counted."""
    raters = tournament.raters()
    per_rater = {r: {i: (tier_of(t), m) for i, (t, m) in tournament.tiers(r).items()} for r in raters}
    labelled = {i for tiers in per_rater.values() for i in tiers}
    active, keys = tournament.active_ids(), tournament.keys()
    images = sorted(labelled & active, key=keys.get)
    fields = ["image", "tier", "matches", "raters", "tier_mean", *[f"tier_by_{r}" for r in raters]]
    rows, units = [], []
    for image_id in images:
        given = {r: per_rater[r][image_id] for r in raters if image_id in per_rater[r]}
        tiers = [tier for tier, _ in given.values()]
        mean = sum(tiers) / len(tiers)
        units.append(tiers)
        rows.append(dict(zip(fields, [keys[image_id], int(mean + 0.5), sum(m for _, m in given.values()), len(given), f"{mean:.3f}",
                                      *[given[r][0] if r in given else "" for r in raters]])))
    alpha = ordinal_alpha(units)
    summary = {"images": len(images), "raters": raters, "shared": sum(len(u) >= 2 for u in units), "alpha": alpha,
               "gone": len(labelled - active), "rounds": tournament.rounds}
    return labels_csv(rows, fields[2:]), summary


def run_export(args) -> None:
    reviewed = Review(args.db, read_only=True)
    if reviewed.has_reviews():
        text, count = review_labels(reviewed)
        Store().write(args.out, text.encode())
        print(f"wrote {count} reviewed images to {args.out} (tier 2 kept, 0 rejected; rating 1 / 0: data.score_column=rating)")
        return
    text, summary = export(Tournament(args.db, read_only=True))
    Store().write(args.out, text.encode())
    alpha = "n/a (no image seen by two raters)" if summary["alpha"] is None else f"{summary['alpha']:.3f}"
    gone = f"; {summary['gone']} labelled images no longer in the gallery left out" if summary["gone"] else ""
    print(f"wrote {summary['images']} labelled images to {args.out} ({summary['rounds']} rounds); raters: {', '.join(summary['raters']) or 'none'}; "
          f"{summary['shared']} images seen by 2+ raters, Krippendorff's alpha (ordinal) {alpha}{gone}")


def main(argv: list[str] | None = None, prog: str = "beholder label export") -> None:
    parser = CommandParser(prog=prog, description="Write the labels CSV for beholder train.")
    parser.add_argument("--db", required=True, help="the labeller's or a review's SQLite file")
    parser.add_argument("--out", required=True, help="CSV path (or s3:// URI)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with exit_on_user_error():
        run_export(args)
