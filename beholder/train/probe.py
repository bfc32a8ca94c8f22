"""Linear probing: ridge regression on frozen backbone features.

Used to start fine-tuning from the best linear head instead of a random one (LP-FT, Kumar et al.
2022: "Fine-Tuning can Distort Pretrained Features"): on a few hundred photos a random head's first
gradients scramble the pretrained features before the head has learnt anything.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader

from beholder.data.gallery import collate, raw_safe_workers
from beholder.data.labels import fold_rows
from beholder.models.backbones import evaluation_mode

log = logging.getLogger(__name__)
PROBE_FOLDS = 5
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)


@torch.no_grad()
def extract_features(net: torch.nn.Module, dataset, batch_size: int = 32, num_workers: int = 2):
    """What ``net``'s head reads (``net.features``: the pooled features of the backbone and any extra
    extractors) for every readable image: (features N x F, batches' other fields concatenated)."""
    features, tiers, targets, paths = [], [], [], []
    with evaluation_mode(net):
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
                                **raw_safe_workers(dataset.images, num_workers)):
            if "image" not in batch:
                continue
            features.append(net.photo_features(batch["image"], batch.get("tiles")).float())
            paths += batch["image_path"]
            if "tier" in batch:
                tiers.append(batch["tier"])
                targets.append(batch["target"])
    extra = {"image_path": paths}
    if tiers:
        extra.update(tier=torch.cat(tiers), target=torch.cat(targets))
    return torch.cat(features).numpy().astype(np.float64), extra


def ridge_fits(x: np.ndarray, y: np.ndarray, alphas) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights (F x K) and bias (K) of ridge regression with an unpenalised intercept, for each
    penalty in ``alphas``, from one SVD (cheap when features outnumber images)."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    u, s, vt = np.linalg.svd(x - mean_x, full_matrices=False)
    projected = u.T @ (y - mean_y)
    fits = []
    for alpha in alphas:
        weight = vt.T @ ((s / (s**2 + alpha))[:, None] * projected)
        fits.append((weight, mean_y - mean_x @ weight))
    return fits


def out_of_fold(folds: list[np.ndarray], count: int, fit_and_predict) -> np.ndarray:
    """Each of ``count`` rows predicted by a model fitted on the other ``folds`` (row indices,
    :func:`beholder.data.labels.fold_rows`): ``fit_and_predict(fit_rows, part_rows)`` gives the part's
    predictions, one per row along the first axis."""
    predictions = None
    for part in folds:
        values = np.asarray(fit_and_predict(np.setdiff1d(np.arange(count), part), part))
        if predictions is None:
            predictions = np.zeros((count, *values.shape[1:]))
        predictions[part] = values
    return predictions


def ridge_out_of_fold(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], alphas=ALPHAS) -> tuple[np.ndarray, float]:
    """Each row's ridge prediction (N x K) from the other ``folds`` (:func:`out_of_fold`), at the
    penalty of least squared error over them: (predictions, alpha)."""
    y = y.reshape(len(y), -1)
    predictions = out_of_fold(folds, len(y), lambda fit, part: np.stack(
        [x[part] @ weight + bias for weight, bias in ridge_fits(x[fit], y[fit], alphas)], axis=1)).transpose(1, 0, 2)
    best = int(np.argmin(((predictions - y) ** 2).sum(axis=(1, 2))))
    return predictions[best], alphas[best]


def ridge_cv(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray], alphas=ALPHAS):
    """Ridge with the penalty chosen by cross-validation over ``folds`` (:func:`ridge_out_of_fold`): (weight, bias, alpha)."""
    _, alpha = ridge_out_of_fold(x, y, folds, alphas)
    return (*ridge_fits(x, y.reshape(len(y), -1), [alpha])[0], alpha)


def set_feature_scale(net, features: torch.Tensor) -> None:
    """Standardise ``net``'s features as those of ``features`` (training images): networks and levels
    of different scales then weigh alike, for ridge and for gradient descent."""
    with torch.no_grad():
        net.feature_mean.copy_(features.double().mean(0))
        net.feature_std.copy_(features.double().std(0).clamp_min(1e-6))


def fit_probe(net, features: torch.Tensor, batch: dict, seed: int = 0) -> float:
    """Set ``net``'s head's linear layer to the ridge solution on the standardised ``features``, its
    penalty chosen on folds that keep each of ``batch["group"]`` whole. Returns the penalty."""
    standardised = net.standardise(features.to(net.feature_mean.dtype)).double().numpy()
    wanted = net.head.probe_targets(batch).numpy().astype(np.float64)
    folds = fold_rows(batch["tier"].tolist(), batch.get("group"), PROBE_FOLDS, seed)
    weight, bias, alpha = ridge_cv(standardised, wanted, folds)
    fc = net.head.fc
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(weight.T).to(fc.weight.dtype))
        fc.bias.copy_(torch.from_numpy(bias).to(fc.bias.dtype))
    log.info("head initialised by ridge on %d frozen feature vectors (alpha %g)", len(features), alpha)
    return alpha


def init_head_from_probe(net, dataset, seed: int = 0, num_workers: int = 2, groups: dict[str, str | None] | None = None) -> float:
    """Fit the ridge probe on the frozen features of ``dataset`` (training images, evaluation
    transforms), standardised by them when the backbone stays frozen. A fine-tuned backbone's
    features stay as they are: dividing them by their (often tiny) spread would multiply every
    gradient step on the backbone by as much."""
    features, batch = extract_features(net, dataset, num_workers=num_workers)
    features = torch.from_numpy(features)
    batch["group"] = [(groups or {}).get(image) for image in batch["image_path"]]
    if net.frozen:
        set_feature_scale(net, features)
    return fit_probe(net, features, batch, seed)
