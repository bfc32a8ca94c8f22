"""Prediction results as they are produced, under ``OUTPUT/.beholder-partial`` where every node of a
cluster sees them: a crashed or interrupted run loses at most the rows not yet written, and a rerun
on any number of processes scores only what is missing.

A local (or shared-filesystem) folder gets one append-only CSV per process, each batch's rows
flushed to disk as it ends. S3 cannot append, so each process writes a new small object every
``FLUSH_ROWS`` rows or ``FLUSH_SECONDS`` seconds, whichever comes first (never one object rewritten).

Shards belong to one run: ``run.json`` names the checkpoint (by content) and the gallery, and each
row the version of its file (size and mtime, or ETag) and the model that scored it (so that rows of
another run writing into the same output at once are never taken for this one's). A rerun with another checkpoint or gallery
starts over; a file changed since it was scored is scored again, and so is a file that could not
be read for a reason that may pass (no permission). A row that is not what beholder writes (a
score no model of this kind gives, bytes that are not numbers) is named and its image scored again.
A complete run compacts its shards
into as few as hold the gallery as it was scored (``COMPACT_ROWS`` rows each), so that the next run into the same
output (a new shoot added to the library, the webcam's next day) scores only what was added or changed.
Shards are read a line at a time, and the embeddings they hold go to a temporary file, so that
neither is ever held whole in memory."""

from __future__ import annotations

import binascii
import csv
import json
import math
import os
import re
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter

from beholder.core.storage import Store, is_s3, join, open_text, text_file
from beholder.core.tables import csv_rows, csv_text
from beholder.search.embeddings import DiskRows, decode, encode

FIELDS = {
    "scores": ["image", "version", "model", "score", "tier", "probabilities", "taken", "embedding", "technical"],
    "skipped": ["image", "version", "model", "reason", "retry"],
}
# Shards of beholder before each row named its model and carried its technical measures: read as the bound run's own.
FORMER_FIELDS = {"scores": ["image", "version", "score", "tier", "probabilities", "taken", "embedding"], "skipped": ["image", "version", "reason"]}
RUN_FILE = "run.json"
SHARD_NAME = re.compile(r"(scores|skipped)-rank\d+(-[0-9a-f]+-\d+)?\.csv")
FLUSH_ROWS = 512
FLUSH_SECONDS = 30.0
PREFETCH = 8  # S3 shards downloaded at once while reading
COMPACT_ROWS = 4096  # rows of a compacted shard: ~60 MB of text, read and written whole on S3
MODEL_DIGITS = 16  # of the checkpoint's sha256, in each row: which model scored it


def model_of(checkpoint: str) -> str:
    return checkpoint[:MODEL_DIGITS]


@dataclass
class RowCheck:
    """What a scores row of this model can hold: a score in the head's range, an embedding of
    the head's width, ``measures`` technical measures (none when the technical checks are off). A
    row that holds anything else was not written by beholder (a damaged or planted shard): its image
    is scored again."""
    low: float
    high: float
    dimension: int | None
    measures: int = 0

    def accepts(self, row: dict) -> bool:
        try:
            score, tier = float(row["score"]), int(row["tier"])
            probabilities = [float(v) for v in row["probabilities"].split()]
            taken = float(row["taken"]) if row["taken"] else 0.0
            embedding = decode(row["embedding"]) if row["embedding"] else None
            measured = [float(v) for v in row.get("technical", "").split()]
        except (ValueError, TypeError, binascii.Error):
            return False
        if len(measured) != self.measures:
            return False
        numbers = np.array([score, taken, *probabilities, *measured], dtype=np.float64)
        if not np.isfinite(numbers).all() or not self.low <= score <= self.high or not 0 <= tier <= 3:
            return False
        if not all(0 <= p <= 1 for p in probabilities):
            return False
        return embedding is None or ((self.dimension is None or embedding.size == self.dimension) and bool(np.isfinite(embedding).all()))


@dataclass
class ShardRows:
    """What a run's shards hold for the gallery as it is now."""
    scored: dict[str, dict]  # image -> its scores row
    skipped: dict[str, str]  # image -> why it could not be read
    retry: set[str]  # skipped images whose failure may pass (no permission, a read error): the next run tries them again
    outdated: set[str]  # images scored or skipped in an older version: scored again
    damaged: int = 0  # rows that are no rows beholder writes (cut short, not numbers, out of range): their images scored again
    foreign: int = 0  # rows another model scored (another run writing into the same output): their images scored again
    embeddings: DiskRows | None = None  # the scored rows' embeddings (read_shards with embeddings=True)


def shard_names(store: Store, folder: str) -> list[str]:
    try:
        names = store.list(folder)
    except FileNotFoundError:
        return []
    return [name for name in names if SHARD_NAME.fullmatch(name)]


def bind_run(store: Store, folder: str, identity: dict) -> str | None:
    """Tie ``folder``'s shards to ``identity`` (checkpoint digest, gallery). Shards of another run,
    or of an unknown one, are removed; returns why, or None when the shards are this run's."""
    try:
        previous = json.loads(store.read(join(folder, RUN_FILE)))
    except (FileNotFoundError, ValueError):
        previous = None
    if previous == identity:
        return None
    shards = shard_names(store, folder)
    changed = [key for key in identity if previous and previous.get(key) != identity[key]]
    store.delete_many([join(folder, name) for name in shards])
    store.write(join(folder, RUN_FILE), json.dumps(identity).encode())
    if not shards:
        return None
    return f"{' and '.join(changed)} changed" if changed else "earlier results of an unknown run"


def append_rows(path: str, fields: list[str], rows: list[dict]) -> None:
    """Whole lines, flushed to disk before returning; a line cut short by a crash is ignored on read."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fresh = not os.path.exists(path) or os.path.getsize(path) == 0
    text = csv_text(fields, rows, header=fresh)
    if not fresh:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text  # end a line a crash cut short, so it stays one bad line
    with open(path, "a", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def score_row(image: str, version: str, model: str, score: float, tier: int, probabilities: list[float], taken: float | None,
              embedding: str, measured) -> dict:
    """A scores shard's row, as written after each batch and as kept after a complete run;
    ``measured``: the technical measures (None when the checks are off)."""
    return {"image": image, "version": version, "model": model, "score": f"{score:.6f}", "tier": tier,
            "probabilities": " ".join(f"{v:.6f}" for v in probabilities),
            "taken": "" if taken is None or math.isnan(taken) else f"{taken:.0f}", "embedding": embedding,
            "technical": "" if measured is None else " ".join(f"{float(v):.6g}" for v in measured)}


def skip_row(image: str, version: str, model: str, reason: str, retry: bool) -> dict:
    return {"image": image, "version": version, "model": model, "reason": reason, "retry": "1" if retry else ""}


class ShardWriter(BasePredictionWriter):
    """Writes each batch's scores and skipped files under ``folder``, each row with its file's
    version (from the datamodule's ``versions``) and, with ``embeddings``, the image's embedding."""

    def __init__(self, store: Store, folder: str, embeddings: bool = True):
        super().__init__(write_interval="batch")
        self.store, self.folder, self.embeddings = store, folder, embeddings
        self.pending = {kind: [] for kind in FIELDS}
        self.launch, self.objects, self.flushed_at = uuid.uuid4().hex[:12], 0, time.monotonic()
        self.from_cache = 0  # photos of this process whose features the feature cache held

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        versions, model = trainer.datamodule.versions, model_of(trainer.datamodule.plan.checkpoint)
        self.from_cache += len(batch.get("cached", ()))
        if "scores" in prediction:
            probabilities, measured = prediction.get("probabilities"), prediction.get("technical")
            taken = prediction.get("taken") or [None] * len(prediction["image_path"])
            for i, image in enumerate(prediction["image_path"]):
                self.pending["scores"].append(score_row(
                    image, versions[image], model, float(prediction["scores"][i]), int(prediction["tiers"][i]),
                    probabilities[i].tolist() if probabilities is not None else [], taken[i],
                    encode(prediction["embeddings"][i].cpu().numpy()) if self.embeddings else "",
                    measured[i].tolist() if measured is not None else None))
        retry = set(prediction.get("retry", []))
        self.pending["skipped"] += [skip_row(image, versions[image], model, reason, image in retry) for image, reason in prediction["skipped"]]
        held = sum(map(len, self.pending.values()))
        if not is_s3(self.folder) or held >= FLUSH_ROWS or time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush(trainer.global_rank)

    def flush(self, rank: int) -> None:
        for kind, rows in self.pending.items():
            if not rows:
                continue
            if is_s3(self.folder):
                name = f"{kind}-rank{rank}-{self.launch}-{self.objects:06d}.csv"
                self.store.write(join(self.folder, name), csv_text(FIELDS[kind], rows, header=True).encode())
                self.objects += 1
            else:
                append_rows(join(self.folder, f"{kind}-rank{rank}.csv"), FIELDS[kind], rows)
            self.pending[kind] = []
        self.flushed_at = time.monotonic()

    def on_predict_epoch_end(self, trainer, pl_module):
        self.flush(trainer.global_rank)

    def on_exception(self, trainer, pl_module, exception):
        """Interrupted (Ctrl-C, a failing batch, a lost peer): keep the rows already computed."""
        self.flush(trainer.global_rank)


def _read(lines, kind: str, versions: dict[str, str], model: str, check: RowCheck | None, found: ShardRows,
          rows: dict[str, dict], outdated: set[str], seen: set[str]) -> None:
    try:
        columns, table = csv_rows(whole_lines(lines))
        if columns not in (FIELDS[kind], FORMER_FIELDS[kind]):
            found.damaged += sum(1 for _ in table)
            return
        for row in table:
            if None in row or None in row.values() or (kind == "scores" and check is not None and not check.accepts(row)):
                found.damaged += 1
                continue
            if row.setdefault("model", model) != model:
                found.foreign += 1
                continue
            seen.add(row["image"])
            if row["image"] not in versions:
                continue
            if row["version"] != versions[row["image"]]:
                outdated.add(row["image"])
            elif row["image"] not in rows:
                if kind == "scores":  # the embedding's text, to disk (with the embeddings kept) or dropped
                    text = row.pop("embedding")
                    row["embedding"] = found.embeddings.append(decode(text)) if text and found.embeddings is not None else None
                rows[row["image"]] = row
    except csv.Error:
        found.damaged += 1


def kind_of(name: str) -> str:
    return name.split("-", 1)[0]


def shard_files(store: Store, folder: str, names: list[str]):
    """(name, open text file) of each shard in turn: a local one streamed from disk, S3 objects
    downloaded ``PREFETCH`` at a time ahead of the one read."""
    if not is_s3(folder):
        for name in names:
            with open_text(join(folder, name)) as lines:
                yield name, lines
        return
    with ThreadPoolExecutor(PREFETCH) as pool:
        downloads: deque = deque()
        for name in names:
            downloads.append((name, pool.submit(store.read, join(folder, name))))
            if len(downloads) > PREFETCH:
                yield from opened(*downloads.popleft())
        while downloads:
            yield from opened(*downloads.popleft())


def opened(name: str, download):
    with text_file(download.result()) as lines:
        yield name, lines


def whole_lines(lines):
    """``lines`` but a last one cut short by a crash (no line end)."""
    previous = None
    for line in lines:
        if previous is not None:
            yield previous
        previous = line
    if previous is not None and previous.endswith("\n"):
        yield previous


def read_shards(store: Store, folder: str, versions: dict[str, str], model: str, check: RowCheck | None = None,
                seen: set[str] | None = None, embeddings: bool = False) -> ShardRows:
    """What the shards hold for the files in ``versions`` as they are now, scored by ``model``
    (:func:`model_of` the checkpoint's digest): scored rows by image, skipped images with their
    reasons, and the images scored or skipped in an older version (to score again). Each image
    once, whichever shard, process or run it came from. A row that ``check`` refuses, or that
    another model scored, counts as not there. ``seen`` gathers every image the shards name, the
    gallery's or not (those no longer in it are gone).

    The shards are read a line at a time, so that a gallery of any size is never held as text. With
    ``embeddings`` (and a ``check`` that knows their width), each scored row's ``embedding`` is its
    row number in ``ShardRows.embeddings``, a temporary file (in ``folder`` when local); without,
    None."""
    names = shard_names(store, folder)
    seen = set() if seen is None else seen
    found = ShardRows({}, {}, set(), set())
    if embeddings and check is not None and check.dimension:
        found.embeddings = DiskRows(check.dimension, None if is_s3(folder) else folder)
    by_kind = {kind: ({}, set()) for kind in FIELDS}
    for name, lines in shard_files(store, folder, names):
        _read(lines, kind_of(name), versions, model, check, found, *by_kind[kind_of(name)], seen)
    (scored, outdated), (skipped_rows, outdated_skips) = by_kind["scores"], by_kind["skipped"]
    outdated -= set(scored)
    outdated_skips -= set(skipped_rows)
    for row in scored.values():
        row["score"] = float(row["score"])
        row["tier"] = int(row["tier"])
        row["probabilities"] = [float(v) for v in row["probabilities"].split()]
        row["taken"] = float(row["taken"]) if row["taken"] else math.nan
        measured = row.pop("technical", "")
        row["measured"] = np.array(measured.split(), dtype=np.float64) if measured else None
    found.scored = scored
    found.skipped = {image: row["reason"] for image, row in skipped_rows.items() if image not in scored}
    found.retry = {image for image, row in skipped_rows.items() if image in found.skipped and row.get("retry")}
    found.outdated = (outdated | outdated_skips) - set(scored) - set(found.skipped)
    return found


def compact_shards(store: Store, folder: str, scored: dict[str, dict], skipped: dict[str, str], retry: set[str],
                   versions: dict[str, str], model: str, embeddings: DiskRows | None) -> None:
    """After a complete run: the shards replaced by as few as hold exactly the gallery as it is now,
    ``COMPACT_ROWS`` rows each (the new ones written before the old ones go, so a crash between
    leaves both, which read as one). ``embeddings``: where the rows' embeddings wait (read_shards)."""
    old = shard_names(store, folder)
    launch = uuid.uuid4().hex[:12]

    def scores_row(image: str) -> dict:
        row = scored[image]
        embedding = "" if row["embedding"] is None or embeddings is None else encode(embeddings[row["embedding"]][0])
        return score_row(image, versions[image], model, row["score"], row["tier"], row["probabilities"], row["taken"], embedding,
                         row["measured"])

    pieces = {"scores": (scores_row, sorted(scored)),
              "skipped": (lambda image: skip_row(image, versions[image], model, skipped[image], image in retry), sorted(skipped))}
    for kind, (make_row, images) in pieces.items():
        for piece, start in enumerate(range(0, max(len(images), 1), COMPACT_ROWS)):
            rows = map(make_row, images[start:start + COMPACT_ROWS])
            store.write(join(folder, f"{kind}-rank0-{launch}-{piece}.csv"), csv_text(FIELDS[kind], rows, header=True).encode())
    store.delete_many([join(folder, name) for name in old])
