"""Export the labeller's database as the labels CSV that train.py reads, with rater agreement."""

from __future__ import annotations

import csv
import io
from collections import Counter
from itertools import permutations

from beholder.tournament import Tournament


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
    """CSV text (image, tier, matches, raters, tier_mean, tier_<rater>...) and a summary."""
    raters = tournament.raters()
    per_rater = {r: tournament.tiers(r) for r in raters}
    images = sorted({i for tiers in per_rater.values() for i in tiers})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "tier", "matches", "raters", "tier_mean", *[f"tier_{r}" for r in raters]])
    units = []
    for image_id in images:
        given = {r: per_rater[r][image_id] for r in raters if image_id in per_rater[r]}
        tiers = [tier for tier, _ in given.values()]
        mean = sum(tiers) / len(tiers)
        units.append(tiers)
        writer.writerow([
            tournament.key_of(image_id), int(mean + 0.5), sum(m for _, m in given.values()), len(given), f"{mean:.3f}",
            *[given[r][0] if r in given else "" for r in raters],
        ])
    alpha = ordinal_alpha(units)
    summary = {"images": len(images), "raters": raters, "shared": sum(len(u) >= 2 for u in units), "alpha": alpha}
    return buffer.getvalue(), summary
