"""train(cfg): labelled gallery in, checkpoints, TensorBoard logs and test metrics out."""

from __future__ import annotations

import glob
import logging
import math
import os

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from beholder.core import console
from beholder.core.console import examples, line
from beholder.core.entry import check_config
from beholder.core.errors import MissingInput, UserError
from beholder.core.launch import check_launch
from beholder.core.progress import progress
from beholder.core.vocabulary import KEYS, respell_config
from beholder.data.labels import regression_stats, tier_counts
from beholder.models import checkpoint
from beholder.models.backbones import require_timm_model
from beholder.models.heads import build_head
from beholder.models.load import load_checkpoint
from beholder.models.module import BeholderModule
from beholder.models.optim import build_optimizer
from beholder.train.cached_data import CachedFeatureDataModule, labelled_gallery
from beholder.train.callbacks import ResumableCheckpoint, SharedRunFolder, SkippedImages, ValidationImages, configured_callbacks, logging_interval
from beholder.train.crossval import train_folds
from beholder.train.near_copies import GROUP_PRECISION, GROUP_RECALL, calibrate_group_similarity
from beholder.train.personal import train_personal
from beholder.train.probe import fit_probe, init_head_from_probe, set_feature_scale
from beholder.train.sweep import write_metrics

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


def check_options(cfg: DictConfig) -> None:
    """Fail on a bad backbone, head or optimiser option before anything expensive starts (the
    options' names and types are checked as they are composed: conf/schema.py)."""
    accelerator = cfg.trainer.get("accelerator", "auto")
    if cfg.trainer.get("sync_batchnorm") and (accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())):
        raise UserError("trainer.sync_batchnorm=true needs GPUs (DDP refuses SyncBatchNorm on CPU processes); add trainer.sync_batchnorm=false")
    require_timm_model(cfg.backbone.name)
    try:
        build_optimizer(OmegaConf.to_container(cfg.optimizer, resolve=True), [torch.nn.Parameter(torch.zeros(1))])
        build_head(OmegaConf.to_container(cfg.head, resolve=True), in_features=8)
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"bad option: {error}") from None


SAME_JOB = ("data.root", "data.labels", "data.score_column", "backbone.name", "head._target_")


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """``resume``: a file, or ``last``: the newest ``last.ckpt`` under ``runs_root`` of a run
    with this run's data and model (not a demo's or another sweep's)."""
    if not cfg.resume:
        return None
    if cfg.resume != "last":
        path = os.path.expanduser(cfg.resume)
        if not os.path.isfile(path):
            raise MissingInput(f"resume={cfg.resume}: no such file")
        return path
    wanted = {key: OmegaConf.select(cfg, key) for key in SAME_JOB}
    candidates = []
    for path in glob.glob(os.path.join(cfg.runs_root, "**", "checkpoints", "last.ckpt"), recursive=True):
        saved = os.path.join(os.path.dirname(os.path.dirname(path)), ".hydra", "config.yaml")
        try:
            run = OmegaConf.load(saved)
        except (OSError, ValueError):
            continue
        if all(OmegaConf.select(run, key, default=None) == value for key, value in wanted.items()):
            candidates.append(path)
    if not candidates:
        spelled = {"data.root": "gallery", "data.labels": "labels"}  # read where runs of every version keep them
        described = ", ".join(f"{spelled.get(key, key)}={value}" for key, value in wanted.items() if value is not None)
        raise MissingInput(f"resume=last: no checkpoints/last.ckpt under {cfg.runs_root}/ of a run with {described}; give the checkpoint's path")
    newest = max(candidates, key=os.path.getmtime)
    log.info("resuming from %s", newest)
    return newest


def metric_mode(metric: str, mode: str) -> str:
    """Whether ``metric`` is better larger or smaller: ``auto`` minimises losses and errors."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise UserError(f"optimized_mode={mode!r}: give min, max or auto")
    return "min" if any(word in metric.rsplit("/", 1)[-1] for word in ("loss", "mse", "error")) else "max"


def train(cfg: DictConfig) -> float:
    """Fit, keep best/last checkpoints, test the best one; returns ``cfg.optimized_metric``."""
    respell_config(cfg, KEYS["train"])
    check_config("train", cfg)
    if cfg.get("personal") or cfg.get("base_ckpt"):
        return train_personal(cfg)
    check_options(cfg)
    checkpoint.save_target(cfg.save)
    check_launch(cfg.trainer)
    mode = metric_mode(cfg.optimized_metric, cfg.optimized_mode)
    ckpt_path = resolve_checkpoint(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = cfg.output_dir
    gallery = labelled_gallery(cfg)
    gallery.setup()  # reads and checks the labels before anything expensive
    splits = gallery.splits
    if cfg.cv:
        log.info("labels %s: tiers %s in %d folds (train and val), %s held out for the test", gallery.labels_uri,
                 tier_counts(splits["train"] + splits["val"]), cfg.cv, tier_counts(splits["test"]))
    else:
        log.info("labels %s: tiers per split %s", gallery.labels_uri, {name: tier_counts(rows) for name, rows in splits.items()})
    stats = regression_stats(gallery.splits["train"] + gallery.splits["val"]) if cfg.cv else gallery.regression_stats()
    module = build_module(cfg, stats)
    gallery.data_config = module.net.data_config
    datamodule = CachedFeatureDataModule(gallery, module.net, cfg.feature_views, cfg.feature_cache) if cfg.feature_cache else gallery
    logger = instantiate(cfg.logger)
    logger.log_hyperparams(module.hparams, {"hp/" + cfg.optimized_metric.replace("/", "_"): math.nan})
    if cfg.cv:
        results, best = train_folds(cfg, module, datamodule, stats["tier_values"], mode, logger)
        results["group_similarity"] = calibrate_near_copies(cfg, gallery, best)
        report(cfg, logger, results, best, datamodule.skipped, 1)
        return results[cfg.optimized_metric]
    if cfg.feature_cache and not ckpt_path:
        features, batch = datamodule.probe_inputs("train")
        set_feature_scale(module.net, features)
        if cfg.probe_init:
            fit_probe(module.net, features, batch, cfg.seed)
    elif cfg.probe_init and not ckpt_path:
        init_head_from_probe(module.net, gallery.dataset("train", train=False), cfg.seed, cfg.data.num_workers,
                             {label.image: label.group for label in gallery.splits["train"]})

    checkpoints = os.path.join(output_dir, "checkpoints")
    best_kept = ResumableCheckpoint(checkpoints, "best", monitor=cfg.optimized_metric, mode=mode, enable_version_counter=False)
    # A second callback for last.ckpt: Lightning's save_last=True skips epochs that set no new best.
    last = ResumableCheckpoint(checkpoints, "last", enable_version_counter=False)
    skipped = SkippedImages()
    bar, lines = progress(cfg.trainer)
    steps = logging_interval(cfg.trainer, len(gallery.splits["train"]), int(cfg.data.batch_size))
    chosen = configured_callbacks(cfg.callbacks, mode)
    trainer = instantiate(cfg.trainer, callbacks=[SharedRunFolder(output_dir), best_kept, last, skipped, ValidationImages(), *chosen, *lines],
                          logger=logger, default_root_dir=output_dir, log_every_n_steps=steps, **bar)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    best = best_kept.best_model_path or last.best_model_path
    best_score = float(best_kept.best_model_score) if best_kept.best_model_score is not None else math.nan
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]

    unreadable = {**getattr(datamodule, "skipped", {}), **skipped.skipped}
    if trainer.is_global_zero:
        metrics = {cfg.optimized_metric: best_score, **{name: float(value) for name, value in test.items()}}
        metrics["group_similarity"] = calibrate_near_copies(cfg, gallery, best)
        report(cfg, logger, metrics, best, unreadable, trainer.world_size)
    return best_score


def calibrate_near_copies(cfg: DictConfig, gallery, best: str) -> float | None:
    """The trained model's own near-copy threshold, from near-copies of its training photos, kept in ``best``."""
    found = calibrate_group_similarity(load_checkpoint(best), gallery.root, [label.image for label in gallery.splits["train"]],
                                       gallery.store, cfg.seed)
    if found is None:
        return None
    similarity, precision, recall = found
    checkpoint.annotate(best, group_similarity=similarity)
    if recall == 0:
        log.warning("near-copies: this model's embeddings group none of the near-copies of its training photos at a similarity that "
                    "keeps different photos apart (%.2f); keep_per_group would cull nothing; give predict group_similarity= to "
                    "group anyway", similarity)
    elif precision < GROUP_PRECISION or recall < GROUP_RECALL:
        log.warning("near-copies: this model's embeddings do not tell copies of a photo from different photos well: at similarity "
                    "%.2f, %.0f%% of the pairs its groups join are copies of one photo (the rest are different photos) and they hold "
                    "%.0f%% of the copies; look at the groups before keep_per_group, or give predict group_similarity=",
                    similarity, 100 * precision, 100 * recall)
    return similarity


def report(cfg: DictConfig, logger, metrics: dict, best: str, skipped: dict, processes: int) -> None:
    """metrics.json, the TensorBoard hparams metric and the summary a user reads."""
    result = {**metrics, "best_checkpoint": best, "skipped_images": len(skipped), "processes": processes}
    saved = checkpoint.save_copy(best, cfg.save)
    if saved:
        result["saved_as"] = saved
    logger.log_metrics({"hp/" + cfg.optimized_metric.replace("/", "_"): metrics[cfg.optimized_metric]})
    write_metrics(cfg.output_dir, result)
    print_summary(result, skipped, cfg.output_dir, isinstance(logger, TensorBoardLogger))


def print_summary(result: dict, skipped: dict, output_dir: str, tensorboard: bool) -> None:
    lines = [line("run folder", output_dir), line("processes", result["processes"]),
             *[line(name, f"{value:.4f}" if math.isfinite(value) else "undefined on these photos (none of the top tier?)", width=26)
               for name, value in result.items() if isinstance(value, float)],
             line("best checkpoint", result["best_checkpoint"]),
             *([line("saved as", f"{result['saved_as']}  (predict ckpt={result['saved_as']})")] if result.get("saved_as") else []),
             *([line("skipped", f"{len(skipped)} unreadable images: {examples(f'{i} ({r})' for i, r in skipped.items())}")] if skipped else []),
             *([f"  tensorboard --logdir {os.path.dirname(output_dir.rstrip('/')) or '.'}"] if tensorboard else [])]
    console.print_summary("training finished", lines)
