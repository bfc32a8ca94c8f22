"""What prediction hands to people besides scores.csv (beholder/data/scores.py) and the contact sheet
(beholder/data/contact_sheet.py): skipped.csv and the sheet's two charts (XMP sidecars: ratings/xmp.py)."""

from __future__ import annotations

import math
from bisect import bisect_left

from beholder.core.tables import csv_bytes
from beholder.data.contact_sheet import BAND_COLOURS
from beholder.data.labels import best_rating
from beholder.models.metrics import CULL_LEVELS, cull_cut


def skipped_csv(skipped: dict[str, str]) -> bytes:
    return csv_bytes(["image", "reason"], ({"image": image, "reason": reason} for image, reason in sorted(skipped.items())))


def score_histogram_svg(scores: list[float], keep_at: float, reject_below: float, bins: int = 40) -> str:
    """An inline SVG histogram of the scores, bars coloured by band, the two thresholds marked."""
    width, height, low, high = 720, 140, min(scores), max(scores)
    span = (high - low) or 1.0
    counts = [0] * bins
    for score in scores:
        counts[min(int((score - low) / span * bins), bins - 1)] += 1
    tallest, step = max(counts), width / bins
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 20}' role='img' "
             f"aria-label='score distribution'><rect width='100%' height='100%' fill='#2a2a2a'/>"]
    for i, count in enumerate(counts):
        middle = low + (i + 0.5) * span / bins
        band = "keep" if middle >= keep_at else "review" if middle >= reject_below else "reject"
        bar = count / tallest * height
        parts.append(f"<rect x='{i * step:.1f}' y='{height - bar:.1f}' width='{step - 1:.1f}' height='{bar:.1f}' "
                     f"fill='{BAND_COLOURS[band]}'><title>{count} images near {middle:.3f}</title></rect>")
    marks = [(keep_at, "threshold", 12)] if keep_at == reject_below else [(keep_at, "keep from", 12), (reject_below, "reject below", height + 14)]
    for value, name, y in marks:  # two labels on two rows, so that close thresholds stay readable
        if low <= value <= high:
            x = (value - low) / span * width
            anchor = "end" if x > width / 2 else "start"
            parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='0' y2='{height}' stroke='#fff' stroke-dasharray='4 3'/>"
                         f"<text x='{x + (-3 if anchor == 'end' else 3):.1f}' y='{y}' text-anchor='{anchor}' fill='#eee' "
                         f"font-size='11'>{name} {value:.3f}</text>")
    parts.append("</svg>")
    return "".join(parts)


def trade_off_svg(scores: list[float], ratings: list[float], threshold: float) -> str:
    """The person's trade-off, from a personal model's out-of-fold scores of their rated photos: the
    share of their best photos kept (up) against the share of all they rated that is cut (across),
    for every threshold; each cull level marked, and this run's threshold."""
    width, height, pad = 360, 220, 36
    best = best_rating(ratings)
    ascending = sorted(scores)
    top = sorted(score for score, rating in zip(scores, ratings) if rating >= best)

    def point(cut: float) -> tuple[float, float]:  # by bisection: years of ratings draw a curve of thousands of points
        return bisect_left(ascending, cut) / len(ascending), 1 - bisect_left(top, cut) / len(top)

    def xy(share_cut: float, share_kept: float) -> str:
        return f"{pad + share_cut * (width - pad - 8):.1f},{8 + (1 - share_kept) * (height - pad - 8):.1f}"

    curve = " ".join(xy(*point(cut)) for cut in sorted(set(scores)) + [math.inf])
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' aria-label='what a cull costs'>"
             "<rect width='100%' height='100%' fill='#2a2a2a'/>",
             f"<polyline points='{curve}' fill='none' stroke='#9cf' stroke-width='2'/>",
             f"<text x='{pad}' y='{height - 8}' fill='#ccc' font-size='11'>share of the photos you rated that is cut →</text>",
             f"<text x='10' y='{height - pad}' fill='#ccc' font-size='11' transform='rotate(-90 10 {height - pad})'>"
             f"share of your {best:g}+ photos kept →</text>"]
    for i, (level, share) in enumerate(CULL_LEVELS.items()):  # labels a line apart: two levels may share a point
        x, y = xy(*point(cull_cut(scores, ratings, share)[0])).split(",")
        parts.append(f"<circle cx='{x}' cy='{y}' r='4' fill='#eee'/><text x='{float(x) + 6:.1f}' y='{float(y) + 4 + 12 * i:.1f}' "
                     f"fill='#eee' font-size='11'>{level}</text>")
    x, y = xy(*point(threshold)).split(",")
    parts.append(f"<circle cx='{x}' cy='{y}' r='6' fill='none' stroke='#f90' stroke-width='2'><title>this run's threshold "
                 f"{threshold:.3f}</title></circle></svg>")
    return "".join(parts)
