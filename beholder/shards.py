"""Prediction results as they are produced: one append-only CSV shard per process, so a crashed or
interrupted run loses at most the batch in flight, and a rerun scores only what is missing."""

from __future__ import annotations

import csv
import glob
import io
import os

from pytorch_lightning.callbacks import BasePredictionWriter

SCORE_FIELDS = ["image", "score", "tier", "probabilities"]
SKIP_FIELDS = ["image", "reason"]


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
    ``folder/skipped-rank<R>.csv``."""

    def __init__(self, folder: str):
        super().__init__(write_interval="batch")
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        rank = trainer.global_rank
        rows = []
        if "scores" in prediction:
            probabilities = prediction.get("probabilities")
            for i, image in enumerate(prediction["image_path"]):
                p = " ".join(f"{v:.6f}" for v in probabilities[i].tolist()) if probabilities is not None else ""
                rows.append({"image": image, "score": f"{float(prediction['scores'][i]):.6f}", "tier": int(prediction["tiers"][i]), "probabilities": p})
        _append(os.path.join(self.folder, f"scores-rank{rank}.csv"), SCORE_FIELDS, rows)
        skipped = [{"image": image, "reason": reason} for image, reason in prediction["skipped"]]
        _append(os.path.join(self.folder, f"skipped-rank{rank}.csv"), SKIP_FIELDS, skipped)


def _read(pattern: str, fields: list[str]) -> dict[str, dict]:
    rows = {}
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="") as f:
            text = f.read()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # drop a line cut short by a crash
        for row in csv.DictReader(io.StringIO(text)):
            if list(row) == fields and None not in row.values():
                rows.setdefault(row["image"], row)
    return rows


def read_shards(folder: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Everything the shards hold: scored rows by image, and skipped images with their reasons.
    Each image once, whichever shard or run it came from."""
    scored = _read(os.path.join(folder, "scores-rank*.csv"), SCORE_FIELDS)
    for row in scored.values():
        row["score"] = float(row["score"])
        row["tier"] = int(row["tier"])
        row["probabilities"] = [float(v) for v in row["probabilities"].split()]
    skipped = {image: row["reason"] for image, row in _read(os.path.join(folder, "skipped-rank*.csv"), SKIP_FIELDS).items()}
    return scored, {image: reason for image, reason in skipped.items() if image not in scored}
