"""A predict run's options checked, and what they ask for: the keep / review / reject policy and the person's own verdicts."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from beholder.core.errors import UserError
from beholder.core.storage import Store, check_uri
from beholder.data.labels import parse_labels
from beholder.models.metrics import CULL_LEVELS
from beholder.models.module import BeholderModule
from beholder.predict.policy import Policy
from beholder.ratings.xmp import NAMING

THRESHOLD_OPTIONS = ("keep_recall", "threshold", "keep_top")
CULL_OPTIONS = ("auto", "promise", *CULL_LEVELS)


def check_threshold_options(cfg: DictConfig) -> None:
    given = [name for name in THRESHOLD_OPTIONS if cfg.get(name) is not None]
    if len(given) > 1:
        raise UserError(f"give at most one of {', '.join(THRESHOLD_OPTIONS)} (got {', '.join(given)})")
    for name in ("keep_recall", "keep_top"):
        value = cfg.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise UserError(f"{name}={value!r}: give a share in (0, 1]")
    if cfg.get("threshold") is not None and not isinstance(cfg.threshold, (int, float)):
        raise UserError(f"threshold={cfg.threshold!r}: give a number")
    for name in ("promise_recall", "promise_confidence"):
        if not (isinstance(cfg.get(name), (int, float)) and 0 < cfg.get(name) < 1):
            raise UserError(f"{name}={cfg.get(name)!r}: give a share in (0, 1)")
    cull = cfg.get("cull")
    if cull not in CULL_OPTIONS:
        raise UserError(f"cull={cull!r}: give one of {', '.join(CULL_OPTIONS)}")
    if cull in CULL_LEVELS and given:
        raise UserError(f"cull={cull} is a cut of its own; leave out {given[0]} (or give cull=auto)")


def check_group_options(cfg: DictConfig) -> None:
    per_group, window, similarity = cfg.get("keep_per_group"), cfg.get("group_window"), cfg.get("group_similarity")
    if per_group is not None and (not isinstance(per_group, int) or isinstance(per_group, bool) or per_group < 1):
        raise UserError(f"keep_per_group={per_group!r}: give a whole number of images, 1 or more")
    if window is not None and (not isinstance(window, (int, float)) or window <= 0):
        raise UserError(f"group_window={window!r}: give seconds, more than 0")
    if similarity is not None and (not isinstance(similarity, (int, float)) or not -1 <= similarity <= 1):
        raise UserError(f"group_similarity={similarity!r}: give a cosine similarity in [-1, 1]")
    if cfg.xmp_naming not in NAMING:
        raise UserError(f"xmp_naming={cfg.xmp_naming!r}: give one of {', '.join(NAMING)}")
    if not cfg.embeddings and (per_group is not None or window is not None):
        raise UserError("keep_per_group and group_window group images by their embeddings; leave embeddings=true")


def read_verdicts(store: Store, path: str | None) -> dict[str, str]:
    """The person's own verdicts from a labels CSV (``ratings import``, ``label export``): tier 0
    (junk, rejected) is a reject, any other tier a keep."""
    if not path:
        return {}
    try:
        text = store.read(check_uri(path, "labels")).decode()
    except FileNotFoundError:
        raise UserError(f"labels={path}: no such file") from None
    return {label.image: "reject" if label.tier == 0 else "keep" for label in parse_labels(text, f"labels={path}")}


def decision_policy(cfg: DictConfig, module: BeholderModule, count: int, model: str) -> Policy:
    """:func:`cut_policy`, with a personal model's lowest line (:meth:`Policy.with_lowest_line`)."""
    policy = cut_policy(cfg, module, count, model)
    return policy.with_lowest_line(module.rated_scores["scores"], module.rated_scores["ratings"]) if module.rated_scores else policy


def cut_policy(cfg: DictConfig, module: BeholderModule, count: int, model: str) -> Policy:
    """Keep / review / reject for this run: ``cull=gentle|normal|hard`` (a personal model's default,
    ``normal``), the share of the person's best photos kept; else (``cull=promise``, the crowd
    model's default) calibrated on the checkpoint's top-tier validation scores; ``keep_top`` or
    ``threshold`` fix a plain cut (no review band)."""
    level = cfg.get("cull")
    if level == "auto":
        level = "normal" if module.rated_scores and not any(cfg.get(name) is not None for name in THRESHOLD_OPTIONS) else "promise"
    if level in CULL_LEVELS:
        if not module.rated_scores:
            raise UserError(f"cull={level}: the cull levels are calibrated on a person's ratings, which only a personal model "
                            f"(experiment=personal) carries; ckpt={model} keeps by cull=promise, keep_recall=, threshold= or keep_top=")
        return Policy.cull(module.rated_scores["scores"], module.rated_scores["ratings"], level)
    if cfg.get("keep_top") is not None:
        keep = max(math.ceil(float(cfg.keep_top) * count - 1e-9), 1)  # exactly this many, ties or not
        return Policy.top(keep, f"keep_top={cfg.keep_top} of this gallery")
    if cfg.get("threshold") is not None:
        return Policy.fixed(float(cfg.threshold), f"threshold={cfg.threshold}")
    scores = module.val_positive_scores.tolist()
    if not scores:
        raise UserError(f"ckpt={model} holds no validation scores; give threshold= or keep_top=")
    keep_recall = 1.0 if cfg.get("keep_recall") is None else float(cfg.keep_recall)
    return Policy.calibrated(scores, keep_recall, float(cfg.promise_recall), float(cfg.promise_confidence),
                             tiers=module.calibration_photos)
