"""predict(cfg): score every image of a gallery, decide keep/reject, write the results."""

from __future__ import annotations

import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from botocore.exceptions import ClientError
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from beholder import default_model
from beholder.core.console import quiet_libraries
from beholder.core.errors import UserError
from beholder.core.launch import check_launch, check_shared_folder, loader_workers, pin_memory
from beholder.core.memory import keep_freed_memory
from beholder.core.storage import Store, check_uri, file_digest, is_s3, join
from beholder.data.features import FeatureCache, network_key
from beholder.data.gallery import GalleryDataset, build_transform, collate, list_gallery, raw_safe_workers
from beholder.data.labels import parse_labels
from beholder.models.load import load_checkpoint
from beholder.models.module import BeholderModule
from beholder.predict.bursts import burst_groups
from beholder.predict.policy import BANDS, Policy, cull_bursts
from beholder.predict.report import highlights_html, score_histogram_svg, scores_csv, skipped_csv
from beholder.predict.shards import ShardWriter, bind_run, compact_shards, read_shards
from beholder.ratings.xmp import NAMING, sidecar_targets, write_sidecars
from beholder.search.embeddings import CHECKPOINT, decode, parquet_bytes
from beholder.search.embeddings import FILE as EMBEDDINGS
from beholder.train.callbacks import progress

THRESHOLD_OPTIONS = ("keep_recall", "threshold", "keep_top")


class Incomplete(UserError):
    """Not every image was processed (an interrupted or limited run); a rerun finishes the rest."""


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


def check_group_options(cfg: DictConfig) -> None:
    per_group, window, similarity = cfg.get("keep_per_group"), cfg.get("group_window"), cfg.get("group_similarity")
    if per_group is not None and (not isinstance(per_group, int) or isinstance(per_group, bool) or per_group < 1):
        raise UserError(f"keep_per_group={per_group!r}: give a whole number of images, 1 or more")
    if window is not None and (not isinstance(window, (int, float)) or window <= 0):
        raise UserError(f"group_window={window!r}: give seconds, more than 0")
    if not isinstance(similarity, (int, float)) or not -1 <= similarity <= 1:
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
        text = store.read(check_uri(path, "ratings")).decode()
    except FileNotFoundError:
        raise UserError(f"ratings={path}: no such file") from None
    return {label.image: "reject" if label.tier == 0 else "keep" for label in parse_labels(text, f"ratings={path}")}


def small_reduction_warning(cfg: DictConfig, summary: dict, policy: Policy, ranked: list[dict], calibration: str) -> str | None:
    """Why little of the gallery was culled, when the calibrated threshold is what keeps it."""
    if summary["gallery_reduction"] >= 0.25 or any(cfg.get(name) is not None for name in ("threshold", "keep_top")):
        return None
    reaching = sum(row["score"] >= policy.reject_below for row in ranked) / len(ranked)
    return (f"only {summary['gallery_reduction']:.0%} of the gallery is culled: the model's calibration photos ({calibration}) "
            f"score down to {policy.reject_below:.4f}, and {reaching:.0%} of this gallery scores that high; keep_recall=0.9 or "
            "keep_top=0.3 cut harder, at the cost of some photos like those")


def decision_policy(cfg: DictConfig, module: BeholderModule, count: int, model: str) -> Policy:
    """Keep / review / reject for this run: by default calibrated on the checkpoint's top-tier
    validation scores; ``keep_top`` or ``threshold`` fix a plain cut (no review band)."""
    if cfg.get("keep_top") is not None:
        keep = max(math.ceil(float(cfg.keep_top) * count - 1e-9), 1)  # exactly this many, ties or not
        return Policy.top(keep, f"keep_top={cfg.keep_top} of this gallery")
    if cfg.get("threshold") is not None:
        return Policy.fixed(float(cfg.threshold), f"threshold={cfg.threshold}")
    scores = module.val_positive_scores.tolist()
    if not scores:
        raise UserError(f"ckpt_path={model} holds no validation scores; give threshold= or keep_top=")
    keep_recall = 1.0 if cfg.get("keep_recall") is None else float(cfg.keep_recall)
    return Policy.calibrated(scores, keep_recall, float(cfg.promise_recall), float(cfg.promise_confidence),
                             tiers=module.calibration_photos)


PARTIAL = ".beholder-partial"


@dataclass
class Plan:
    """What a run starts from: the gallery's files with their versions, those still to score, and
    why earlier results were dropped."""
    versions: dict[str, str]
    todo: list[str]
    restarted: str | None
    outdated: set[str]
    checkpoint: str
    gone: int  # images earlier results of this run name that are no longer in the gallery
    known: int  # images earlier results name at all (0: the first run into this output)


def plan_run(cfg: DictConfig, store: Store, gallery: str, output: str, partial: str, ckpt_path: str) -> Plan:
    versions = list_gallery(store, gallery)
    check_writable(store, output)
    # Results so far count only for this checkpoint, this gallery and each file as it is now.
    checkpoint = file_digest(ckpt_path)
    restarted = bind_run(store, partial, {"checkpoint": checkpoint, "gallery": gallery, "embeddings": bool(cfg.embeddings)})
    seen: set[str] = set()
    done, skipped, outdated = read_shards(store, partial, versions, seen)
    return Plan(versions, [image for image in versions if image not in done and image not in skipped], restarted, outdated, checkpoint,
                len(seen - set(versions)), len(seen))


class PendingImages(pl.LightningDataModule):
    """The images still to score, decided once by the first process and sent to the others: every
    process divides the same list, so each image is read by one process only, even when the
    gallery changes while the processes start."""

    def __init__(self, output: str, plan, dataset, batch_size: int, num_workers: int):
        super().__init__()
        self.output, self.make_plan, self.dataset = output, plan, dataset
        self.batch_size, self.num_workers = batch_size, num_workers
        self.plan, self.planned_at = None, None

    @property
    def versions(self) -> dict[str, str]:
        return self.plan.versions

    def setup(self, stage: str) -> None:
        state, failure = None, None
        if self.trainer.is_global_zero:
            try:
                state = ("plan", self.make_plan())
            except Exception as error:
                failure = error
                state = ("error", str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
        kind, value = self.trainer.strategy.broadcast(state, src=0)
        if failure is not None:
            raise failure
        if kind == "error":
            raise UserError(value)
        self.plan, self.planned_at = value, time.perf_counter()
        if not is_s3(self.output):
            check_shared_folder(self.trainer, self.output, "output")

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(self.plan.todo), batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=pin_memory(self.trainer), **raw_safe_workers(self.plan.todo, self.num_workers))


def check_writable(store: Store, output: str) -> None:
    probe = join(output, f".beholder-write-check-{uuid.uuid4().hex[:12]}")
    try:
        store.write(probe, b"ok")
        store.delete(probe)
    except Exception as error:
        raise UserError(f"output={output}: cannot write there ({type(error).__name__}: {error})") from None


def speed_up(cfg: DictConfig, module: BeholderModule) -> None:
    """channels_last: NHWC weights and batches (tensor cores convolve those fastest); compile:
    torch.compile the feature extractor (minutes of compiling, paid back on large galleries)."""
    if cfg.channels_last:
        module.use_channels_last()
    if cfg.compile:
        module.net.features = torch.compile(module.net.features)


def predict(cfg: DictConfig) -> dict | None:
    """Returns the summary (None on the other processes of a multi-process run)."""
    gallery, output = check_uri(cfg.gallery, "gallery"), check_uri(cfg.output, "output")
    check_threshold_options(cfg)
    check_group_options(cfg)
    check_launch(cfg.trainer)
    verdicts = read_verdicts(Store(cfg.endpoint_url), cfg.ratings)
    workers = loader_workers(cfg.num_workers, cfg.trainer)
    quiet_libraries()
    keep_freed_memory()
    ckpt_path = os.path.expanduser(str(cfg.ckpt_path)) if cfg.ckpt_path else default_model.checkpoint_path()
    module = load_checkpoint(ckpt_path)
    speed_up(cfg, module)
    store = Store(cfg.endpoint_url)
    partial = join(output, PARTIAL)
    transform = build_transform(module.net.data_config, train=False)
    if cfg.feature_cache and module.net.frozen:  # the features a personal model trained on, or an earlier model's run
        module.feature_cache = FeatureCache(str(cfg.feature_cache), network_key(module.net, {}), module.net.feature_mean.numel())
    pending = PendingImages(output, lambda: plan_run(cfg, store, gallery, output, partial, ckpt_path),
                            lambda images: GalleryDataset(gallery, images, store, transform, cache=module.feature_cache),
                            cfg.batch_size, workers)
    bar, lines = progress(cfg.trainer)
    trainer = instantiate(cfg.trainer, callbacks=[ShardWriter(store, partial, bool(cfg.embeddings)), *lines], logger=False, **bar)
    try:
        trainer.predict(module, datamodule=pending, return_predictions=False)
        trainer.strategy.barrier()
    except OSError as error:
        raise UserError(f"scoring stopped: {error}; the scores so far are kept in {partial}; rerun to finish") from None
    if not trainer.is_global_zero:
        return None
    plan, seconds = pending.plan, time.perf_counter() - pending.planned_at
    versions, todo = plan.versions, plan.todo

    scored, skipped, _ = read_shards(store, partial, versions)
    if len(scored) + len(skipped) < len(versions):
        missing = len(versions) - len(scored) - len(skipped)
        raise Incomplete(f"{missing} of {len(versions)} images are not processed yet; rerun the same command to finish (results so far are kept in {partial})")
    ranked = sorted(scored.values(), key=lambda row: (-row["score"], row["image"]))
    if not ranked:
        raise UserError(f"gallery={gallery}: none of the {len(versions)} files could be read (see the warnings)")
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    policy = decision_policy(cfg, module, len(ranked), ckpt_path)
    for row in ranked:
        row["band"] = policy.band(row["score"], row["rank"])
        row["reason"] = "score" if row["band"] == "reject" else ""
    before_bursts = sum(row["band"] == "reject" for row in ranked) / len(ranked)
    if cfg.embeddings:
        for row in ranked:
            row["vector"] = decode(row["embedding"])
    culled = group_bursts(cfg, ranked) if cfg.embeddings else 0
    for row in ranked:  # a photo the person rated keeps their verdict, whatever the model says
        if row["image"] in verdicts:
            row["band"], row["reason"] = verdicts[row["image"]], "rated"
    bands = {band: sum(row["band"] == band for row in ranked) for band in BANDS}
    # keep_top cuts by rank: both thresholds are the score of the last one kept
    keep_at, reject_below = (ranked[bands["keep"] - 1]["score"],) * 2 if policy.keep_count else (policy.keep_at, policy.reject_below)

    summary = {
        "found": len(versions),
        "scored": len(ranked),
        "skipped": len(skipped),
        "kept": bands["keep"],
        "review": bands["review"],
        "rejected": bands["reject"],
        "gallery_reduction": bands["reject"] / len(ranked),
        "gallery_reduction_before_bursts": before_bursts,
        "groups": groups_summary(cfg, ranked, culled),
        "threshold": keep_at,
        "reject_below": reject_below,
        "threshold_source": policy.summary,
        "images_per_second": len(todo) / seconds if todo and seconds > 0 else math.nan,
        "newly_scored": len(todo),
        "processes": trainer.world_size,
        "rescored": {reason: count for reason, count in ((plan.restarted, len(todo)), ("changed since scored", len(plan.outdated))) if reason and count},
        "since_last_run": ({"new": len(todo) - len(plan.outdated), "changed": len(plan.outdated), "gone": plan.gone}
                           if plan.known and not plan.restarted else None),
        "output": output,
        "checkpoint": plan.checkpoint,
        "model": ckpt_path if cfg.ckpt_path else default_model.NAME,
        "embeddings": bool(cfg.embeddings),
        "rated": {band: sum(row["reason"] == "rated" and row["band"] == band for row in ranked) for band in ("keep", "reject")},
    }
    summary["warning"] = small_reduction_warning(cfg, summary, policy, ranked, module.calibration_photos)
    try:
        write_results(cfg, module, store, gallery, output, ranked, skipped, summary, ckpt_path)
    except (OSError, ClientError) as error:
        raise UserError(f"output={output}: writing the results failed ({error}); the scores are kept in {partial}; rerun to finish") from None
    compact_shards(store, partial, {row["image"]: row for row in ranked}, skipped, versions)
    print_summary(summary, ranked, skipped)
    return summary


def group_bursts(cfg: DictConfig, ranked: list[dict]) -> int:
    """Each row's near-duplicate ``group``, ``group_rank`` and ``group_size``; with ``keep_per_group``,
    the surplus of each group rejected. Returns how many were."""
    vectors = np.stack([row["vector"] for row in ranked])
    times = np.array([row["taken"] for row in ranked], dtype=np.float64)
    window = None if cfg.group_window is None else float(cfg.group_window)
    groups, ranks, sizes = burst_groups(vectors, float(cfg.group_similarity), times, window)
    for row, group, rank, size in zip(ranked, groups.tolist(), ranks.tolist(), sizes.tolist()):
        row["group"], row["group_rank"], row["group_size"] = group, rank, size
    return cull_bursts(ranked, int(cfg.keep_per_group)) if cfg.keep_per_group is not None else 0


def groups_summary(cfg: DictConfig, ranked: list[dict], culled: int) -> dict | None:
    if not cfg.embeddings:
        return None
    sizes = [row["group_size"] for row in ranked if row["group_rank"] == 1]
    return {
        "groups": sum(size > 1 for size in sizes),
        "images_in_groups": sum(size for size in sizes if size > 1),
        "similarity": float(cfg.group_similarity),
        "window_s": cfg.group_window,
        "without_time": sum(math.isnan(row["taken"]) for row in ranked) if cfg.group_window is not None else 0,
        "keep_per_group": cfg.keep_per_group,
        "burst_rejected": culled,
    }


def probability_names(module: BeholderModule) -> list[str]:
    head = module.net.head
    if not hasattr(head, "probabilities"):
        return []
    if head.num_classes == 4:
        return [f"p_tier{t}" for t in range(4)]
    return [f"p_tier_below{head.positive_tier}", f"p_tier{head.positive_tier}_up"]


def write_results(cfg, module, store, gallery, output, ranked, skipped, summary, ckpt_path: str) -> None:
    store.write(join(output, "skipped.csv"), skipped_csv(skipped))
    count = cfg.highlights
    culled = Counter(row["group"] for row in ranked if row["reason"] == "burst")
    for row in ranked:
        if row.get("group_rank") == 1 and culled[row["group"]]:
            row["hidden"] = culled[row["group"]]
    kept = [row for row in ranked if row["band"] == "keep"]
    review = [row for row in ranked if row["band"] == "review"]
    rejected = [row for row in ranked if row["band"] == "reject"]
    sections = [
        (f"Top {min(count, len(ranked))}", ranked[:count]),
        ("Lowest-scoring kept", kept[-(count // 2):] if kept else []),
        (f"To review: {len(review)} between the thresholds" + (f", the best {count} shown" if len(review) > count else ""), review[:count]),
        ("Highest-scoring rejected", rejected[: count // 2]),
    ]
    line = (
        f"{summary['scored']} images scored: {summary['kept']} kept, {summary['review']} to review, {summary['rejected']} rejected "
        f"({summary['gallery_reduction']:.1%} of the gallery dropped"
        + (f", {summary['groups']['burst_rejected']} of them near-copies" if summary["groups"] and summary["groups"]["burst_rejected"] else "")
        + f"). {summary['threshold_source']}"
    )
    if cfg.embeddings:
        with open(ckpt_path, "rb") as f:
            store.write(join(output, CHECKPOINT), f.read())
        store.write(join(output, EMBEDDINGS), parquet_bytes(ranked, summary["checkpoint"], gallery))
    histogram = score_histogram_svg([row["score"] for row in ranked], summary["threshold"], summary["reject_below"])
    store.write(join(output, "highlights.html"), highlights_html(sections, lambda image: store.read(join(gallery, image)), line, histogram))
    # scores.csv last of the results: its presence says the run is complete; the sidecars follow,
    # so that no sidecar, however broken, costs the results
    store.write(join(output, "scores.csv"), scores_csv(ranked, probability_names(module)))
    if cfg.xmp:
        write_xmp(cfg, store, gallery, output, ranked, list(skipped), summary)


def write_xmp(cfg, store, gallery, output, ranked, skipped, summary) -> None:
    """One XMP sidecar per scored image (beside it, or under OUTPUT/xmp), merged into each one
    already there that the image owns (never replacing the photographer's own fields, never making a
    second beside it); one that is not XMP, read-only or not a file is left as it is and named."""
    root = gallery if cfg.xmp_beside_images and not is_s3(gallery) else join(output, "xmp")
    try:
        existing = store.list(root, (".xmp",))
    except FileNotFoundError:
        existing = []
    names = sidecar_targets([row["image"] for row in ranked] + skipped, existing, cfg.xmp_naming)
    targets = {row["image"]: [join(root, name) for name in names[row["image"]]] for row in ranked}
    summary["sidecars"] = write_sidecars(store, ranked, targets, summary["kept"], bool(cfg.xmp_overwrite_ratings), gallery)
    summary["sidecars"]["folder"] = root


def group_lines(summary: dict) -> list[str]:
    groups = summary.get("groups")
    if not groups:
        return []
    within = f" taken within {groups['window_s']} s" if groups["window_s"] is not None else ""
    lines = [f"  near-copies     {groups['groups']} groups of {groups['images_in_groups']} images (similarity >= {groups['similarity']}{within})"]
    if groups["without_time"]:
        lines.append(f"  no capture time {groups['without_time']} images (not grouped: group_window needs a time)")
    if groups["keep_per_group"] is not None:
        lines.append(f"  burst copies    {groups['burst_rejected']} rejected, keep_per_group={groups['keep_per_group']} "
                     f"(gallery reduction {summary['gallery_reduction_before_bursts']:.1%} -> {summary['gallery_reduction']:.1%})")
    return lines


def sidecar_lines(sidecars: dict | None, shown: int = 10) -> list[str]:
    if sidecars is None:
        return []
    left = sidecars["left_alone"]
    lines = [f"  sidecars        {sidecars['created']} created, {sidecars['merged']} merged into, {len(left)} left as they were ({sidecars['folder']})"]
    lines += [f"    left as it was: {problem}" for problem in left[:shown]]
    return lines + ([f"    ... and {len(left) - shown} more"] if len(left) > shown else [])


def print_summary(summary: dict, ranked: list[dict], skipped: dict[str, str]) -> None:
    lines = [
        "",
        "beholder: gallery scored",
        f"  model           {summary['model']}",
        f"  images found    {summary['found']}",
        f"  scored          {summary['scored']}  ({summary['newly_scored']} in this run, {summary['images_per_second']:.1f} images/s, "
        f"{summary['processes']} process{'es' if summary['processes'] != 1 else ''})",
        *[f"  rescored        {count}  ({reason})" for reason, count in summary["rescored"].items()],
        *([f"  since last run  {summary['since_last_run']['new']} new, {summary['since_last_run']['changed']} changed, "
           f"{summary['since_last_run']['gone']} gone (the rest's scores kept)"] if summary["since_last_run"] else []),
        f"  skipped         {summary['skipped']}" + ("" if not skipped else "  e.g. " + "; ".join(f"{i}: {r}" for i, r in list(skipped.items())[:3])),
        f"  kept            {summary['kept']}  (score >= {summary['threshold']:.4f})",
        f"  to review       {summary['review']}  " + (f"(score >= {summary['reject_below']:.4f})" if summary["reject_below"] < summary["threshold"]
                                                        else "(no review band: one threshold)"),
        f"  rejected        {summary['rejected']}  (gallery reduction {summary['gallery_reduction']:.1%})",
        *([f"  rated           {sum(summary['rated'].values())} keep the person's own verdict ({summary['rated']['keep']} keep, "
           f"{summary['rated']['reject']} reject)"] if sum(summary["rated"].values()) else []),
        *([f"  warning         {summary['warning']}"] if summary["warning"] else []),
        *group_lines(summary),
        f"  thresholds      {summary['threshold_source']}",
        *sidecar_lines(summary.get("sidecars")),
        f"  results         {join(summary['output'], 'scores.csv')}",
        f"  contact sheet   {join(summary['output'], 'highlights.html')}",
        *([f"  embeddings      {join(summary['output'], EMBEDDINGS)}"] if summary.get("embeddings") else []),
        "  top 10:",
    ]
    lines += [f"    {row['rank']:>3}. {row['score']:.4f}  {row['image']}" for row in ranked[:10]]
    print("\n".join(lines), flush=True)
