"""The labels CSV: write it, read it, check it, split it, and derive the regression targets from it."""

from __future__ import annotations

import csv
import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from beholder.core.errors import UserError
from beholder.core.tables import csv_text, read_csv

NUM_TIERS = 4
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.64, 0.16, 0.20)

log = logging.getLogger(__name__)


class LabelsError(UserError, ValueError):
    """The labels file cannot be used as it is; the message names the file, column or row."""


@dataclass(frozen=True)
class Label:
    image: str
    tier: int
    value: float | None = None  # the score column, when one is used
    split: str | None = None
    group: str | None = None  # rows of one group (e.g. one capture day) stay in one split


def labels_csv(rows: Iterable[dict], extra: list[str]) -> str:
    """A labels CSV that beholder train reads: ``image`` and ``tier`` (0-3), then the ``extra``
    columns (``rating``, ``source``, per-rater tiers ...), as ratings import, label export and a
    review's export write it."""
    def checked(row: dict) -> dict:
        if not (isinstance(row["tier"], int) and 0 <= row["tier"] < NUM_TIERS):
            raise ValueError(f"{row['image']}: tier {row['tier']!r} is not 0-{NUM_TIERS - 1}")
        return row

    return csv_text(["image", "tier", *extra], (checked(row) for row in rows))


def parse_labels(text: str, source: str, score_column: str | None = None, group_by: str | None = None,
                 group_pattern: str | None = None) -> list[Label]:
    """Rows of a labels CSV (``image``, ``tier``, optional ``split`` and ``score_column``).

    ``group_by``: a column whose value (or the first match of ``group_pattern`` in it, e.g.
    ``\\d{4}-\\d{2}-\\d{2}`` for the day of a timestamp) names each row's group."""
    try:
        columns, reader = read_csv(text)
    except csv.Error as error:
        raise LabelsError(f"{source}: not a CSV file ({error})") from None
    try:
        pattern = re.compile(group_pattern) if group_pattern else None
    except re.error as error:
        raise LabelsError(f"data.group_pattern={group_pattern!r}: not a regular expression ({error})") from None
    required = ["image", "tier"] + ([score_column] if score_column else []) + ([group_by] if group_by else [])
    missing = [c for c in required if c not in columns]
    if missing:
        raise LabelsError(f"{source}: missing column(s) {missing}; the file has {columns}")
    has_split = "split" in columns
    labels, seen = [], {}
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        image = (row["image"] or "").strip()
        if not image:
            raise LabelsError(f"{where}: empty 'image'")
        if image in seen:
            raise LabelsError(f"{where}: image {image!r} is listed twice (first on line {seen[image]})")
        seen[image] = line
        try:
            tier = int(row["tier"])
        except (TypeError, ValueError):
            raise LabelsError(f"{where}: tier {row['tier']!r} is not an integer") from None
        if not 0 <= tier < NUM_TIERS:
            raise LabelsError(f"{where}: tier {tier} is outside 0..{NUM_TIERS - 1}")
        value = None
        if score_column:
            try:
                value = float(row[score_column])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise LabelsError(f"{where}: {score_column} {row[score_column]!r} is not a number")
        split = (row["split"] or "").strip() if has_split else None
        if has_split and split not in SPLITS:
            raise LabelsError(f"{where}: split {split!r} is not one of {SPLITS}")
        group = None
        if group_by:
            group = (row[group_by] or "").strip()
            match = pattern.search(group) if pattern else None
            if pattern and not match:
                raise LabelsError(f"{where}: {group_by} {group!r} does not match data.group_pattern={group_pattern!r}")
            group = match.group(0) if match else group
        labels.append(Label(image, tier, value, split, group))
    if not labels:
        raise LabelsError(f"{source}: no rows")
    return labels


def split_labels(labels: list[Label], seed: int) -> dict[str, list[Label]]:
    """The file's own ``split`` column when it has one; else a 64/16/20 split stratified by tier,
    keeping each group whole when the rows have groups."""
    if labels[0].split is not None:
        return {s: [lb for lb in labels if lb.split == s] for s in SPLITS}
    if labels[0].group is not None:
        return split_groups(labels, seed)
    rng = random.Random(seed)
    splits = {s: [] for s in SPLITS}
    for tier in range(NUM_TIERS):
        members = [lb for lb in labels if lb.tier == tier]
        rng.shuffle(members)
        n_train = round(len(members) * SPLIT_FRACTIONS[0])
        n_val = round(len(members) * SPLIT_FRACTIONS[1])
        splits["train"] += members[:n_train]
        splits["val"] += members[n_train:n_train + n_val]
        splits["test"] += members[n_train + n_val:]
    return splits


def split_groups(labels: list[Label], seed: int) -> dict[str, list[Label]]:
    """64/16/20 with every group in one split (no near-copies on both sides), stratified by tier as
    far as groups allow."""
    return assign_groups(labels, dict(zip(SPLITS, SPLIT_FRACTIONS)), seed)


def fold_labels(labels: list[Label], folds: int, seed: int) -> list[list[Label]]:
    """``folds`` near-equal folds, stratified by tier, each group (or ungrouped row) in one fold."""
    return list(assign_groups(labels, {k: 1 / folds for k in range(folds)}, seed).values())


def fold_rows(tiers, groups, folds: int, seed: int) -> list[np.ndarray]:
    """:func:`fold_labels` for rows given by their tiers and groups (``groups`` None: every row its
    own): the row indices of each fold. Every cross-validation in beholder splits with this."""
    groups = [None] * len(tiers) if groups is None else groups
    rows = [Label(str(i), int(tier), group=group) for i, (tier, group) in enumerate(zip(tiers, groups))]
    return [np.array(sorted(int(label.image) for label in part), dtype=int) for part in fold_labels(rows, min(folds, len(rows)), seed)]


def assign_groups(labels: list[Label], fractions: dict, seed: int) -> dict:
    """Parts of the given ``fractions``, every group whole (a row without a group is its own),
    stratified by tier as far as groups allow: groups are placed rarest tier first, each into the
    part whose share of that tier is furthest below its target (then of all images)."""
    groups: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        groups[label.group if label.group is not None else "\0" + label.image].append(label)
    totals = Counter(lb.tier for lb in labels)
    filled = {s: Counter() for s in fractions}
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    rarest = {g: min((lb.tier for lb in groups[g]), key=lambda t: (totals[t], -t)) for g in order}
    order.sort(key=lambda g: totals[rarest[g]])  # stable: shuffled within each tier
    parts = {s: [] for s in fractions}
    for name in order:
        tier = rarest[name]
        chosen = min(fractions, key=lambda s: (filled[s][tier] / (fractions[s] * totals[tier]), sum(filled[s].values()) / fractions[s]))
        filled[chosen].update(lb.tier for lb in groups[name])
        parts[chosen] += groups[name]
    return parts


def drop_missing(labels: list[Label], available: set[str], source: str, on_missing: str) -> list[Label]:
    """Check every labelled image exists; stop (``on_missing=error``) or drop them (``skip``)."""
    missing = [lb.image for lb in labels if lb.image not in available]
    if not missing:
        return labels
    first = ", ".join(missing[:10])
    if on_missing == "error":
        raise LabelsError(
            f"{len(missing)} of {len(labels)} images in the labels are not under {source} "
            f"(first: {first}); set data.on_missing=skip to drop them"
        )
    if on_missing != "skip":
        raise LabelsError(f"data.on_missing={on_missing!r}: use 'error' or 'skip'")
    log.warning("dropping %d labelled images that are not under %s (first: %s)", len(missing), source, first)
    return [lb for lb in labels if lb.image in available]


def tier_counts(labels: list[Label]) -> dict[int, int]:
    """How many labels each tier has, lowest tier first."""
    return dict(sorted(Counter(label.tier for label in labels).items()))


def tier_midpoints(labels: list[Label]) -> list[float]:
    """Each tier's mid-percentile in the label distribution, e.g. 0.288/0.763/0.966/0.991.

    These are the regression targets when there is no score column: a tier-0 photo sits, on
    average, at the 28.8th percentile of the gallery.
    """
    counts = [sum(lb.tier == t for lb in labels) for t in range(NUM_TIERS)]
    total, below, mids = sum(counts), 0, []
    for count in counts:
        mids.append((below + count / 2) / total)
        below += count
    return mids


def regression_stats(train: list[Label]) -> dict:
    """What the regression head needs from the data: the target scale and each tier's value."""
    if train[0].value is not None:
        values = [lb.value for lb in train]
        tier_values = []
        for t in range(NUM_TIERS):
            in_tier = [lb.value for lb in train if lb.tier == t]
            tier_values.append(sum(in_tier) / len(in_tier) if in_tier else math.nan)
    else:
        tier_values = tier_midpoints(train)
        values = [tier_values[lb.tier] for lb in train]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) or 1.0
    return {"target_mean": mean, "target_std": std, "tier_values": tier_values}


def target_of(label: Label, tier_values: list[float]) -> float:
    return label.value if label.value is not None else tier_values[label.tier]


TOP_SHARE = 0.05  # the original project's top tiers were the best 5 % (and 2 %) of a gallery


def best_rating(ratings) -> float:
    """Where a person's best photos start: the second-highest rating they gave (4 on a 1-5 scale
    used in full), or their only one."""
    levels = sorted({float(rating) for rating in ratings if rating > 0}, reverse=True)
    if not levels:
        raise UserError("no positive rating among the person's ratings")
    return levels[min(1, len(levels) - 1)]


def low_rating(ratings) -> float:
    """Where a person's lowest ratings end: the second-lowest rating they gave (2 on a 1-5 scale used
    in full), or their only one."""
    levels = sorted({float(rating) for rating in ratings})
    return levels[min(1, len(levels) - 1)]


def top_rating(ratings, share: float = TOP_SHARE) -> float:
    """The lowest rating of a person's top tier, by their own distribution: their highest rating
    values, taken while together they hold at most ``share`` of their photos (the highest at least).
    A generous rater's top tier is thus their 5 stars, not everything rated 4 or 5."""
    counts = Counter(float(r) for r in ratings)
    chosen, at_least = None, 0
    for value in sorted(counts, reverse=True):
        at_least += counts[value]  # ratings >= value
        if chosen is not None and at_least / len(ratings) > share:
            break
        chosen = value
    return chosen
