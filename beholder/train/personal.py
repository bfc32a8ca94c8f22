"""A personal model: one photographer's ratings learned as a deviation from a base (crowd) model.

    beholder train experiment=personal [base_ckpt=CROWD.ckpt] gallery=~/Pictures labels=my_labels.csv data.score_column=rating

Without ``base_ckpt`` the base is beholder's default crowd model (beholder/default_model).

The base checkpoint's network is kept whole (frozen features, standardised as in the base); its
linear regression head gives each photo the crowd's score s. The person's ratings y are fitted as
y ~ a + b*s (their scale), then a ridge regression on what is left, shrunk toward zero, i.e. toward
the base head: weights b*w_base + dw. With 50-200 ratings the penalty (k-fold cross-validated,
"infinite" among the choices) keeps the model at the rescaled crowd unless the ratings really
differ from it. The result is again one linear head: beholder predict, the labeller and similar read it as
any checkpoint, which records its base (path and sha256).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from beholder import default_model
from beholder.core import console
from beholder.core.console import line
from beholder.core.errors import UserError
from beholder.core.storage import file_digest
from beholder.data.labels import fold_rows, regression_stats, target_of, top_rating
from beholder.models import checkpoint
from beholder.models.features import cached_features
from beholder.models.load import load_checkpoint
from beholder.models.metrics import spearman
from beholder.train.probe import ridge_fits

log = logging.getLogger(__name__)
PERSONAL_FOLDS = 5
ALPHAS = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6, math.inf)
@dataclass
class Deviation:
    """score = shift + scale * base + x . weight + bias"""

    shift: float
    scale: float
    weight: np.ndarray
    bias: float
    alpha: float

    def predict(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        return self.shift + self.scale * base + x @ self.weight + self.bias


def fit_deviation(x: np.ndarray, base: np.ndarray, y: np.ndarray, alpha: float) -> Deviation:
    scale, shift = np.polyfit(base, y, 1) if np.ptp(base) > 0 else (0.0, float(y.mean()))
    residual = y - (shift + scale * base)
    if math.isinf(alpha):
        return Deviation(float(shift), float(scale), np.zeros(x.shape[1]), 0.0, alpha)
    weight, bias = ridge_fits(x, residual[:, None], [alpha])[0]
    return Deviation(float(shift), float(scale), weight[:, 0], float(bias[0]), alpha)


def personal_fit(x: np.ndarray, base: np.ndarray, y: np.ndarray, folds: list[np.ndarray], alphas=ALPHAS) -> tuple[Deviation, np.ndarray]:
    """The deviation with the penalty of least squared error over ``folds`` (row indices,
    :func:`beholder.data.labels.fold_rows`), and its out-of-fold predictions."""
    errors, out_of_fold = np.zeros(len(alphas)), np.zeros((len(alphas), len(y)))
    for part in folds:
        fit = np.setdiff1d(np.arange(len(y)), part)
        for i, alpha in enumerate(alphas):
            out_of_fold[i, part] = fit_deviation(x[fit], base[fit], y[fit], alpha).predict(x[part], base[part])
    errors = ((out_of_fold - y) ** 2).sum(1)
    best = int(np.argmin(errors))
    return fit_deviation(x, base, y, alphas[best]), out_of_fold[best]


def base_head_linear(module) -> tuple[np.ndarray, float]:
    """The base regression head as weights and bias on the standardised features."""
    head = module.net.head
    if not hasattr(head, "target_std"):
        raise UserError(f"base_ckpt: a {type(head).__name__}; a personal model starts from a head=regression checkpoint (a linear score)")
    weight = head.fc.weight.detach().double().numpy()[0] * head.target_std
    return weight, float(head.fc.bias.detach().double()) * head.target_std + head.target_mean


def train_personal(cfg: DictConfig) -> float:
    """Fit the personal head on every labelled photo; returns the out-of-fold Spearman."""
    base_path = os.path.expanduser(str(cfg.base_ckpt)) if cfg.base_ckpt else default_model.checkpoint_path()
    base_name = base_path if cfg.base_ckpt else default_model.NAME
    if not cfg.feature_cache:
        raise UserError("base_ckpt: a personal model reads cached features; set feature_cache=FOLDER (experiment=personal does)")
    module = load_checkpoint(base_path)
    if not module.net.frozen:
        raise UserError(f"base_ckpt={base_name}: its backbone was fine-tuned; a personal model needs frozen features "
                        "(train the base with experiment=best)")
    w_base, c_base = base_head_linear(module)
    gallery = instantiate(cfg.data)
    gallery.setup()
    labels = [label for split in ("train", "val", "test") for label in gallery.splits[split]]
    if len(labels) < 10:
        raise UserError(f"labels={cfg.data.labels}: {len(labels)} rated photos; a personal model needs 10 or more")
    stats = regression_stats(labels)
    features, skipped = cached_features(module.net, gallery.root, [label.image for label in labels], gallery.store,
                                        {}, 1, cfg.feature_cache, gallery.max_pixels, num_workers=cfg.data.num_workers)
    labels = [label for label in labels if label.image in features]
    x = module.net.standardise(torch.stack([features[label.image][0] for label in labels]).to(module.net.feature_mean.dtype)).double().numpy()
    y = np.array([target_of(label, stats["tier_values"]) for label in labels])
    base = x @ w_base + c_base
    folds = fold_rows([label.tier for label in labels], [label.group for label in labels], PERSONAL_FOLDS, cfg.seed)
    deviation, out_of_fold = personal_fit(x, base, y, folds)

    head = module.net.head
    head.target_mean, head.target_std = float(stats["target_mean"]), float(stats["target_std"])
    head.tier_values = torch.tensor([v for v in stats["tier_values"] if v is not None and math.isfinite(v)], dtype=torch.float32)
    weight = deviation.scale * w_base + deviation.weight
    bias = deviation.shift + deviation.scale * c_base + deviation.bias
    with torch.no_grad():
        head.fc.weight.copy_(torch.from_numpy(weight / head.target_std)[None].to(head.fc.weight.dtype))
        head.fc.bias.fill_((bias - head.target_mean) / head.target_std)
    top = top_rating(y)
    positive = [float(score) for score, rating in zip(out_of_fold, y) if rating >= top]
    module.calibrated_on = f"top-rated (>= {top:g}: {len(positive)} of the person's {len(y)})"
    module.hparams["head"] = {**module.hparams["head"], "target_mean": head.target_mean, "target_std": head.target_std,
                              "tier_values": stats["tier_values"]}
    module.hparams["score_column"] = cfg.data.score_column
    module.val_positive_scores = torch.tensor(positive)
    best = os.path.join(cfg.output_dir, "checkpoints", "best.ckpt")
    checkpoint.write(best, module, personal={"base_ckpt": base_path, "base_sha256": file_digest(base_path), "ratings": len(labels),
                                             "alpha": deviation.alpha, "scale": deviation.scale})
    metrics = {"cv/spearman_base": float(spearman(base, y)), "cv/spearman_personal": float(spearman(out_of_fold, y)),
               "ratings": len(labels), "alpha": deviation.alpha, "best_checkpoint": best, "skipped_images": len(skipped)}
    with open(os.path.join(cfg.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    console.print_summary("personal model trained", [
        line("ratings", f"{len(labels)}  ({len(skipped)} unreadable)" if skipped else len(labels)),
        line("base", base_name),
        line("spearman", f"{metrics['cv/spearman_base']:.3f} base (rescaled crowd), {metrics['cv/spearman_personal']:.3f} personal "
                         f"(out of fold, {len(folds)} folds)"),
        line("deviation", f"penalty {deviation.alpha:g}" + (" (none: the ratings agree with the base)" if math.isinf(deviation.alpha) else "")),
        line("top tier", f"rated {top:g} or more: {len(positive)} of {len(y)} photos ({len(positive) / len(y):.0%}); the keep threshold "
                         "is calibrated on their out-of-fold scores"),
        line("checkpoint", best),
    ])
    return metrics["cv/spearman_personal"]
