"""Prediction results as they are produced: one append-only CSV shard per process, so a crashed or
interrupted run loses at most the batch in flight, and a rerun scores only what is missing.

Shards belong to one run: ``run.json`` names the checkpoint (by content) and the gallery, and each
row the version of its file (size and mtime, or ETag). A rerun with another checkpoint or gallery
starts over; a file changed since it was scored is scored again."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os

from pytorch_lightning.callbacks import BasePredictionWriter

from beholder.embeddings import encode

SCORE_FIELDS = ["image", "version", "score", "tier", "probabilities", "taken", "embedding"]
SKIP_FIELDS = ["image", "version", "reason"]
RUN_FILE = "run.json"


def bind_run(folder: str, identity: dict) -> str | None:
    """Tie ``folder``'s shards to ``identity`` (checkpoint digest, gallery). Shards of another run,
    or of an unknown one, are removed; returns why, or None when the shards are this run's."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, RUN_FILE)
    try:
        with open(path) as f:
            previous = json.load(f)
    except (FileNotFoundError, ValueError):
        previous = None
    if previous == identity:
        return None
    shards = glob.glob(os.path.join(folder, "*-rank*.csv"))
    changed = [key for key in identity if previous and previous.get(key) != identity[key]]
    for shard in shards:
        os.remove(shard)
    with open(path, "w") as f:
        json.dump(identity, f)
    if not shards:
        return None
    return f"{' and '.join(changed)} changed" if changed else "earlier results of an unknown run"


def _append(path: str, fields: list[str], rows: list[dict]) -> None:
    """Whole lines, flushed to disk before returning; a line cut short by a crash is ignored on read."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        writer.writeheader()
    else:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                buffer.write("\n")  # end a line a crash cut short, so it stays one bad line
    writer.writerows(rows)
    with open(path, "a", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())


class ShardWriter(BasePredictionWriter):
    """Appends each batch's scores and skipped files to ``folder/scores-rank<R>.csv`` and
    ``folder/skipped-rank<R>.csv``, each row with its file's version from ``versions`` (and, with
    ``embeddings``, the image's embedding)."""

    def __init__(self, folder: str, versions: dict[str, str], embeddings: bool = True):
        super().__init__(write_interval="batch")
        self.folder, self.versions, self.embeddings = folder, versions, embeddings
        os.makedirs(folder, exist_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        rank = trainer.global_rank
        rows = []
        if "scores" in prediction:
            probabilities = prediction.get("probabilities")
            taken = prediction.get("taken") or [None] * len(prediction["image_path"])
            for i, image in enumerate(prediction["image_path"]):
                p = " ".join(f"{v:.6f}" for v in probabilities[i].tolist()) if probabilities is not None else ""
                embedding = encode(prediction["embeddings"][i].cpu().numpy()) if self.embeddings else ""
                rows.append({"image": image, "version": self.versions[image], "score": f"{float(prediction['scores'][i]):.6f}",
                             "tier": int(prediction["tiers"][i]), "probabilities": p,
                             "taken": "" if taken[i] is None else f"{taken[i]:.0f}", "embedding": embedding})
        _append(os.path.join(self.folder, f"scores-rank{rank}.csv"), SCORE_FIELDS, rows)
        skipped = [{"image": image, "version": self.versions[image], "reason": reason} for image, reason in prediction["skipped"]]
        _append(os.path.join(self.folder, f"skipped-rank{rank}.csv"), SKIP_FIELDS, skipped)


def _read(pattern: str, fields: list[str], versions: dict[str, str]) -> tuple[dict[str, dict], set[str]]:
    """Rows of the current version of each image, and the images whose rows are all outdated."""
    rows, outdated = {}, set()
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="") as f:
            text = f.read()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # drop a line cut short by a crash
        for row in csv.DictReader(io.StringIO(text)):
            if list(row) != fields or None in row.values() or row["image"] not in versions:
                continue
            if row["version"] == versions[row["image"]]:
                rows.setdefault(row["image"], row)
            else:
                outdated.add(row["image"])
    return rows, outdated - set(rows)


def read_shards(folder: str, versions: dict[str, str]) -> tuple[dict[str, dict], dict[str, str], set[str]]:
    """What the shards hold for the files in ``versions`` as they are now: scored rows by image,
    skipped images with their reasons, and the images scored or skipped in an older version (to
    score again). Each image once, whichever shard or run it came from."""
    scored, outdated = _read(os.path.join(folder, "scores-rank*.csv"), SCORE_FIELDS, versions)
    for row in scored.values():
        row["score"] = float(row["score"])
        row["tier"] = int(row["tier"])
        row["probabilities"] = [float(v) for v in row["probabilities"].split()]
        row["taken"] = float(row["taken"]) if row["taken"] else math.nan
    skipped_rows, outdated_skips = _read(os.path.join(folder, "skipped-rank*.csv"), SKIP_FIELDS, versions)
    skipped = {image: row["reason"] for image, row in skipped_rows.items() if image not in scored}
    return scored, skipped, (outdated | outdated_skips) - set(scored) - set(skipped)
