"""What a predict run's options ask for: the keep / review / reject policy and the person's own verdicts (the options
themselves are checked as they are composed: conf/schema.py)."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from beholder.conf.schema import CULL_LEVELS, THRESHOLD_OPTIONS
from beholder.core.errors import UserError
from beholder.core.storage import Store, check_uri
from beholder.data.labels import parse_labels
from beholder.models.module import BeholderModule
from beholder.predict.policy import Policy


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
