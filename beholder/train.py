"""train(cfg): labelled gallery in, checkpoints, TensorBoard logs and test metrics out."""

from __future__ import annotations

import json
import logging
import math
import os

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from beholder.callbacks import SkippedImages, ValidationImages
from beholder.module import BeholderModule

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, regression_stats: dict) -> BeholderModule:
    """The model as plain dicts, so that a checkpoint alone rebuilds it. Head fields left null in
    the config (the regression target's scale and tier values) are filled from the data."""
    head = OmegaConf.to_container(cfg.head, resolve=True)
    for key, value in regression_stats.items():
        if key in head and head[key] is None:
            head[key] = value
    return BeholderModule(
        backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
        head=head,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        image_size=list(cfg.data.image_size) if cfg.data.image_size else None,
        score_column=cfg.data.score_column,
    )


def train(cfg: DictConfig) -> float:
    """Fit, keep best/last checkpoints, test the best one; returns ``cfg.optimized_metric``."""
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = cfg.output_dir
    datamodule = instantiate(cfg.data)
    datamodule.setup()  # reads and checks the labels before anything expensive
    module = build_module(cfg, datamodule.regression_stats())
    datamodule.data_config = module.net.data_config

    checkpoints = os.path.join(output_dir, "checkpoints")
    checkpoint = ModelCheckpoint(checkpoints, "best", monitor=cfg.optimized_metric, mode="max", enable_version_counter=False)
    # A second callback for last.ckpt: Lightning's save_last=True skips epochs that set no new best.
    last = ModelCheckpoint(checkpoints, "last", enable_version_counter=False)
    skipped = SkippedImages()
    logger = TensorBoardLogger(output_dir, name="tensorboard", version="", default_hp_metric=False)
    trainer = instantiate(cfg.trainer, callbacks=[checkpoint, last, skipped, ValidationImages()], logger=logger, default_root_dir=output_dir)
    logger.log_hyperparams(module.hparams, {"hp/" + cfg.optimized_metric.replace("/", "_"): math.nan})

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    best = checkpoint.best_model_path or last.best_model_path
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]

    best_score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else math.nan
    result = {
        cfg.optimized_metric: best_score,
        **{name: float(value) for name, value in test.items()},
        "best_checkpoint": best,
        "skipped_images": len(skipped.skipped),
    }
    if trainer.is_global_zero:
        logger.log_metrics({"hp/" + cfg.optimized_metric.replace("/", "_"): best_score})
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=2)
        print_summary(result, skipped.skipped, output_dir)
    return best_score


def print_summary(result: dict, skipped: dict, output_dir: str) -> None:
    lines = ["", "beholder: training finished", f"  run folder      {output_dir}"]
    lines += [f"  {name:<26} {value:.4f}" for name, value in result.items() if isinstance(value, float)]
    lines.append(f"  best checkpoint {result['best_checkpoint']}")
    if skipped:
        first = "; ".join(f"{image} ({reason})" for image, reason in list(skipped.items())[:3])
        lines.append(f"  skipped {len(skipped)} unreadable images: {first}")
    lines.append(f"  tensorboard --logdir {os.path.dirname(output_dir.rstrip('/')) or '.'}")
    print("\n".join(lines), flush=True)
