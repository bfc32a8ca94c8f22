"""The technical checks' part of a run's decisions: each photo's verdict from its measures, the
photos it rejects or sends to review with a reason, the order that combines taste and technical
quality, and which frame of a burst is the best."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from beholder.core.errors import UserError
from beholder.technical import REASONS
from beholder.technical.judge import Head, shipped_head, verdicts
from beholder.technical.measures import FEATURES

TIERS = {None: 0, "review": 1, "reject": 2}  # the final order: technically fine, borderline, failed; each by taste
FOCUS = FEATURES.index("focus")
SHARPNESS_TOLERANCE = 0.15  # of the focus measure (a log ratio of detail): burst frames this close to the sharpest are as sharp
# How much technical quality moves the order within a tier, in sds of the gallery's taste scores per
# e-fold of quality: chosen on calibration-half photos through predict, where the original above its
# moderately over-exposed copy rose from 78 % (0) to 92 % (1) and no further (2: 93 %), bench/PILOTS.md
QUALITY_WEIGHT = 1.0


@dataclass(frozen=True)
class Checks:
    head: Head
    checks: list[str]
    reject: float
    review: float

    @classmethod
    def of(cls, cfg: DictConfig) -> Checks | None:
        """The run's technical checks (``cfg.technical``), None when off; the thresholds are the
        calibrated ones unless given."""
        if not cfg.enabled:
            return None
        unknown = [check for check in cfg.checks if check not in REASONS]
        if unknown:
            raise UserError(f"technical.checks: {', '.join(map(str, unknown))} unknown (the checks: {', '.join(REASONS)})")
        head = shipped_head()
        reject = head.reject if cfg.reject is None else cfg.reject
        review = head.review if cfg.review is None else cfg.review
        for name, value in (("reject", reject), ("review", review)):
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise UserError(f"technical.{name}={value!r}: give a probability in (0, 1]")
        if review > reject:
            raise UserError(f"technical.review={review} is above technical.reject={reject}: a photo is sent to review before it is rejected")
        return cls(head, list(cfg.checks), float(reject), float(review))


def judge(rows: list[dict], checks: Checks) -> None:
    """Each row's ``technical`` quality (1 - the probability of a checked failure), ``failure`` and
    its ``keywords`` for XMP; a failure rejects the photo, a borderline one sends a kept photo to
    review, with the reason."""
    measured = np.array([row["measured"] for row in rows])
    for row, verdict in zip(rows, verdicts(checks.head.probabilities(measured), checks.checks, checks.reject, checks.review)):
        row["technical"], row["failure"], row["technical_band"] = verdict.quality, verdict.failure, verdict.band
        row["keywords"] = [REASONS[verdict.failure]] if verdict.failure else []  # in XMP, whatever the person's own verdict
        if verdict.band == "reject" or (verdict.band == "review" and row["band"] == "keep"):
            row["band"], row["reason"] = verdict.band, REASONS[verdict.failure]


def final_order(rows: list[dict]) -> list[dict]:
    """Best first: the technically fine, then the borderline, then the failed; within each, taste
    lowered by the log of the technical quality (``QUALITY_WEIGHT`` taste sds per e-fold), so that a
    copy likely but not surely blown out still sinks below its original; numbered ``rank``. Without
    the checks, taste alone."""
    spread = float(np.std([row["score"] for row in rows])) if len(rows) > 1 else 0.0

    def combined(row):
        quality = row.get("technical")
        return row["score"] + (QUALITY_WEIGHT * spread * np.log(max(quality, 1e-6)) if quality is not None else 0.0)

    ordered = sorted(rows, key=lambda row: (TIERS[row.get("technical_band")], -combined(row), row["image"]))
    for rank, row in enumerate(ordered, start=1):
        row["rank"] = rank
    return ordered


def burst_preference(rows: list[dict]) -> list[dict]:
    """The frames of one near-copy group, best first: the technically fine, and of those the
    sharpest (within ``SHARPNESS_TOLERANCE`` of the sharpest frame), then by taste."""
    if not rows or rows[0].get("measured") is None:
        return rows
    tier = {id(row): TIERS[row.get("technical_band")] for row in rows}
    best_tier = min(tier.values())
    sharpest = max(row["measured"][FOCUS] for row in rows if tier[id(row)] == best_tier)
    return sorted(rows, key=lambda row: (tier[id(row)], row["measured"][FOCUS] < sharpest - SHARPNESS_TOLERANCE, -row["score"], row["image"]))
