"""Personal taste: does a model of one person's ratings beat the crowd model *for that person*?

OASIS's 86,080 individual beauty ratings (757 raters, ~114 photos each). The 458 photos are split
60/40 once (fixed seed). The crowd model is beholder's experiment=best head=regression trained on
the mean ratings of the training photos. For each of --raters raters (fixed seed), on that rater's
ratings of training photos:
  crowd          the crowd model's score (rescaling does not change a Spearman)
  person-only    ridge on the frozen features, the person's ratings alone (penalty by 5-fold CV)
  personal       beholder.train.personal: the crowd rescaled to the person plus a ridge on the residual
                 (what `train.py experiment=personal` fits)
  other raters   the mean rating of every other rater of each held-out photo (an oracle)
Reported: per-rater Spearman on the rater's held-out photos - median, mean, the share of raters the
personal model improves over the crowd model, a bootstrap 90 % interval of the median gain, and the
same for the third of raters with the fewest training ratings. Results replace the "personal"
section of bench/RESULTS.md.

    python bench/personal.py [--raters 200] [--work DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beholder.core.console import quiet_libraries  # noqa: E402
from beholder.core.storage import Store  # noqa: E402
from beholder.data.labels import fold_rows  # noqa: E402
from beholder.models.features import cached_features  # noqa: E402
from beholder.models.load import load_checkpoint  # noqa: E402
from beholder.models.metrics import spearman  # noqa: E402
from beholder.train.personal import base_head_linear, personal_fit  # noqa: E402
from beholder.train.probe import ridge_cv  # noqa: E402
from bench.common import REPO, SHARED, markdown_table, publish  # noqa: E402


def crowd_checkpoint(oasis: str, train_photos: set[str], work: str, seed: int) -> str:
    """experiment=best head=regression on the training photos' mean ratings (the rest are its test split)."""
    ckpt = os.path.join(work, "crowd", "checkpoints", "best.ckpt")
    if os.path.exists(ckpt):
        return ckpt
    from hydra import compose, initialize_config_dir

    from beholder.train.run import train

    rows = list(csv.DictReader(open(os.path.join(oasis, "labels.csv"))))
    labels = os.path.join(work, "crowd-labels.csv")
    rng = np.random.default_rng(seed)
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "tier", "beauty_mean", "split"])
        for row in rows:
            split = ("val" if rng.random() < 0.2 else "train") if row["image"] in train_photos else "test"
            writer.writerow([row["image"], row["tier"], row["beauty_mean"], split])
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=best", "head=regression", "cv=0", "data.score_column=beauty_mean", f"gallery={oasis}/images",
            f"labels={labels}", f"feature_cache={work}/cache", f"output_dir={work}/crowd", "trainer.enable_progress_bar=false"])
    train(cfg)
    return ckpt


def bootstrap_median(values: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    medians = [np.median(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "oasis"))
    parser.add_argument("--raters", type=int, default=200, help="how many raters (fixed seed); at least 150 for the issue's figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="a folder for the crowd model and the feature cache (default: a new temporary one)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    quiet_libraries()
    work = args.work or tempfile.mkdtemp(prefix="beholder-personal-")
    os.makedirs(work, exist_ok=True)

    photos = sorted(row["image"] for row in csv.DictReader(open(os.path.join(args.data, "labels.csv"))))
    rng = np.random.default_rng(args.seed)
    train_photos = set(rng.choice(photos, int(0.6 * len(photos)), replace=False).tolist())
    ratings: dict[str, dict[str, float]] = defaultdict(dict)
    for row in csv.DictReader(open(os.path.join(args.data, "ratings.csv"))):
        ratings[row["rater"]][row["image"]] = float(row["beauty"])

    module = load_checkpoint(crowd_checkpoint(args.data, train_photos, work, args.seed))
    features, _ = cached_features(module.net, os.path.join(args.data, "images"), photos, Store(), {}, 1, os.path.join(work, "cache"),
                                  100_000_000)
    x = module.net.standardise(torch.stack([features[p][0] for p in photos]).to(module.net.feature_mean.dtype)).double().numpy()
    weight, bias = base_head_linear(module)
    crowd = x @ weight + bias
    row_of = {p: i for i, p in enumerate(photos)}

    eligible = sorted(r for r, rated in ratings.items()
                      if sum(p in train_photos for p in rated) >= 30 and sum(p not in train_photos for p in rated) >= 20)
    chosen = sorted(rng.choice(eligible, min(args.raters, len(eligible)), replace=False).tolist(), key=int)
    totals = defaultdict(lambda: [0.0, 0])
    for rater, rated in ratings.items():
        for photo, value in rated.items():
            totals[photo][0] += value
            totals[photo][1] += 1
    results = defaultdict(list)
    counts = []
    for rater in chosen:
        rated = ratings[rater]
        fit_rows = [row_of[p] for p in rated if p in train_photos]
        test_photos = [p for p in rated if p not in train_photos]
        test_rows = [row_of[p] for p in test_photos]
        y_fit = np.array([rated[photos[i]] for i in fit_rows])
        y_test = np.array([rated[p] for p in test_photos])
        counts.append(len(fit_rows))
        folds = fold_rows([0] * len(fit_rows), None, 5, args.seed)  # OASIS photos are all different: no groups
        alone_weight, alone_bias, _ = ridge_cv(x[fit_rows], y_fit, folds, alphas=(1e1, 1e2, 1e3, 1e4, 1e5, 1e6))
        deviation, _ = personal_fit(x[fit_rows], crowd[fit_rows], y_fit, folds)
        others = np.array([(totals[p][0] - rated[p]) / (totals[p][1] - 1) for p in test_photos])
        results["crowd model"].append(float(spearman(crowd[test_rows], y_test)))
        results["person-only ridge"].append(float(spearman((x[test_rows] @ alone_weight + alone_bias).ravel(), y_test)))
        results["personal (experiment=personal)"].append(float(spearman(deviation.predict(x[test_rows], crowd[test_rows]), y_test)))
        results["other raters' mean (oracle)"].append(float(spearman(others, y_test)))
    table = {name: np.nan_to_num(np.array(values), nan=0.0) for name, values in results.items()}
    gain = table["personal (experiment=personal)"] - table["crowd model"]
    few = np.array(counts) <= np.percentile(counts, 33.3)
    rows = []
    for name, values in table.items():
        improved = f"{np.mean(values > table['crowd model']):.0%}" if name != "crowd model" else "-"
        rows.append([name, f"{np.median(values):.3f}", f"{np.mean(values):.3f}", improved, f"{np.median(values[few]):.3f}"])
    low, high = bootstrap_median(gain, args.seed)
    low_few, high_few = bootstrap_median(gain[few], args.seed)
    body = (f"{len(chosen)} OASIS raters (of {len(eligible)} with >= 30 training and >= 20 held-out ratings; fixed seed), "
            f"{len(train_photos)} training photos / {len(photos) - len(train_photos)} held out; training ratings per rater "
            f"{min(counts)}-{max(counts)} (median {int(np.median(counts))}). Spearman with each rater's held-out ratings.\n\n")
    few_header = f"median, fewest-ratings third (<= {int(np.percentile(counts, 33.3))})"
    body += markdown_table(["model", "median", "mean", "raters improved over the crowd", few_header], rows)
    body += (f"\n\nPersonal minus crowd, per rater: median gain {np.median(gain):+.3f} (bootstrap 90 % interval {low:+.3f} to {high:+.3f}); "
             f"fewest-ratings third: {np.median(gain[few]):+.3f} ({low_few:+.3f} to {high_few:+.3f}); "
             f"worse by more than 0.05 for {np.mean(gain < -0.05):.0%} of raters.")
    publish("personal", "Personal taste: per-rater models on OASIS (bench/personal.py)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
