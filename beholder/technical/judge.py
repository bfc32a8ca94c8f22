"""From the measures to a verdict: a small head (multinomial logistic regression over the standardised
:data:`beholder.technical.measures.FEATURES`) gives each photo the probability that it is fine or has
each failure, trained on degraded copies of real photos (self-supervised: no new labels) by
``python bench/technical.py calibrate``, which writes ``calibration.json`` beside this file with its
thresholds, chosen so that few untouched photos get a reason."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from beholder.core.errors import UserError
from beholder.technical import REASONS
from beholder.technical.measures import FEATURES

FINE = "fine"
CLASSES = (FINE, *REASONS)
CALIBRATION = "calibration.json"


@dataclass(frozen=True)
class Head:
    mean: np.ndarray  # F
    scale: np.ndarray  # F
    weights: np.ndarray  # F x classes
    bias: np.ndarray  # classes
    reject: float  # calibrated: P(a failure) from which a photo is rejected
    review: float  # ... from which it is sent to review
    digest: str  # of the calibration: results scored with another head are judged again

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """N x F measures -> N x classes probabilities (:data:`CLASSES`)."""
        logits = ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)

    def state(self) -> dict:
        return {"features": list(FEATURES), "classes": list(CLASSES), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias.tolist(), "reject": self.reject, "review": self.review}


def head_from(state: dict, digest: str) -> Head:
    if state.get("features") != list(FEATURES) or state.get("classes") != list(CLASSES):
        raise UserError("beholder/technical/calibration.json: its features or classes are not this beholder's; run bench/technical.py calibrate")
    return Head(*(np.asarray(state[key], np.float64) for key in ("mean", "scale", "weights", "bias")), float(state["reject"]),
                float(state["review"]), digest)


@functools.lru_cache(maxsize=1)
def shipped_head() -> Head:
    text = resources.files("beholder.technical").joinpath(CALIBRATION).read_text()
    return head_from(json.loads(text)["head"], hashlib.sha256(text.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class Verdict:
    quality: float  # 1 - P(one of the checked failures): 1 is a clean photo
    failure: str | None  # the likeliest checked failure (a REASONS key), when the photo is rejected or sent to review for it
    band: str | None  # "reject", "review", or None: what the technical checks ask of the photo


def verdicts(probabilities: np.ndarray, checks: list[str], reject: float, review: float) -> list[Verdict]:
    """Each photo's verdict from its :meth:`Head.probabilities`, over the failures in ``checks`` only
    (a failure not checked counts as fine)."""
    columns = [CLASSES.index(check) for check in checks]
    out = []
    for row in np.asarray(probabilities):
        bad = float(row[columns].sum()) if columns else 0.0
        likeliest = checks[int(np.argmax(row[columns]))] if columns else None
        band = "reject" if bad >= reject else "review" if bad >= review else None
        out.append(Verdict(1.0 - bad, likeliest if band else None, band))
    return out
