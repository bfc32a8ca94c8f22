"""A personal model: one photographer's ratings learned as a deviation from a base (crowd) model.

    beholder train experiment=personal [base_ckpt=CROWD.ckpt] gallery=~/Pictures labels=my_labels.csv data.score_column=rating

Without ``base_ckpt`` the base is beholder's default crowd model (beholder/default_model).

The base checkpoint's network is kept whole (frozen features, standardised as in the base); its
linear regression head gives each photo the crowd's score s. A base that carries a taste space (the
default model does: beholder/train/taste.py) fits the person's ratings y in closed form over
[1, s, taste coordinates], the slope on s shrunk toward the population's, blended with a ridge on
the features, everything as its population chose for this many ratings. Another base fits
y ~ a + b*s (the person's scale) plus a ridge regression on what is left, shrunk toward the
rescaled crowd with a penalty chosen once on OASIS's population.
Either way the result is one linear head (b*w_base + the person's own weights): beholder predict,
the labeller and similar read it as any checkpoint, which records its base (path and sha256); its
out-of-fold scores on the person's photos calibrate its keep threshold.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from omegaconf import DictConfig

from beholder import default_model
from beholder.core import console
from beholder.core.console import line
from beholder.core.errors import UserError
from beholder.core.storage import file_digest
from beholder.data.labels import best_rating, fold_rows, regression_stats, target_of, tier_counts, top_rating
from beholder.models import checkpoint
from beholder.models.features import cached_features
from beholder.models.load import load_checkpoint
from beholder.models.metrics import cull_curve, spearman
from beholder.train.cached_data import labelled_gallery
from beholder.train.probe import out_of_fold
from beholder.train.sweep import write_metrics
from beholder.train.taste import TasteSpace, fit_deviation

log = logging.getLogger(__name__)
PERSONAL_FOLDS = 5
# The feature ridge's penalty per feature (so per unit of prior variance, whatever the width), chosen
# once on OASIS's population of raters (bench/personal.py, on the default model's 5,424 features: 1e4
# for 20 ratings, 3e4 for ~75; the smaller, since few ratings is where a person starts).
PENALTY_PER_FEATURE = 1e4 / 5424
# How far below the crowd's order a personal model may rank the person's own ratings, out of fold,
# and still be shipped. With 20-30 ratings that comparison barely predicts which ranks their new
# photos better, and the fit is already held near the crowd: on OASIS's population (bench/personal.py,
# "when the crowd's order is kept") a margin of 0 kept the crowd's order for most people and lost
# over half of what a personal model gains; this is the smallest margin within 0.005 of always
# shipping it, at 20 ratings, ~28 and ~70.
CROWD_MARGIN = 0.15


def base_head_linear(module) -> tuple[np.ndarray, float]:
    """The base regression head as weights and bias on the standardised features."""
    head = module.net.head
    if not hasattr(head, "target_std"):
        raise UserError(f"base_ckpt: a {type(head).__name__}; a personal model starts from a head=regression checkpoint (a linear score)")
    weight = head.fc.weight.detach().double().numpy()[0] * head.target_std
    return weight, float(head.fc.bias.detach().double()) * head.target_std + head.target_mean


def fit_in_taste_space(space: TasteSpace, x, base, y, folds, w_base, c_base) -> tuple[np.ndarray, float, np.ndarray, dict]:
    """The person's ratings in the taste space (:meth:`TasteSpace.fit`), as its population chose
    for this many ratings; folded into one linear head."""
    setting = space.chosen(len(y))
    predictions = out_of_fold(folds, len(y), lambda fit, part: space.fit(x[fit], base[fit], y[fit], setting).predict(x[part], base[part]))
    weight, bias = space.fit(x, base, y, setting).head(w_base, c_base)
    how = {"k": setting.k, "penalty": setting.penalty, "prior_ratings": setting.prior_ratings, "blend": setting.blend,
           "chosen_for": setting.ratings}
    return weight, bias, predictions, {**how, "feature_penalty": setting.feature_penalty} if setting.blend else how


def fit_in_features(x, base, y, folds, w_base, c_base) -> tuple[np.ndarray, float, np.ndarray, dict]:
    """Without a taste space (a base checkpoint of your own): the rescaled crowd plus a feature ridge
    with the penalty chosen once on OASIS's population, for every person."""
    penalty = PENALTY_PER_FEATURE * x.shape[1]
    predictions = out_of_fold(folds, len(y), lambda fit, part: fit_deviation(x[fit], base[fit], y[fit], penalty).predict(x[part], base[part]))
    weight, bias = fit_deviation(x, base, y, penalty).head(w_base, c_base)
    return weight, bias, predictions, {"penalty": penalty}


def better_of(y, base, personal: np.ndarray, personal_head: tuple[np.ndarray, float], w_base, c_base) -> tuple[np.ndarray, float, np.ndarray, str]:
    """The head to ship, its out-of-fold scores, and whose order it is: the personal model's, unless
    the crowd's (``base``, rescaled to the person's ratings) ranks the person's own ratings better
    out of fold by more than :data:`CROWD_MARGIN`; then the crowd's order, until more ratings make
    the personal model better."""
    if spearman(personal, y) >= spearman(base, y) - CROWD_MARGIN:
        return *personal_head, personal, "personal"
    slope, intercept = np.polyfit(base, y, 1)
    slope = max(float(slope), 1e-6)  # the crowd's order, never reversed
    return slope * w_base, slope * c_base + intercept, slope * base + intercept, "crowd"


def cull_lines(scores: list[float], ratings: list[float]) -> list[str]:
    """What each cull level costs, in the person's own terms, from their ratings out of fold."""
    best = best_rating(ratings)
    return [line("cull" if i == 0 else "", f"{level:<7}keeps about {kept:.0%} of the photos you rated {best:g} or more, and cuts "
                                          f"{cut:.0%} of all you rated" + ("  (predict's default: cull=normal)" if level == "normal" else ""))
            for i, (level, kept, cut) in enumerate(cull_curve(scores, ratings))]


def taste_summary(how: dict) -> str:
    blend = f"; {how['blend']:.0%} from a feature ridge (penalty {how['feature_penalty']:g})" if how["blend"] else ""
    return (f"taste space: {how['k']} directions, penalty {how['penalty']:g}; the crowd's slope worth {how['prior_ratings']:g} ratings"
            f"{blend} (chosen on the population for {how['chosen_for']} ratings)")


def train_personal(cfg: DictConfig) -> float:
    """Fit the personal head on every labelled photo; returns the out-of-fold Spearman."""
    base_path = os.path.expanduser(str(cfg.base_ckpt)) if cfg.base_ckpt else default_model.checkpoint_path()
    base_name = base_path if cfg.base_ckpt else default_model.name()
    if not cfg.feature_cache:
        raise UserError("base_ckpt: a personal model reads cached features; set feature_cache=FOLDER (experiment=personal does)")
    checkpoint.save_target(cfg.save)
    module = load_checkpoint(base_path)
    if not module.net.frozen:
        raise UserError(f"base_ckpt={base_name}: its backbone was fine-tuned; a personal model needs frozen features "
                        "(train the base with experiment=best)")
    w_base, c_base = base_head_linear(module)
    gallery = labelled_gallery(cfg)
    gallery.setup()
    labels = [label for split in ("train", "val", "test") for label in gallery.splits[split]]
    if len(labels) < 10:
        raise UserError(f"labels={cfg.data.labels}: {len(labels)} rated photos; a personal model needs 10 or more")
    log.info("labels %s: tiers %s in %d folds", gallery.labels_uri, tier_counts(labels), PERSONAL_FOLDS)
    stats = regression_stats(labels)
    features, skipped = cached_features(module.net, gallery.root, [label.image for label in labels], gallery.store,
                                        {}, 1, cfg.feature_cache, gallery.max_pixels, num_workers=cfg.data.num_workers)
    labels = [label for label in labels if label.image in features]
    x = module.net.standardise(torch.stack([features[label.image][0] for label in labels]).to(module.net.feature_mean.dtype)).double().numpy()
    y = np.array([target_of(label, stats["tier_values"]) for label in labels])
    base = x @ w_base + c_base
    folds = fold_rows([label.tier for label in labels], [label.group for label in labels], PERSONAL_FOLDS, cfg.seed)
    space = TasteSpace.from_state(module.taste_space, x.shape[1]) if module.taste_space is not None else None
    weight, bias, out_of_fold, how = (fit_in_taste_space(space, x, base, y, folds, w_base, c_base) if space is not None
                                      else fit_in_features(x, base, y, folds, w_base, c_base))
    weight, bias, shipped_scores, shipped = better_of(y, base, out_of_fold, (weight, bias), w_base, c_base)

    head = module.net.head
    head.target_mean, head.target_std = float(stats["target_mean"]), float(stats["target_std"])
    head.tier_values = torch.tensor([v for v in stats["tier_values"] if v is not None and math.isfinite(v)], dtype=torch.float32)
    with torch.no_grad():
        head.fc.weight.copy_(torch.from_numpy(weight / head.target_std)[None].to(head.fc.weight.dtype))
        head.fc.bias.fill_((bias - head.target_mean) / head.target_std)
    module.taste_space = None  # the crowd's, not this person's: the personal checkpoint stays small
    top = top_rating(y)
    positive = [float(score) for score, rating in zip(shipped_scores, y) if rating >= top]
    module.calibrated_on = f"rated {top:g} or more"
    module.hparams["head"] = {**module.hparams["head"], "target_mean": head.target_mean, "target_std": head.target_std,
                              "tier_values": stats["tier_values"]}
    module.hparams["score_column"] = cfg.data.score_column
    module.val_positive_scores = torch.tensor(positive)
    module.rated_scores = {"scores": [float(v) for v in shipped_scores], "ratings": [float(v) for v in y]}
    best = os.path.join(cfg.output_dir, "checkpoints", "best.ckpt")
    checkpoint.write(best, module, personal={"base_ckpt": base_path, "base_sha256": file_digest(base_path), "ratings": len(labels), **how})
    saved = checkpoint.save_copy(best, cfg.save)
    metrics = {"cv/spearman_base": float(spearman(base, y)), "cv/spearman_personal": float(spearman(out_of_fold, y)), "shipped": shipped,
               "ratings": len(labels), **how, "best_checkpoint": best, "skipped_images": len(skipped)}
    if shipped == "crowd":
        log.warning("the personal model ranks your own ratings worse than the crowd's order (Spearman %.3f against %.3f, out of fold): "
                    "the crowd's order is kept, on your rating scale; rate more photos and train again", metrics["cv/spearman_personal"],
                    metrics["cv/spearman_base"])
    elif metrics["cv/spearman_personal"] < metrics["cv/spearman_base"]:
        log.warning("the personal model ranks your own ratings a little worse than the crowd's order (Spearman %.3f against %.3f, out of "
                    "fold), within what %d ratings leave to chance: it is shipped, since such models rank most people's new photos better; "
                    "rate more photos and train again", metrics["cv/spearman_personal"], metrics["cv/spearman_base"], len(labels))
    write_metrics(cfg.output_dir, metrics)
    console.print_summary("personal model trained", [
        line("ratings", f"{len(labels)}  ({len(skipped)} unreadable)" if skipped else len(labels)),
        line("base", base_name),
        line("spearman", f"{metrics['cv/spearman_base']:.3f} base (rescaled crowd), {metrics['cv/spearman_personal']:.3f} personal "
                         f"(out of fold, {len(folds)} folds)"),
        line("fit", taste_summary(how) if "k" in how else f"the base's features, fixed penalty {how['penalty']:g}"),
        line("shipped", "the personal model" if shipped == "personal" else
             "the crowd's order (rescaled to your ratings): it ranks your own ratings better than this personal model does; "
             "rate more photos and train again"),
        line("top tier", f"rated {top:g} or more: {len(positive)} of {len(y)} photos ({len(positive) / len(y):.0%}); cull=promise "
                         "calibrates its keep threshold on their out-of-fold scores"),
        *cull_lines(shipped_scores.tolist(), y.tolist()),
        line("checkpoint", best),
        *([line("saved as", f"{saved}  (predict ckpt={saved})")] if saved else []),
    ])
    return metrics["cv/spearman_personal"]
