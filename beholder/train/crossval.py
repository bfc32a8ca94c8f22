"""``cv=K``: K heads on cached features, each validated on the fold of the labelled rows (train and
val splits) that it did not see. Their out-of-fold scores calibrate the keep threshold, on K times
more top-tier photos than one validation split holds, and the shipped model is their average: the
heads are linear, so averaging their weights averages their outputs (logits, for softmax and ordinal).
"""

from __future__ import annotations

import copy
import logging
import math
import os

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from beholder.core.errors import UserError
from beholder.core.progress import progress
from beholder.data.labels import fold_labels
from beholder.models.metrics import GalleryMetrics
from beholder.models.module import BeholderModule
from beholder.train.cached_data import CachedFeatureDataModule
from beholder.train.callbacks import BestHead, logging_interval
from beholder.train.probe import fit_probe, set_feature_scale

log = logging.getLogger(__name__)


def train_folds(cfg: DictConfig, module: BeholderModule, data: CachedFeatureDataModule, tier_values: list[float], mode: str,
                logger: Logger) -> tuple[dict, str]:
    """Train ``cfg.cv`` fold heads and ship their average in ``checkpoints/best.ckpt``. Returns the
    metrics of the out-of-fold scores (``val/...``) and of the average on the test split, and the path."""
    labelled, test = data.splits["train"] + data.splits["val"], data.splits["test"]
    folds = fold_labels(labelled, cfg.cv, cfg.seed)
    features, _ = data.with_splits({"train": labelled, "val": [], "test": test}, tier_values).probe_inputs("train")
    set_feature_scale(module.net, features)  # one standardisation for every fold, so that heads average
    out_of_fold, heads, loss = GalleryMetrics(module.net.head.positive_tier), [], 0.0
    for k, fold in enumerate(folds):
        pl.seed_everything(cfg.seed + k, workers=True)
        fold_module = copy.deepcopy(module)
        rest = [lb for other in folds if other is not fold for lb in other]
        fold_data = data.with_splits({"train": rest, "val": fold, "test": test}, tier_values)
        if cfg.probe_init:
            fit_probe(fold_module.net, *fold_data.probe_inputs("train"), cfg.seed)
        best = BestHead(cfg.optimized_metric, mode)
        trainer = instantiate(cfg.trainer, callbacks=[best], logger=instantiate(cfg.logger, version=f"fold{k}"),
                              default_root_dir=cfg.output_dir, enable_checkpointing=False,
                              log_every_n_steps=logging_interval(cfg.trainer, len(rest), int(cfg.data.batch_size)),
                              **progress(cfg.trainer)[0])  # fold heads train in seconds: a bar on a terminal, else no lines
        trainer.fit(fold_module, datamodule=fold_data)
        fold_module.net.head.load_state_dict(best.state)
        heads.append(best.state)
        with torch.no_grad():
            fold_features, batch = fold_data.probe_inputs("val")
            head, outputs = fold_module.net.head, fold_module.eval().outputs({"features": fold_features})
            values = batch["target"] if cfg.data.score_column else None
            out_of_fold.update(head.score(outputs), batch["tier"], head.tier(outputs), values)
            loss += float(head.loss(outputs, batch)) * len(fold_features)
        if math.isfinite(best.best):
            log.info("fold %d of %d: best %s %.4f", k + 1, cfg.cv, cfg.optimized_metric, best.best)
        else:
            log.info("fold %d of %d: %s undefined on its %d validation photos (none of the top tier?); its last head is kept",
                     k + 1, cfg.cv, cfg.optimized_metric, len(fold))

    module.net.head.load_state_dict({name: torch.stack([h[name] for h in heads]).mean(0) for name in heads[0]})
    module.val_positive_scores = out_of_fold.positive_scores().cpu()
    results = {f"val/{name}": float(value) for name, value in out_of_fold.compute().items()}
    results["val/loss"] = loss / len(labelled)
    if cfg.optimized_metric not in results:
        raise UserError(f"optimized_metric={cfg.optimized_metric}: cv={cfg.cv} reports {', '.join(results)}")

    trainer = instantiate(cfg.trainer, callbacks=[], logger=logger, default_root_dir=cfg.output_dir, enable_checkpointing=False,
                          **progress(cfg.trainer)[0])
    test = trainer.test(module, datamodule=data, verbose=False)[0]
    path = os.path.join(cfg.output_dir, "checkpoints", "best.ckpt")
    trainer.save_checkpoint(path)
    return {**results, **{name: float(value) for name, value in test.items()}}, path
