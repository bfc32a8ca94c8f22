"""Ranking metrics: how much of a gallery a photographer can skip without losing a gem."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_fbeta_score, multiclass_confusion_matrix

from beholder.conf.schema import CULL_LEVELS
from beholder.data.labels import NUM_TIERS, best_rating, low_rating


def cull_cut(scores: list[float], ratings: list[float], share: float) -> tuple[float, float, float, int]:
    """The score that keeps ``share`` of a person's best photos (rated :func:`best_rating` or more),
    by their out-of-fold ``scores``; with the share it keeps of them, that rating and their count."""
    best = best_rating(ratings)
    ascending = sorted(score for score, rating in zip(scores, ratings) if rating >= best)
    cut = ascending[math.floor((1 - share) * len(ascending) + 1e-9)]
    return cut, sum(score >= cut for score in ascending) / len(ascending), best, len(ascending)


LOWEST_AT_LEAST = 5  # rated photos that must lie under the lowest line before it rejects anything


def lowest_line(scores: list[float], ratings: list[float]) -> tuple[float, float, int]:
    """The score under which, out of fold, the person rated nothing above their lowest ratings
    (:func:`low_rating`): just under the lowest-scored photo they rated higher. With that rating and
    how many of their rated photos lie under it; -inf when fewer than :data:`LOWEST_AT_LEAST` do, too
    few to trust."""
    low = low_rating(ratings)
    line = min((score for score, rating in zip(scores, ratings) if rating > low), default=-math.inf)
    under = sum(score < line for score in scores)
    return (line if under >= LOWEST_AT_LEAST else -math.inf), low, under


def cull_curve(scores: list[float], ratings: list[float]) -> list[tuple[str, float, float]]:
    """For each of :data:`CULL_LEVELS`: the share of the person's best photos kept and of all their
    rated photos cut, by the out-of-fold scores (what the training summary shows)."""
    curve = []
    for level, share in CULL_LEVELS.items():
        cut, kept, _, _ = cull_cut(scores, ratings, share)
        curve.append((level, kept, sum(score < cut for score in scores) / len(scores)))
    return curve


def keep_threshold(scores: torch.Tensor, positives: torch.Tensor, recall: float = 1.0) -> float:
    """The highest score that still keeps ``recall`` of the positives (images scoring >= it are kept)."""
    ranked = scores[positives.bool()].sort(descending=True).values
    if len(ranked) == 0:
        return math.nan
    needed = max(math.ceil(recall * len(ranked) - 1e-9), 1)
    return float(ranked[needed - 1])


def gallery_reduction(scores: torch.Tensor, positives: torch.Tensor, recall: float = 1.0) -> float:
    """Share of the gallery dropped when the threshold keeps ``recall`` of the positives."""
    threshold = keep_threshold(scores, positives, recall)
    if math.isnan(threshold):
        return math.nan
    return 1.0 - float((scores >= threshold).float().mean())


class GalleryMetrics(Metric):
    """Everything reported per validation/test epoch, from one pass over (score, tier) pairs.

    ``update(scores, tiers, pred_tiers, values=None, indices=None)``; ``compute()`` gives a dict:
    F2 and accuracy of the decision "tier >= positive_tier", Spearman with the tier (and with the
    score column), gallery reduction at 100 % and 95 % recall. Under DDP the states of every rank
    are gathered; ``indices`` (each image's index in the dataset) drop the copies that a
    DistributedSampler pads the last batches with, so each image counts once.
    """

    full_state_update = False

    def __init__(self, positive_tier: int = 2):
        super().__init__()
        self.positive_tier = positive_tier
        for name in ("scores", "tiers", "pred_tiers", "values", "indices"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, scores, tiers, pred_tiers, values=None, indices=None):
        self.scores.append(scores.detach().float())
        self.tiers.append(tiers.detach())
        self.pred_tiers.append(pred_tiers.detach())
        if values is not None:
            self.values.append(values.detach().float())
        if indices is not None:
            self.indices.append(indices.detach())

    def _cat(self, state):
        """A state's values, each image once (the first copy of an index)."""
        values = torch.cat(state) if isinstance(state, list) else state
        indices = torch.cat(self.indices) if isinstance(self.indices, list) and self.indices else self.indices
        if not isinstance(indices, torch.Tensor) or len(indices) != len(values):
            return values
        order = torch.argsort(indices, stable=True)
        first = torch.ones(len(order), dtype=torch.bool, device=order.device)
        first[1:] = indices[order][1:] != indices[order][:-1]
        return values[order[first]]

    def compute(self) -> dict[str, torch.Tensor]:
        scores, tiers, pred = self._cat(self.scores), self._cat(self.tiers), self._cat(self.pred_tiers)
        positives = tiers >= self.positive_tier
        predicted = pred >= self.positive_tier
        result = {
            "f2": binary_fbeta_score(predicted.long(), positives.long(), beta=2.0),
            "accuracy": (predicted == positives).float().mean(),
            "spearman_tier": spearman(scores, tiers),
            "gallery_reduction": torch.tensor(gallery_reduction(scores, positives, 1.0)),
            "gallery_reduction_95": torch.tensor(gallery_reduction(scores, positives, 0.95)),
        }
        if len(self.values):  # a list before a DDP sync, a tensor after it
            result["spearman_value"] = spearman(scores, self._cat(self.values))
        return result

    def positive_scores(self) -> torch.Tensor:
        """Scores of the images in ``positive_tier`` or above, best first (of every rank)."""
        with self.sync_context():
            scores, tiers = self._cat(self.scores), self._cat(self.tiers)
        return scores[tiers >= self.positive_tier].sort(descending=True).values

    def confusion_matrix(self) -> torch.Tensor:
        return multiclass_confusion_matrix(self._cat(self.pred_tiers), self._cat(self.tiers), NUM_TIERS)


def spearman(a, b) -> torch.Tensor:
    """Spearman's rank correlation of two tensors or arrays (ties share their mean rank: ratings tie a
    lot); NaN when either side is constant."""
    a, b = (torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x for x in (a, b))
    if len(a) < 2 or a.std() == 0 or b.float().std() == 0:
        return torch.tensor(math.nan)
    return spearman_corrcoef(a.float(), b.float())
