"""The taste space: how people's taste departs from the crowd's, as a few directions in feature space.

From a population of raters (each rating some photos), each rater's departure from the crowd
*mean* rating of each photo (after their own scale: a + b * mean) is fitted by a ridge regression on
the photos' standardised features; the principal directions of those weight vectors, with the
population's spread along each, are the taste space. A new person's ratings y are then fitted in
closed form over [1, crowd score, taste coordinates] with a penalty chosen once on the population
(by simulated users: some of a rater's ratings to fit, the rest to score), so 20 to 100 ratings give
a stable model; the fit folds back into one linear head on the same features. Departures from the
crowd *model*'s out-of-fold scores are not used: those mostly encode the crowd model's own error,
which is the same for everyone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from beholder.models.metrics import spearman
from beholder.train.probe import ridge_fits

RATER_PENALTY = 1e3  # each population rater's ridge: ~100 ratings against thousands of features
KS = (2, 4, 8, 16, 32, 48, 64)
PENALTIES = (0.3, 0.5, 1.0, 2.0, 3.0, 10.0)
FEATURE_PENALTIES = (1e3, 3e3, 1e4, 3e4, 1e5)
HARM, MOST_HARMED = 0.05, 0.08  # a setting may leave at most 8 % of simulated users worse by more than 0.05
REGIMES = (20, None)  # ratings a simulated user fits on: 20, or 60 % of theirs (~70 on OASIS)


@dataclass
class Deviation:
    """A person's ratings as their rescaled crowd score plus a ridge on the features:
    score = shift + scale * base + x . weight + bias"""

    shift: float
    scale: float
    weight: np.ndarray
    bias: float
    alpha: float

    def predict(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return self.shift + self.scale * base + x @ self.weight + self.bias


def fit_deviations(x: np.ndarray, base: np.ndarray, y: np.ndarray, alphas) -> list[Deviation]:
    """``y`` rescaled from ``base`` (a + b * base), then a ridge on the features of what is left, for
    each penalty in ``alphas`` (``inf``: none at all) from one SVD."""
    scale, shift = np.polyfit(base, y, 1) if np.ptp(base) > 0 else (0.0, float(y.mean()))
    residual = y - (shift + scale * base)
    finite = [alpha for alpha in alphas if not math.isinf(alpha)]
    fits = iter(ridge_fits(x, residual[:, None], finite) if finite else [])
    deviations = []
    for alpha in alphas:
        if math.isinf(alpha):
            deviations.append(Deviation(float(shift), float(scale), np.zeros(x.shape[1]), 0.0, alpha))
        else:
            weight, bias = next(fits)
            deviations.append(Deviation(float(shift), float(scale), weight[:, 0], float(bias[0]), alpha))
    return deviations


def fit_deviation(x: np.ndarray, base: np.ndarray, y: np.ndarray, alpha: float) -> Deviation:
    return fit_deviations(x, base, y, [alpha])[0]


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


@dataclass
class TasteSpace:
    directions: np.ndarray  # F x k, orthonormal, on the standardised features
    scales: np.ndarray  # k: the spread of the population's taste along each direction (a prior's sd)
    digest: str  # sha256 of the ratings and features it was built from
    settings: list[tuple[int, int, float]] = field(default_factory=list)  # (ratings, k, penalty) chosen on the population

    def coordinates(self, x: np.ndarray, k: int | None = None) -> np.ndarray:
        """Each photo's position in the first ``k`` directions, scaled by the population's spread
        along each: one penalty then shrinks rare directions of taste harder than common ones."""
        k = self.directions.shape[1] if k is None else k
        return (x @ self.directions[:, :k]) * self.scales[:k]

    def chosen(self, ratings: int) -> tuple[int, int, float]:
        """The settings (ratings, k, penalty) chosen for the count nearest a person's ``ratings``."""
        return min(self.settings, key=lambda s: abs(np.log(s[0]) - np.log(max(ratings, 1))))

    def setting(self, ratings: int) -> tuple[int, float]:
        """k and penalty for a person with this many ratings."""
        return self.chosen(ratings)[1:]

    def fold(self, fit: TasteFit, k: int, w_crowd: np.ndarray, c_crowd: float) -> tuple[np.ndarray, float]:
        """A person's fit as one linear head on the standardised features: (weights, bias)."""
        return fit.slope * w_crowd + self.directions[:, :k] @ (self.scales[:k] * fit.taste), fit.intercept + fit.slope * c_crowd

    def state(self) -> dict:
        """What a checkpoint stores: tensors and plain values (read with weights_only); the unit
        directions in float16 (64 of them on 5,424 features: under 700 KB)."""
        return {"directions": torch.from_numpy(self.directions.astype(np.float16)), "scales": self.scales.tolist(),
                "digest": self.digest, "settings": [list(s) for s in self.settings]}

    @classmethod
    def from_state(cls, state: dict) -> TasteSpace:
        return cls(state["directions"].double().numpy(), np.asarray(state["scales"], dtype=np.float64), str(state["digest"]),
                   [(int(n), int(k), float(p)) for n, k, p in state["settings"]])


def crowd_mean(raters: list[dict[int, float]], count: int) -> np.ndarray:
    """Each of ``count`` rows' mean rating over ``raters`` (row -> rating), NaN where nobody rated it:
    the crowd *mean* that people's departures are measured from."""
    total, raters_of = np.zeros(count), np.zeros(count)
    for rated in raters:
        for row, value in rated.items():
            total[row] += value
            raters_of[row] += 1
    return np.where(raters_of > 0, total / np.maximum(raters_of, 1), np.nan)


def departures(x: np.ndarray, crowd_mean: np.ndarray, raters: list[dict[int, float]]) -> np.ndarray:
    """One ridge weight vector per rater (rows): what their ratings add to their rescaled crowd mean."""
    weights = []
    for rated in raters:
        rows = np.fromiter(rated, dtype=int)
        weights.append(fit_deviation(x[rows], crowd_mean[rows], np.array([rated[r] for r in rows]), RATER_PENALTY).weight)
    return np.array(weights)


def build_taste_space(x: np.ndarray, crowd_mean: np.ndarray, raters: list[dict[int, float]], k: int = max(KS)) -> TasteSpace:
    """The top ``k`` principal directions of the population's departures (``raters``: row of ``x``
    -> rating; ``crowd_mean``: each row's mean rating)."""
    weights = departures(x, crowd_mean, raters)
    _, singular, vt = np.linalg.svd(weights - weights.mean(0), full_matrices=False)
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes() + np.ascontiguousarray(crowd_mean).tobytes()
                            + repr([sorted(r.items()) for r in raters]).encode()).hexdigest()
    return TasteSpace(vt[:k].T, singular[:k] / np.sqrt(len(raters)), digest)


def simulated_users(raters: list[dict[int, float]], count: int | None, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each rater as a user: ``count`` (None: 60 %) of their ratings to fit, the rest to score."""
    rng = np.random.default_rng(seed)
    users = []
    for rated in raters:
        rows = np.array(sorted(rated))
        order = rng.permutation(len(rows))
        cut = count or int(0.6 * len(rows))
        fit, held = rows[order[:cut]], rows[order[cut:]]
        users.append((fit, np.array([rated[r] for r in fit]), held, np.array([rated[r] for r in held])))
    return users


def rho(a, b) -> float:
    value = float(spearman(a, b))
    return 0.0 if np.isnan(value) else value


def choose_settings(x: np.ndarray, crowd: np.ndarray, users, space: TasteSpace) -> dict:
    """The taste space's k and penalty, and the plain feature ridge's fixed penalty, of largest mean
    Spearman gain over the crowd on simulated users among those that harm few of them (with their
    mean gains)."""
    gains: dict[tuple, list[float]] = {}
    coordinates = space.coordinates(x)
    for fit, y, held, y_held in users:
        base = rho(crowd[held], y_held)
        for deviation in fit_deviations(x[fit], crowd[fit], y, FEATURE_PENALTIES):
            gains.setdefault(("feature", deviation.alpha), []).append(rho(deviation.predict(x[held], crowd[held]), y_held) - base)
        for k in KS:
            for penalty in PENALTIES:
                model = fit_taste(crowd[fit], coordinates[fit, :k], y, penalty)
                gains.setdefault(("taste", k, penalty), []).append(rho(model.predict(crowd[held], coordinates[held, :k]), y_held) - base)
    mean = {key: float(np.mean(values)) for key, values in gains.items()}
    # among the settings that harm few people (worse by more than 0.05), the best on average
    safe = {key for key, values in gains.items() if np.mean(np.array(values) < -HARM) <= MOST_HARMED}
    feature = max((key for key in mean if key[0] == "feature"), key=lambda key: (key in safe, mean[key]))
    taste = max((key for key in mean if key[0] == "taste"), key=lambda key: (key in safe, mean[key]))
    return {"feature_penalty": feature[1], "k": taste[1], "penalty": taste[2], "gain_feature": mean[feature], "gain_taste": mean[taste]}
