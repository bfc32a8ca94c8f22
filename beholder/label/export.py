"""Export the labeller's database as the labels CSV that train.py reads, with rater agreement."""

from __future__ import annotations

import csv
import io
from collections import Counter
from itertools import permutations

from beholder.data.labels import NUM_TIERS
from beholder.label.tournament import Tournament


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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "tier", "matches", "raters", "tier_mean", *[f"tier_by_{r}" for r in raters]])
    units = []
    for image_id in images:
        given = {r: per_rater[r][image_id] for r in raters if image_id in per_rater[r]}
        tiers = [tier for tier, _ in given.values()]
        mean = sum(tiers) / len(tiers)
        units.append(tiers)
        writer.writerow([
            keys[image_id], int(mean + 0.5), sum(m for _, m in given.values()), len(given), f"{mean:.3f}",
            *[given[r][0] if r in given else "" for r in raters],
        ])
    alpha = ordinal_alpha(units)
    summary = {"images": len(images), "raters": raters, "shared": sum(len(u) >= 2 for u in units), "alpha": alpha,
               "gone": len(labelled - active), "rounds": tournament.rounds}
    return buffer.getvalue(), summary
