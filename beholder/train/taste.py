"""The taste space: how people's taste departs from the crowd's, as a few directions in feature space.

From a population of raters (each rating some photos), each rater's departure from the crowd
*mean* rating of each photo (after their own scale: a + b * mean) is fitted by a ridge regression on
the photos' standardised features; the principal directions of those weight vectors, with the
population's spread along each, are the taste space. A new person's ratings y are then fitted in
closed form over [1, crowd score, taste coordinates], the crowd slope shrunk toward the population's
and the coordinates toward nothing, and blended with a plain feature ridge, everything in the
blend chosen once on the population (by simulated users: some of a rater's ratings to fit, the rest
to score), so 20 to 100 ratings give a stable model that folds back into one linear head on the
same features. Departures from the crowd *model*'s out-of-fold scores are not used to build the
space: those mostly encode the crowd model's own error, which is the same for everyone. They are
what the simulated users are scored against, though: a person's photos are new to the crowd model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from beholder.core.errors import UserError
from beholder.data.labels import fold_rows
from beholder.models.metrics import spearman
from beholder.train.probe import PROBE_FOLDS, ridge_fits, ridge_out_of_fold

RATER_PENALTY = 1e3  # each population rater's ridge: ~100 ratings against thousands of features
KS = (2, 4, 8, 16, 32, 48, 64)
PENALTIES = (0.3, 0.5, 1.0, 2.0, 3.0, 10.0)
PRIOR_RATINGS = (0.0, 5.0, 20.0)  # how many ratings' worth the population's crowd slope is
BLENDS = (0.0, 0.25, 0.5, 0.75)  # the feature ridge's share of a person's prediction
FEATURE_PENALTIES = (1e3, 3e3, 1e4, 3e4, 1e5)
HARM, MOST_HARMED = 0.05, 0.08  # a setting may leave at most 8 % of simulated users worse by more than 0.05
REGIMES = (20, None)  # ratings a simulated user fits on: 20, or 60 % of theirs (~70 on OASIS)


@dataclass
class PersonalFit:
    """A person's ratings as a linear model: score = bias + slope * crowd + x . weight (x: the
    standardised features, crowd: the crowd model's score)."""

    bias: float
    slope: float
    weight: np.ndarray

    def predict(self, x: np.ndarray, crowd: np.ndarray) -> np.ndarray:
        return self.bias + self.slope * crowd + x @ self.weight

    def head(self, w_crowd: np.ndarray, c_crowd: float) -> tuple[np.ndarray, float]:
        """As one linear head on the standardised features (the crowd's is ``w_crowd``, ``c_crowd``): (weights, bias)."""
        return self.slope * w_crowd + self.weight, self.bias + self.slope * c_crowd

    def blend(self, other: PersonalFit, share: float) -> PersonalFit:
        """(1 - share) of this prediction plus ``share`` of ``other``'s: still one linear model."""
        return PersonalFit((1 - share) * self.bias + share * other.bias, (1 - share) * self.slope + share * other.slope,
                           (1 - share) * self.weight + share * other.weight)


def fit_deviations(x: np.ndarray, crowd: np.ndarray, y: np.ndarray, alphas) -> list[PersonalFit]:
    """``y`` rescaled from ``crowd`` (a + b * crowd), then a ridge on the features of what is left,
    for each penalty in ``alphas`` (``inf``: none at all) from one SVD."""
    scale, shift = np.polyfit(crowd, y, 1) if np.ptp(crowd) > 0 else (0.0, float(y.mean()))
    residual = y - (shift + scale * crowd)
    finite = [alpha for alpha in alphas if not math.isinf(alpha)]
    fits = iter(ridge_fits(x, residual[:, None], finite) if finite else [])
    deviations = []
    for alpha in alphas:
        weight, bias = (np.zeros((x.shape[1], 1)), np.zeros(1)) if math.isinf(alpha) else next(fits)
        deviations.append(PersonalFit(float(shift + bias[0]), float(scale), weight[:, 0]))
    return deviations


def fit_deviation(x: np.ndarray, crowd: np.ndarray, y: np.ndarray, alpha: float) -> PersonalFit:
    return fit_deviations(x, crowd, y, [alpha])[0]


@dataclass
class TasteFit:
    """score = intercept + slope * crowd + coordinates . taste"""

    intercept: float
    slope: float
    taste: np.ndarray

    def predict(self, crowd: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * crowd + coordinates @ self.taste


def fit_taste(crowd: np.ndarray, coordinates: np.ndarray, y: np.ndarray, penalty: float, slope: float = 0.0,
              prior_ratings: float = 0.0) -> TasteFit:
    """Closed-form ridge over [1, crowd, taste coordinates]: the intercept free; the crowd slope
    shrunk toward ``slope`` standard deviations of the person's ratings per unit of crowd score, as
    if that slope had been seen in ``prior_ratings`` more ratings (a person's 20 ratings alone can
    find it near 0, or below, by chance); the coordinates shrunk by ``penalty`` toward the plain
    rescaled crowd."""
    design = np.column_stack([np.ones(len(y)), crowd, coordinates])
    shrink = np.diag([0.0, 1e-9 + prior_ratings * np.var(crowd), *([penalty] * coordinates.shape[1])])
    prior = np.zeros(design.shape[1])
    prior[1] = slope * np.std(y)
    beta = np.linalg.solve(design.T @ design + shrink, design.T @ y + shrink @ prior)
    return TasteFit(float(beta[0]), float(beta[1]), beta[2:])


@dataclass(frozen=True)
class Setting:
    """How a person's ratings are fitted, chosen on the population for about ``ratings`` of them: the
    taste space's first ``k`` directions with ``penalty``; the crowd slope worth ``prior_ratings``;
    a share ``blend`` of the prediction from a feature ridge with ``feature_penalty`` (inf: none)."""

    ratings: int
    k: int
    penalty: float
    prior_ratings: float
    blend: float
    feature_penalty: float


@dataclass
class TasteSpace:
    directions: np.ndarray  # F x k, orthonormal, on the standardised features
    scales: np.ndarray  # k: the spread of the population's taste along each direction (a prior's sd)
    digest: str  # sha256 of the ratings and features it was built from
    slope: float = 0.0  # the population's crowd slope, in sds of a person's ratings per unit of crowd score
    settings: list[Setting] = field(default_factory=list)  # chosen on the population, for a few counts of ratings

    def coordinates(self, x: np.ndarray, k: int | None = None) -> np.ndarray:
        """Each photo's position in the first ``k`` directions, scaled by the population's spread
        along each: one penalty then shrinks rare directions of taste harder than common ones."""
        k = self.directions.shape[1] if k is None else k
        return (x @ self.directions[:, :k]) * self.scales[:k]

    def chosen(self, ratings: int) -> Setting:
        """The setting chosen for the count nearest a person's ``ratings``."""
        return min(self.settings, key=lambda s: abs(np.log(s.ratings) - np.log(max(ratings, 1))))

    def fit(self, x: np.ndarray, crowd: np.ndarray, y: np.ndarray, setting: Setting) -> PersonalFit:
        """A person's ratings ``y`` of photos with standardised features ``x`` and crowd scores ``crowd``."""
        k = setting.k
        taste = fit_taste(crowd, self.coordinates(x, k), y, setting.penalty, self.slope, setting.prior_ratings)
        fit = PersonalFit(taste.intercept, taste.slope, self.directions[:, :k] @ (self.scales[:k] * taste.taste))
        return fit.blend(fit_deviation(x, crowd, y, setting.feature_penalty), setting.blend) if setting.blend else fit

    def state(self) -> dict:
        """What a checkpoint stores: tensors and plain values (read with weights_only); the unit
        directions in float16 (64 of them on 5,424 features: under 700 KB)."""
        return {"directions": torch.from_numpy(self.directions.astype(np.float16)), "scales": self.scales.tolist(),
                "digest": self.digest, "slope": self.slope, "settings": [asdict(s) for s in self.settings]}

    @classmethod
    def from_state(cls, state: dict, width: int) -> TasteSpace:
        """The taste space a checkpoint stores, for features of ``width``; one line when it is none
        that fits (its numbers' finiteness is checked as the checkpoint loads)."""
        try:
            space = cls(state["directions"].double().numpy(), np.asarray(state["scales"], dtype=np.float64), str(state["digest"]),
                        float(state["slope"]), [Setting(**s) for s in state["settings"]])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise UserError(f"taste_space: not one this beholder reads ({type(error).__name__}: {error})") from None
        rows, k = space.directions.shape if space.directions.ndim == 2 else (None, None)
        if rows != width or space.scales.shape != (k,) or not all(s.k >= 1 and s.ratings >= 1 for s in space.settings):
            raise UserError(f"taste_space: its directions ({space.directions.shape}), scales or settings do not fit features of width {width}")
        return space


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


def crowd_out_of_fold(x: np.ndarray, mean: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each photo's crowd score from a ridge on the other folds' photos' ``mean`` ratings (penalty
    by cross-validation): the crowd as it scores photos it was not fitted to, as a new person's are.
    beholder's crowd heads rank about as well as this ridge out of fold (bench/RESULTS.md, quality)."""
    scores, _ = ridge_out_of_fold(x, mean, fold_rows([0] * len(mean), None, PROBE_FOLDS, seed))
    return scores.ravel()


def population_slope(crowd: np.ndarray, raters: list[dict[int, float]]) -> float:
    """The median rater's slope of their ratings on the crowd score, in sds of their ratings: the
    prior a person's slope is shrunk toward."""
    slopes = []
    for rated in raters:
        rows = np.fromiter(rated, dtype=int)
        y = np.array([rated[r] for r in rows])
        if np.std(y) > 0 and np.ptp(crowd[rows]) > 0:
            slopes.append(np.polyfit(crowd[rows], y / np.std(y), 1)[0])
    return float(np.median(slopes))


def choose_settings(x: np.ndarray, crowd: np.ndarray, users, space: TasteSpace) -> dict:
    """The :class:`Setting` (and, for a base without a taste space, the plain feature ridge's
    penalty) of largest mean Spearman gain over the crowd on simulated ``users`` among those that
    harm few of them, with their mean gains. ``crowd``: the crowd's scores out of fold
    (:func:`crowd_out_of_fold`), as a new person's photos get them."""
    gains: dict[tuple, list[float]] = {}
    coordinates = space.coordinates(x)
    for fit, y, held, y_held in users:
        base = rho(crowd[held], y_held)
        features = [deviation.predict(x[held], crowd[held]) for deviation in fit_deviations(x[fit], crowd[fit], y, FEATURE_PENALTIES)]
        for alpha, predicted in zip(FEATURE_PENALTIES, features):
            gains.setdefault(("feature", alpha), []).append(rho(predicted, y_held) - base)
        for k in KS:
            for penalty in PENALTIES:
                for prior in PRIOR_RATINGS:
                    taste = fit_taste(crowd[fit], coordinates[fit, :k], y, penalty, space.slope, prior).predict(crowd[held], coordinates[held, :k])
                    gains.setdefault(("taste", k, penalty, prior, 0.0, math.inf), []).append(rho(taste, y_held) - base)
                    for share in BLENDS[1:]:
                        for alpha, predicted in zip(FEATURE_PENALTIES, features):
                            gains.setdefault(("taste", k, penalty, prior, share, alpha), []).append(
                                rho((1 - share) * taste + share * predicted, y_held) - base)
    mean = {key: float(np.mean(values)) for key, values in gains.items()}
    # among the settings that harm few people (worse by more than 0.05), the best on average
    safe = {key for key, values in gains.items() if np.mean(np.array(values) < -HARM) <= MOST_HARMED}
    feature = max((key for key in mean if key[0] == "feature"), key=lambda key: (key in safe, mean[key]))
    taste = max((key for key in mean if key[0] == "taste"), key=lambda key: (key in safe, mean[key]))
    ratings = int(np.median([len(user[0]) for user in users]))
    return {"setting": Setting(ratings, *taste[1:]), "feature_penalty": feature[1], "gain_feature": mean[feature], "gain_taste": mean[taste]}


def tune(space: TasteSpace, x: np.ndarray, crowd: np.ndarray, raters: list[dict[int, float]], seed: int) -> dict:
    """How a person is fitted in ``space``, chosen on ``raters`` as simulated users for each count
    of ratings in REGIMES (:func:`choose_settings`' answer per count), against ``crowd``: the crowd's
    scores out of fold (:func:`crowd_out_of_fold`). Sets ``space.slope`` from the same raters."""
    space.slope = population_slope(crowd, raters)
    return {count: choose_settings(x, crowd, simulated_users(raters, count, seed), space) for count in REGIMES}
