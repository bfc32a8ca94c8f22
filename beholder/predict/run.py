"""predict(cfg): score every image of a gallery, decide keep/reject, write the results."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
from botocore.exceptions import ClientError
from hydra.utils import instantiate
from omegaconf import DictConfig

from beholder import default_model
from beholder.core.entry import check_config
from beholder.core.errors import MissingInput, UserError
from beholder.core.hardware import native_bf16
from beholder.core.launch import check_launch, loader_workers, uses_gpu
from beholder.core.progress import progress
from beholder.core.storage import Store, check_uri, is_s3, join
from beholder.core.vocabulary import KEYS, respell_config
from beholder.data.gallery import GalleryDataset, build_transform
from beholder.data.scores import BANDS
from beholder.models.features import FeatureCache, network_key
from beholder.models.fusion import Folded, fold_batch_norms
from beholder.models.load import load_checkpoint
from beholder.models.module import BeholderModule
from beholder.predict.options import decision_policy, read_verdicts
from beholder.predict.outputs import write_results
from beholder.predict.plan import PARTIAL, PendingImages, plan_run
from beholder.predict.shards import RowCheck, ShardWriter, compact_shards, model_of, read_shards
from beholder.predict.summary import groups_summary, print_summary, small_reduction_warning
from beholder.predict.technical import Checks, burst_preference, final_order, judge
from beholder.search.bursts import DEFAULT_GROUP_SIMILARITY, burst_groups, cull_bursts
from beholder.search.embeddings import Rows
from beholder.technical import REASONS
from beholder.technical.measures import FEATURES, measures_version


class Incomplete(UserError):
    """Not every image was processed (an interrupted or limited run); a rerun finishes the rest."""


def speed_up(cfg: DictConfig, module: BeholderModule) -> dict:
    """What the networks compute in, for the summary: ``precision`` (auto: bf16 where the device
    computes it natively, core/hardware.py), ``channels_last`` (NHWC weights and batches, which a
    CPU's convolutions and a GPU's bf16 ones run fastest on; auto: on a CPU, and with bf16), and ``compile`` (torch.compile the feature
    extractor: minutes of compiling, paid back on large galleries)."""
    native = native_bf16(str(cfg.trainer.get("accelerator", "auto"))) if cfg.precision == "auto" else None
    bf16 = cfg.precision == "bf16" or native is not None
    channels_last = (bf16 or not uses_gpu(cfg.trainer)) if cfg.channels_last == "auto" else bool(cfg.channels_last)
    module.bf16_features = bf16
    folded = fold_norms(module) if cfg.fold_norms else None
    if channels_last:
        module.use_channels_last()
    if cfg.compile:
        module.net.features = torch.compile(module.net.features)
    why = f"native on this machine: {native}" if native else "no native bf16 on this machine"
    return {"precision": "bf16" if bf16 else "fp32", "channels_last": channels_last, "compile": bool(cfg.compile),
            "folded_norms": None if folded is None else folded.folded if folded.kept else "disagreed",
            "why": f"precision=auto, {why}" if cfg.precision == "auto" else f"precision={cfg.precision}"}


def fold_norms(module: BeholderModule) -> Folded:
    """``fold_norms``: the networks' batch norms folded into their convolutions, checked on a random
    batch of two at the networks' input size."""
    module.eval()
    sample = torch.rand(2, 3, *module.net.sizes[0], generator=torch.Generator().manual_seed(0))
    return fold_batch_norms(module.net, sample, module.net.features)


def predict(cfg: DictConfig) -> dict | None:
    """Returns the summary (None on the other processes of a multi-process run)."""
    respell_config(cfg, KEYS["predict"])
    gallery, output = check_uri(cfg.gallery, "gallery"), check_uri(cfg.output, "output")
    if not is_s3(gallery) and not os.path.isdir(gallery):
        raise MissingInput(f"gallery={gallery}: no such folder")
    check_config("predict", cfg)
    check_launch(cfg.trainer)
    verdicts = read_verdicts(Store(cfg.endpoint_url), cfg.labels)
    workers = loader_workers(cfg.num_workers, cfg.trainer)
    ckpt_path = os.path.expanduser(str(cfg.ckpt)) if cfg.ckpt else default_model.checkpoint_path()
    module = load_checkpoint(ckpt_path)
    # the cache's key is of the networks as trained, before speed_up folds their norms
    cache_key = network_key(module.net, {}) if cfg.feature_cache and module.net.frozen else None
    computed_in = speed_up(cfg, module)
    store = Store(cfg.endpoint_url)
    partial = join(output, PARTIAL)
    transform = build_transform(module.net.data_config, train=False)
    if cache_key:  # the features a personal model trained on, or an earlier model's run
        module.feature_cache = FeatureCache(str(cfg.feature_cache), cache_key, module.net.feature_mean.numel())
    checks = Checks.of(cfg.technical)
    measures_cache = FeatureCache(str(cfg.feature_cache), f"technical-{measures_version()}", len(FEATURES)) if checks and cfg.feature_cache else None
    check = RowCheck(*module.net.head.score_range(), module.net.feature_mean.numel(), len(FEATURES) if checks else 0)
    pending = PendingImages(output, lambda lock: plan_run(cfg, store, gallery, output, partial, ckpt_path, check, lock),
                            lambda images: GalleryDataset(gallery, images, store, transform, cache=module.feature_cache, measures=checks is not None,
                                                          measures_cache=measures_cache),
                            cfg.batch_size, workers)
    with pending.lock:
        return score_and_decide(cfg, module, store, gallery, output, partial, ckpt_path, verdicts, pending, check, checks, computed_in)


def score_and_decide(cfg, module, store, gallery, output, partial, ckpt_path, verdicts, pending, check: RowCheck,
                     checks: Checks | None, computed_in: dict) -> dict | None:
    """predict's body, with the output locked: ``pending``'s images scored into the shards, then the
    decisions over the whole gallery, the results written and the summary printed."""
    bar, lines = progress(cfg.trainer)
    writer = ShardWriter(store, partial, bool(cfg.embeddings))
    trainer = instantiate(cfg.trainer, callbacks=[writer, *lines], logger=False, **bar)
    try:
        trainer.predict(module, datamodule=pending, return_predictions=False)
        from_cache = int(trainer.strategy.reduce(torch.tensor(writer.from_cache), reduce_op="sum"))
        trainer.strategy.barrier()
    except OSError as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"scoring stopped: {error}; the scores so far are kept in {partial}; rerun to finish") from None
    if not trainer.is_global_zero:
        return None
    plan, seconds = pending.plan, time.perf_counter() - pending.planned_at
    versions, todo = plan.versions, plan.todo

    # the embeddings wait in a temporary file, already unlinked: it goes when ``rows`` does
    rows = read_shards(store, partial, versions, model_of(plan.checkpoint), check, embeddings=bool(cfg.embeddings))
    scored, skipped = rows.scored, rows.skipped
    if len(scored) + len(skipped) < len(versions):
        missing = len(versions) - len(scored) - len(skipped)
        raise Incomplete(f"{missing} of {len(versions)} images are not processed yet; rerun the same command to finish (results so far are kept in {partial})")
    ranked = final_order(list(scored.values()))  # by taste: the policy's order
    if not ranked:
        raise UserError(f"gallery={gallery}: none of the {len(versions)} files could be read (see the warnings)")
    policy = decision_policy(cfg, module, len(ranked), ckpt_path)
    for row in ranked:
        row["band"] = policy.band(row["score"], row["rank"])
        row["reason"] = policy.reason(row["score"]) if row["band"] == "reject" else ""
    # keep_top cuts by rank: both thresholds are the score of the last one kept
    keep_at, reject_below = (ranked[sum(row["band"] == "keep" for row in ranked) - 1]["score"],) * 2 if policy.keep_count \
        else (policy.keep_at, policy.reject_below)
    if checks is not None:
        judge(ranked, checks)
        ranked = final_order(ranked)
    before_bursts = sum(row["band"] == "reject" for row in ranked) / len(ranked)
    vectors = Rows(rows.embeddings, [row["embedding"] for row in ranked]) if cfg.embeddings else None
    similarity, similarity_source = near_copy_similarity(cfg, module)
    culled = group_bursts(cfg, ranked, vectors, similarity) if cfg.embeddings else 0
    for row in ranked:  # a photo the person rated keeps their verdict, whatever the model says
        if row["image"] in verdicts:
            row["band"], row["reason"] = verdicts[row["image"]], "rated"
    bands = {band: sum(row["band"] == band for row in ranked) for band in BANDS}

    summary = {
        "found": len(versions),
        "scored": len(ranked),
        "skipped": len(skipped),
        "kept": bands["keep"],
        "review": bands["review"],
        "rejected": bands["reject"],
        "rejected_for": rejected_for(ranked),
        "gallery_reduction": bands["reject"] / len(ranked),
        "gallery_reduction_before_bursts": before_bursts,
        "groups": groups_summary(cfg, ranked, culled, similarity, similarity_source),
        "threshold": keep_at,
        "reject_below": reject_below,
        "threshold_source": policy.summary,
        "images_per_second": len(todo) / seconds if todo and seconds > 0 else math.nan,
        "computed_in": computed_in,
        "newly_scored": len(todo),
        "from_cache": {"photos": from_cache, "folder": str(cfg.feature_cache)} if from_cache else None,
        "processes": trainer.world_size,
        "rescored": {reason: count for reason, count in ((plan.restarted, len(todo)), ("changed since scored", len(plan.outdated)),
                                                         ("could not be read before", plan.retried),
                                                         ("their earlier rows damaged", plan.damaged),
                                                         ("their earlier rows another model's", plan.foreign))
                     if reason and count},
        "since_last_run": ({"new": max(len(todo) - len(plan.outdated) - plan.retried, 0), "changed": len(plan.outdated), "gone": plan.gone}
                           if plan.known and not plan.restarted else None),
        "ignored": {why: len(names) for why, names in plan.ignored.items()},
        "output": output,
        "checkpoint": plan.checkpoint,
        "model": ckpt_path if cfg.ckpt else default_model.name(),
        "embeddings": bool(cfg.embeddings),
        "rated": {band: sum(row["reason"] == "rated" and row["band"] == band for row in ranked) for band in ("keep", "reject")},
        "technical": technical_summary(ranked) if checks is not None else None,
    }
    summary["warning"] = small_reduction_warning(cfg, summary, policy, ranked, module.calibration_photos)
    try:
        write_results(cfg, module, store, gallery, output, ranked, vectors, skipped, summary, ckpt_path)
    except (OSError, ClientError) as error:
        raise UserError(f"output={output}: writing the results failed ({error}); the scores are kept in {partial}; rerun to finish") from None
    compact_shards(store, partial, {row["image"]: row for row in ranked}, skipped, rows.retry, versions, model_of(plan.checkpoint),
                   rows.embeddings)
    print_summary(summary, ranked, skipped, plan.ignored)
    return summary


def near_copy_similarity(cfg: DictConfig, module: BeholderModule) -> tuple[float, str]:
    """The near-copy threshold and where it comes from: the option, the model's own, or (a model
    from before models carried one) the threshold chosen on the best preset's features."""
    if cfg.group_similarity is not None:
        return float(cfg.group_similarity), "group_similarity"
    if module.group_similarity is not None:
        return float(module.group_similarity), "the model's own"
    return DEFAULT_GROUP_SIMILARITY, "the default (the model has none of its own)"


def group_bursts(cfg: DictConfig, ranked: list[dict], vectors: Rows, similarity: float) -> int:
    """Each row's near-duplicate ``group``, ``group_rank`` and ``group_size`` (``vectors``: the rows'
    embeddings, in their order); with ``keep_per_group``, the surplus of each group rejected. Returns how many were."""
    times = np.array([row["taken"] for row in ranked], dtype=np.float64)
    window = None if cfg.group_window is None else float(cfg.group_window)
    groups, _, sizes = burst_groups(vectors, similarity, times, window)
    members: dict[int, list[dict]] = {}
    for row, group, size in zip(ranked, groups.tolist(), sizes.tolist()):
        row["group"], row["group_size"] = group, size
        members.setdefault(group, []).append(row)
    for rows in members.values():  # the sharpest well-exposed frame first, then by taste
        for rank, row in enumerate(burst_preference(rows), start=1):
            row["group_rank"] = rank
    return cull_bursts(ranked, int(cfg.keep_per_group)) if cfg.keep_per_group is not None else 0


def rejected_for(ranked: list[dict]) -> dict[str, int]:
    """The rejected, by why, junk first: technical failures, the lesser frames of a burst, what a
    personal model places among the person's lowest ratings, the person's own rejects, then the taste score."""
    why = {"burst": "lesser frame of a burst", "lowest": "among the person's lowest ratings", "rated": "the person's own verdict",
           "score": "taste score"}
    reasons = dict.fromkeys(["technical failure", *why.values()], 0)
    for row in ranked:
        if row["band"] == "reject":
            reasons[why.get(row["reason"], "technical failure")] += 1
    return reasons


def technical_summary(ranked: list[dict]) -> dict:
    """How many the technical checks rejected and sent to review, by reason, and how many they would
    have that keep the person's own verdict (``rated``)."""
    counted = {"reject": {}, "review": {}, "rated": 0}
    for row in ranked:
        if row.get("technical_band") and row["reason"] == "rated":
            counted["rated"] += 1
        elif row.get("technical_band"):
            reasons = counted[row["technical_band"]]
            reasons[REASONS[row["failure"]]] = reasons.get(REASONS[row["failure"]], 0) + 1
    return counted
