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

from beholder.data import collate

log = logging.getLogger(__name__)
ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


@torch.no_grad()
def extract_features(net: torch.nn.Module, dataset, batch_size: int = 32, num_workers: int = 2):
    """What ``net``'s head reads (``net.features``: the pooled features of the backbone and any extra
    extractors) for every readable image: (features N x F, batches' other fields concatenated)."""
    modes = {module: module.training for module in net.modules()}  # frozen norms stay in eval mode after
    net.eval()
    features, tiers, targets, paths = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate):
        if "image" not in batch:
            continue
        features.append(net.features(batch["image"]).float())
        paths += batch["image_path"]
        if "tier" in batch:
            tiers.append(batch["tier"])
            targets.append(batch["target"])
    for module, training in modes.items():
        module.training = training
    extra = {"image_path": paths}
    if tiers:
        extra.update(tier=torch.cat(tiers), target=torch.cat(targets))
    return torch.cat(features).numpy().astype(np.float64), extra


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float):
    """Weights (F x K) and bias (K) of ridge regression with an unpenalised intercept."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc = x - mean_x
    weight = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - mean_y))
    return weight, mean_y - mean_x @ weight


def ridge_cv(x: np.ndarray, y: np.ndarray, seed: int = 0, alphas=ALPHAS, folds: int = 5):
    """Ridge with the penalty chosen by ``folds``-fold cross-validation: (weight, bias, alpha)."""
    y = y.reshape(len(y), -1)
    order = np.random.default_rng(seed).permutation(len(y))
    errors = []
    for alpha in alphas:
        error = 0.0
        for part in np.array_split(order, folds):
            fit = np.setdiff1d(order, part)
            weight, bias = ridge_fit(x[fit], y[fit], alpha)
            error += float(((x[part] @ weight + bias - y[part]) ** 2).sum())
        errors.append(error)
    alpha = alphas[int(np.argmin(errors))]
    return (*ridge_fit(x, y, alpha), alpha)


def init_head_from_probe(net, dataset, seed: int = 0, num_workers: int = 2) -> float:
    """Set the head's linear layer to the ridge solution on frozen features of ``dataset``
    (training images, evaluation transforms). Returns the chosen penalty."""
    features, batch = extract_features(net, dataset, num_workers=num_workers)
    wanted = net.head.probe_targets(batch).numpy().astype(np.float64)
    weight, bias, alpha = ridge_cv(features, wanted, seed)
    fc = net.head.fc
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(weight.T).to(fc.weight.dtype))
        fc.bias.copy_(torch.from_numpy(bias).to(fc.bias.dtype))
    log.info("head initialised by ridge on %d frozen feature vectors (alpha %g)", len(features), alpha)
    return alpha
