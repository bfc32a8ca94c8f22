"""Keep, review or reject: the one decision that prediction and the labeller share, and culling
per burst.

Both thresholds come from the scores of top-tier calibration photos (the validation split's,
stored in the checkpoint):

- ``keep_at``, the plain one: the score that kept ``keep_recall`` of them (all, by default);
- ``reject_below``, a promise about photos never seen: with n calibration scores, the j-th lowest,
  x(j), lets through a share F(x(j)) of new top-tier photos that is Beta(j, n - j + 1)-distributed
  (exchangeable scores), so the highest x(j) with P(F(x(j)) <= 1 - recall) >= confidence keeps at
  least ``recall`` of new top-tier photos with that confidence.

  With fewer scores than that promise needs (45 for 95 % with 90 % confidence), the promise rests
  on the scores being normal instead: the one-sided normal tolerance bound mean - k * sd (k by
  Natrella's approximation), from 10 scores up (and never above the lowest score).

Photos between the two are the review band: worth a person's look. Only rejected ones are out of
sight, so the gallery reduction is the rejected share.

A cull level (``gentle``, ``normal``, ``hard``) instead trades gems for a harder cut, in the person's
own terms: the threshold keeps about 95 %, 85 % or 70 % of the photos they rated best (their two
highest ratings, e.g. 4 and 5 stars), by a personal model's out-of-fold scores of those photos.

A personal model also draws the lowest line (:func:`lowest_line`): under every photo the person rated
above their lowest ratings, out of fold. Rejects under it are counted apart, as junk by the person's
own standard, after technical failures and the lesser frames of bursts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist, fmean, stdev

import torch

from beholder.models.metrics import CULL_LEVELS, cull_cut, keep_threshold, lowest_line

# Scores are recomputed in other batch sizes than at calibration; count float noise as a tie.
SCORE_TOLERANCE = 1e-6


def binomial_tail(j: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= j), which equals P(Beta(j, n - j + 1) <= p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(j, n + 1))


def photos_needed(recall: float, confidence: float) -> int:
    """Calibration photos needed before even the lowest of them backs the promise."""
    return math.ceil(math.log(1 - confidence) / math.log(recall)) if 0 < recall < 1 else 1


def promised_threshold(scores: list[float], recall: float, confidence: float) -> tuple[float, float]:
    """The highest calibration score that keeps ``recall`` of new top-tier photos with ``confidence``,
    and the confidence it reaches. Too few scores for that confidence: the lowest, with the
    confidence it does reach."""
    ascending = sorted(scores)
    if not ascending:
        return math.nan, 0.0
    if recall >= 1:
        return ascending[0], 0.0  # no finite sample promises every new photo
    chosen = 1
    for j in range(1, len(ascending) + 1):
        if binomial_tail(j, len(ascending), 1 - recall) < confidence:
            break
        chosen = j
    return ascending[chosen - 1], binomial_tail(chosen, len(ascending), 1 - recall)


def normal_tolerance_bound(scores: list[float], recall: float, confidence: float) -> float:
    """mean - k * sd: at least ``recall`` of a normal population lies above it, with ``confidence``
    (Natrella 1963, "Experimental Statistics", one-sided tolerance factor; against the exact noncentral-t
    factor it is 2.6 % low at 10 scores, 1.3 % at 19, and worse below 10, where it is not used)."""
    n = len(scores)
    if n < 10 or not 0 < recall < 1:
        return math.nan
    z_p, z_c = NormalDist().inv_cdf(recall), NormalDist().inv_cdf(confidence)
    a = 1 - z_c**2 / (2 * (n - 1))
    b = z_p**2 - z_c**2 / n
    if a <= 0 or z_p**2 - a * b < 0:
        return math.nan
    k = (z_p + math.sqrt(z_p**2 - a * b)) / a
    return fmean(scores) - k * stdev(scores)


@dataclass(frozen=True)
class Policy:
    """``keep_at`` and ``reject_below`` on the score; or, with ``keep_count``, the best that many
    kept and the rest rejected (ties or not). ``summary`` says where they came from. A reject under
    ``lowest_below`` is among the person's lowest ratings (:meth:`with_lowest_line`)."""

    keep_at: float
    reject_below: float
    summary: str
    keep_count: int | None = None
    lowest_below: float = -math.inf

    @classmethod
    def calibrated(cls, scores: list[float], keep_recall: float = 1.0, recall: float = 0.95, confidence: float = 0.9,
                   tiers: str = "top-tier") -> Policy:
        """From calibration scores: the plain threshold (it kept ``keep_recall`` of them) and the
        promised one (new photos); keep from the higher, review down to the lower, reject below."""
        values = torch.tensor(scores, dtype=torch.float64)
        plain = keep_threshold(values, torch.ones_like(values, dtype=torch.bool), keep_recall)
        promised, reached = promised_threshold(scores, recall, confidence)
        seen = f"kept {keep_recall:.0%} of the {len(scores)} calibration photos ({tiers}, scored out of training)"
        normal = normal_tolerance_bound(scores, recall, confidence)
        if reached >= confidence:
            promise = f"keeps >= {recall:.0%} of new photos ({tiers}) with {confidence:.0%} confidence"
        elif not math.isnan(normal):  # the lowest score keeps at least what the bound keeps
            promised = min(promised, normal)
            promise = (f"keeps >= {recall:.0%} of new photos ({tiers}) with {confidence:.0%} confidence if their scores are normal "
                       f"({photos_needed(recall, confidence)} calibration photos are needed without that assumption)")
        else:
            promise = (f"keeps >= {recall:.0%} of new photos ({tiers}) with only {reached:.0%} confidence "
                       f"({photos_needed(recall, confidence)} calibration photos are needed for {confidence:.0%})")
        (keep_at, keep_why), (reject_below, reject_why) = sorted([(plain, seen), (promised, promise)], reverse=True)
        if keep_at == reject_below:
            return cls(keep_at, reject_below, f"{keep_at:.4f} {seen} and {promise}; no review band")
        return cls(keep_at, reject_below, f"keep from {keep_at:.4f}: {keep_why}; review down to {reject_below:.4f}: {reject_why}")

    @classmethod
    def cull(cls, scores: list[float], ratings: list[float], level: str) -> Policy:
        """One cut at ``level`` of :data:`CULL_LEVELS`, calibrated on the out-of-fold ``scores`` of
        the person's rated photos: the score that keeps that share of their best (:func:`best_rating`
        or more); no review band."""
        cut, kept, best, count = cull_cut(scores, ratings, CULL_LEVELS[level])
        return cls(cut, cut, f"cull={level}: {cut:.4f} kept {kept:.0%} of the {count} photos the person rated {best:g} or more "
                             "(scored out of fold): about what it keeps of their best new photos")

    @classmethod
    def fixed(cls, threshold: float, summary: str) -> Policy:
        return cls(threshold, threshold, summary)

    @classmethod
    def top(cls, count: int, summary: str) -> Policy:
        return cls(math.nan, math.nan, summary, keep_count=count)

    def with_lowest_line(self, scores: list[float], ratings: list[float]) -> Policy:
        """This policy with the person's lowest line (:func:`lowest_line`) from their out-of-fold
        ``scores`` and ``ratings``; unchanged when too few of their photos lie under it."""
        line, low, under = lowest_line(scores, ratings)
        if math.isinf(line):
            return self
        return replace(self, lowest_below=line, summary=f"{self.summary}; under {line:.4f}: among the person's lowest ratings "
                                                         f"(out of fold, all {under} of their photos there rated {low:g} or less)")

    def reason(self, score: float) -> str:
        """Why a photo this policy rejects is rejected: ``lowest`` under the lowest line, else ``score``."""
        return "lowest" if score < self.lowest_below else "score"

    def band(self, score: float, rank: int | None = None) -> str:
        if self.keep_count is not None:
            return "keep" if rank is not None and rank <= self.keep_count else "reject"
        if score >= self.keep_at - SCORE_TOLERANCE:
            return "keep"
        return "review" if score >= self.reject_below - SCORE_TOLERANCE else "reject"

    def distance(self, score: float) -> float:
        """How far a score lies from the review band (0 inside it): small = the model is unsure."""
        if self.reject_below - SCORE_TOLERANCE <= score < self.keep_at:
            return 0.0
        return min(abs(score - self.keep_at), abs(score - self.reject_below))
