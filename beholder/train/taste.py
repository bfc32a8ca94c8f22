"""The taste space: how people's taste departs from the crowd's, as a few directions in feature space.

From a population of raters (each rating some photos), each rater's departure from the crowd
*mean* rating of each photo (after their own scale: a + b * mean) is fitted by a ridge regression on
the photos' standardised features; the principal directions of those weight vectors, with their
spread, are the taste space. A new person's ratings y are then fitted in closed form over
[1, crowd score, taste coordinates] with a fixed penalty chosen once on the population, so 20 to 100
ratings give a stable model; the fit folds back into one linear head on the same features.
Departures from the crowd *model*'s out-of-fold scores are not used: those mostly encode the crowd
model's own error, which is the same for everyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from beholder.train.probe import ridge_fits

RATER_PENALTY = 1e3  # each population rater's ridge: ~100 ratings against thousands of features


@dataclass
class TasteSpace:
    directions: np.ndarray  # F x k, orthonormal, on the standardised features
    scales: np.ndarray  # k: the spread of the population's taste along each direction (a prior's sd)
    penalty: float  # the fixed ridge penalty of a person's taste coordinates
    digest: str  # sha256 of the ratings and features it was built from

    @property
    def k(self) -> int:
        return self.directions.shape[1]

    def coordinates(self, x: np.ndarray) -> np.ndarray:
        """Each photo's position in the taste space, scaled by the population's spread along each
        direction: one penalty then shrinks rare directions of taste harder than common ones."""
        return (x @ self.directions) * self.scales

    def truncated(self, k: int) -> TasteSpace:
        return TasteSpace(self.directions[:, :k], self.scales[:k], self.penalty, self.digest)

    def state(self) -> dict:
        """What a checkpoint stores (float32 directions: a few hundred KB)."""
        return {"directions": self.directions.astype(np.float32), "scales": self.scales.astype(np.float32),
                "penalty": float(self.penalty), "digest": self.digest}

    @classmethod
    def from_state(cls, state: dict) -> TasteSpace:
        return cls(np.asarray(state["directions"], dtype=np.float64), np.asarray(state["scales"], dtype=np.float64),
                   float(state["penalty"]), str(state["digest"]))


def departures(x: np.ndarray, crowd_mean: np.ndarray, raters: list[dict[int, float]]) -> np.ndarray:
    """One ridge weight vector per rater (rows): what their ratings add to their rescaled crowd mean."""
    weights = []
    for rated in raters:
        rows = np.fromiter(rated, dtype=int)
        y = np.array([rated[r] for r in rows])
        scale, shift = np.polyfit(crowd_mean[rows], y, 1) if np.ptp(crowd_mean[rows]) > 0 else (0.0, y.mean())
        residual = y - (shift + scale * crowd_mean[rows])
        weights.append(ridge_fits(x[rows], residual[:, None], [RATER_PENALTY])[0][0][:, 0])
    return np.array(weights)


def build_taste_space(x: np.ndarray, crowd_mean: np.ndarray, raters: list[dict[int, float]], k: int, penalty: float) -> TasteSpace:
    """The top ``k`` principal directions of the population's departures (``raters``: photo row ->
    rating, rows of ``x``; ``crowd_mean``: each photo's mean rating)."""
    weights = departures(x, crowd_mean, raters)
    _, singular, vt = np.linalg.svd(weights - weights.mean(0), full_matrices=False)
    directions = vt[:k].T
    scales = singular[:k] / np.sqrt(len(raters))  # the sd of the raters' weights along each direction
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes() + np.ascontiguousarray(crowd_mean).tobytes()
                            + repr(sorted((sorted(r.items())) for r in raters)).encode()).hexdigest()
    return TasteSpace(directions, scales, penalty, digest)


@dataclass
class TasteFit:
    """score = intercept + slope * crowd + coordinates . taste"""

    intercept: float
    slope: float
    taste: np.ndarray

    def predict(self, crowd: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * crowd + coordinates @ self.taste


def fit_taste(crowd: np.ndarray, coordinates: np.ndarray, y: np.ndarray, penalty: float) -> TasteFit:
    """Closed-form ridge over [1, crowd, taste coordinates]: intercept and crowd slope free, the
    coordinates shrunk by ``penalty`` toward the plain rescaled crowd."""
    design = np.column_stack([np.ones(len(y)), crowd, coordinates])
    shrink = np.diag([0.0, 1e-9, *([penalty] * coordinates.shape[1])])
    beta = np.linalg.solve(design.T @ design + shrink, design.T @ y)
    return TasteFit(float(beta[0]), float(beta[1]), beta[2:])


def most_informative(crowd: np.ndarray, coordinates: np.ndarray, count: int, penalty: float, asked: list[int] | None = None) -> list[int]:
    """The ``count`` photos (rows) whose ratings would pin down a person's taste coordinates best:
    greedy D-optimal design over [1, crowd, coordinates] with the fit's penalty as prior, after the
    photos ``asked`` already."""
    design = np.column_stack([np.ones(len(crowd)), crowd, coordinates])
    information = np.diag([1e-6, 1e-6, *([penalty] * coordinates.shape[1])]) + design[asked or []].T @ design[asked or []]
    chosen = list(asked or [])
    for _ in range(count):
        inverse = np.linalg.inv(information)
        gain = np.einsum("ij,jk,ik->i", design, inverse, design)  # log det grows by log(1 + gain)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        information += np.outer(design[best], design[best])
    return chosen[len(asked or []):]
