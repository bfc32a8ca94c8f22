"""The heads that turn pooled features into a score: softmax, regression, ordinal; built by name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from beholder.core.errors import UserError
from beholder.core.spec import registered, typed_arguments


class SoftmaxHead(nn.Module):
    """Dropout → linear → class logits: "tier ≥ positive_tier" vs rest, or all four tiers.

    Score: the probability that the image is in ``positive_tier`` or above.
    """

    def __init__(self, in_features: int, num_classes: int = 2, positive_tier: int = 2, dropout: float = 0.6):
        super().__init__()
        if num_classes not in (2, 4):
            raise UserError(f"head.num_classes={num_classes}: use 2 (tier >= positive_tier vs rest) or 4 (tiers)")
        self.num_classes, self.positive_tier = num_classes, positive_tier
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(in_features, num_classes)

    def forward(self, features):
        return self.fc(self.dropout(features))

    def classes(self, tier):
        return (tier >= self.positive_tier).long() if self.num_classes == 2 else tier

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, self.classes(batch["tier"]))

    def probe_targets(self, batch):
        """What a linear probe should output: +1 for the true class's logit, -1 for the others."""
        return 2 * F.one_hot(self.classes(batch["tier"]), self.num_classes).double() - 1

    def probabilities(self, outputs):
        return outputs.float().softmax(dim=-1)

    def score_range(self) -> tuple[float, float]:
        """What ``score`` can give: a probability."""
        return 0.0, 1.0

    def score(self, outputs):
        p = self.probabilities(outputs)
        return p[:, 1] if self.num_classes == 2 else p[:, self.positive_tier:].sum(dim=-1)

    def tier(self, outputs):
        if self.num_classes == 4:
            return outputs.argmax(dim=-1)
        return (self.score(outputs) >= 0.5).long() * self.positive_tier


class RegressionHead(nn.Module):
    """Dropout → linear → one value, trained with MSE on the standardised target.

    Rare tiers are not oversampled for it: that would shift the distribution of the continuous
    target it learns (measured on OASIS: bench/PILOTS.md, 7).

    Score: the predicted target (the score column, or the tier's mid-percentile). Predicted
    tier: the nearest tier value, where tier values are each tier's mean target in training.
    Left as None, the target scale and tier values are those of the original project's labels
    (tier mid-percentiles, which spread evenly over 0..1).
    """

    def __init__(
        self,
        in_features: int,
        positive_tier: int = 2,
        dropout: float = 0.6,
        target_mean: float | None = None,
        target_std: float | None = None,
        tier_values: list[float] | None = None,
    ):
        super().__init__()
        self.positive_tier = positive_tier
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(in_features, 1)
        self.target_mean = 0.5 if target_mean is None else float(target_mean)
        self.target_std = 0.29 if target_std is None else float(target_std)
        tier_values = tier_values or [0.288, 0.763, 0.966, 0.991]
        known = [(t, v) for t, v in enumerate(tier_values) if v is not None and math.isfinite(v)]
        self.register_buffer("known_tiers", torch.tensor([t for t, _ in known]), persistent=False)
        self.register_buffer("tier_values", torch.tensor([v for _, v in known]), persistent=False)

    def forward(self, features):
        return self.fc(self.dropout(features)).squeeze(-1)

    def standardise(self, target):
        return (target - self.target_mean) / self.target_std

    def loss(self, outputs, batch):
        return F.mse_loss(outputs.float(), self.standardise(batch["target"]))

    def probe_targets(self, batch):
        return self.standardise(batch["target"].double())[:, None]

    def score_range(self) -> tuple[float, float]:
        """Scores as far as a thousand standard deviations of the target from its mean: no
        prediction of this head is further (a row claiming one was not written by it)."""
        return self.target_mean - 1e3 * abs(self.target_std), self.target_mean + 1e3 * abs(self.target_std)

    def score(self, outputs):
        return outputs.float() * self.target_std + self.target_mean

    def tier(self, outputs):
        distance = (self.score(outputs)[:, None] - self.tier_values[None, :]).abs()
        return self.known_tiers[distance.argmin(dim=-1)]


class OrdinalHead(nn.Module):
    """Dropout → linear → 3 logits, CORN (Shi, Cao and Raschka 2021): logit k models
    P(tier > k | tier > k - 1), trained only on the images that reached tier k, so the tiers'
    order is built in (the original's dilemma between softmax and regression) and P(tier > k) =
    the product of the first k+1 sigmoids never rises with k.

    Score: ``expected_tier`` (the sum of P(tier > k)), or ``p_top``, P(tier >= positive_tier).
    """

    num_classes = 4

    def __init__(self, in_features: int, positive_tier: int = 2, dropout: float = 0.6, score: str = "expected_tier"):
        super().__init__()
        if score not in ("expected_tier", "p_top"):
            raise UserError(f"head.score={score!r}: use expected_tier or p_top")
        self.positive_tier, self.score_kind = positive_tier, score
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(in_features, self.num_classes - 1)

    def forward(self, features):
        return self.fc(self.dropout(features))

    def loss(self, outputs, batch):
        tier, total, count = batch["tier"], outputs.new_zeros(()), 0
        for k in range(self.num_classes - 1):
            reached = tier >= k
            if reached.any():
                total = total + F.binary_cross_entropy_with_logits(outputs[reached, k].float(), (tier[reached] > k).float(), reduction="sum")
                count += int(reached.sum())
        return total / max(count, 1)

    def probe_targets(self, batch):
        """What a linear probe should output: +1 for each threshold the tier passes, -1 for the others."""
        passes = batch["tier"][:, None] > torch.arange(self.num_classes - 1)[None, :]
        return 2 * passes.double() - 1

    def above(self, outputs):
        """P(tier > k) for k = 0, 1, 2."""
        return torch.cumprod(torch.sigmoid(outputs.float()), dim=-1)

    def probabilities(self, outputs):
        above = self.above(outputs)
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        return torch.cat([ones, above], dim=-1) - torch.cat([above, zeros], dim=-1)

    def score_range(self) -> tuple[float, float]:
        """What ``score`` can give: an expected tier (0-3) or a probability."""
        return (0.0, 3.0) if self.score_kind == "expected_tier" else (0.0, 1.0)

    def score(self, outputs):
        above = self.above(outputs)
        return above.sum(dim=-1) if self.score_kind == "expected_tier" else above[:, self.positive_tier - 1]

    def tier(self, outputs):
        return (self.above(outputs) > 0.5).sum(dim=-1)


# Stable short names (what checkpoints record), and the classes' paths (what configs name): today's,
# and beholder.model.*, where they lived before the subpackages (older configs and checkpoints).
HEAD_NAMES = {"softmax": SoftmaxHead, "regression": RegressionHead, "ordinal": OrdinalHead}
HEADS = {**HEAD_NAMES, **{f"{path}.{cls.__name__}": cls for cls in HEAD_NAMES.values() for path in (cls.__module__, "beholder.model")}}


def head_name(spec: dict) -> str:
    """The stable short name of a head spec's class."""
    cls = registered("head", HEADS, spec)
    return next(name for name, known in HEAD_NAMES.items() if known is cls)


def oversamples_tiers(spec: dict) -> bool:
    """Whether training draws rare tiers about as often as common ones for this head (the tier
    heads), by default (``data.oversample=null``)."""
    return registered("head", HEADS, spec) is not RegressionHead


def build_head(spec: dict, in_features: int) -> nn.Module:
    """A head from its config dict: only beholder's own head classes, only typed plain arguments."""
    cls = registered("head", HEADS, spec)
    return cls(in_features=in_features, **typed_arguments("head", cls, spec, skip=("in_features",)))
