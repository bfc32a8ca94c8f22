"""Quality on real human ratings: 5-fold cross-validation on OASIS (458 photos, crowd beauty ratings).

Every image is scored once by a model that never saw it. Systems, on the same folds:
  probe       frozen ImageNet features of the same backbone + ridge regression on beauty_mean
              (what the LAION aesthetic predictor does with CLIP features)
  regression  beholder head=regression on beauty_mean
  softmax     beholder head=softmax (tier >= 2 vs rest)
  random      a random ranking (the floor)
Reported: Spearman and Pearson with beauty_mean, F2 for tier >= 2, gallery reduction at 100 % and
95 % recall of tier >= 2, each with a bootstrap 90 % interval. Results replace the "quality" section
of bench/RESULTS.md.

    python bench/quality.py                      # the full run (about 35 minutes on 2 CPU cores)
    python bench/quality.py --folds 0 --epochs 2 # a quick look at fold 0
    python bench/quality.py --variant "lr3e-3=optimizer=adamw optimizer.lr=3e-3"   # try other settings
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, SHARED, markdown_table, publish  # noqa: E402
from beholder.data import GalleryDataset, build_transform  # noqa: E402
from beholder.metrics import gallery_reduction  # noqa: E402
from beholder.model import ScoreNet  # noqa: E402
from beholder.module import load_checkpoint, score_images  # noqa: E402
from beholder.probe import extract_features, ridge_cv  # noqa: E402
from beholder.storage import Store  # noqa: E402
from beholder.train import train  # noqa: E402

POSITIVE_TIER = 2


def read_oasis(folder):
    with open(os.path.join(folder, "labels.csv")) as f:
        return [{"image": r["image"], "beauty": float(r["beauty_mean"]), "tier": int(r["tier"])} for r in csv.DictReader(f)]


def stratified_folds(rows, k, seed):
    """fold[i] for each row: every tier spread evenly over the k folds."""
    rng = random.Random(seed)
    fold = [0] * len(rows)
    for tier in sorted({r["tier"] for r in rows}):
        members = [i for i, r in enumerate(rows) if r["tier"] == tier]
        rng.shuffle(members)
        for j, i in enumerate(members):
            fold[i] = j % k
    return fold


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def score_with_checkpoint(ckpt, root, images):
    scored = score_images(load_checkpoint(ckpt), root, images, Store())
    return [scored[i][0] for i in images], [scored[i][1] >= POSITIVE_TIER for i in images]


def probe_features(root, images, image_size):
    """Frozen ImageNet features of the same backbone beholder fine-tunes, evaluation transforms."""
    cfg = compose(["backbone=efficientnet_lite0", "data.root=.", "data.labels=x", "output_dir=."])
    net = ScoreNet(dict(cfg.backbone), {"_target_": "beholder.model.RegressionHead"}, image_size)
    dataset = GalleryDataset(root, images, Store(), build_transform(net.data_config, train=False))
    features, extra = extract_features(net, dataset)
    by_image = dict(zip(extra["image_path"], features))
    return np.stack([by_image[i] for i in images])


def metrics(scores, decisions, rows):
    scores = np.asarray(scores, dtype=float)
    beauty = np.array([r["beauty"] for r in rows])
    positive = np.array([r["tier"] >= POSITIVE_TIER for r in rows])
    decisions = np.asarray(decisions, dtype=bool)
    tp = float((decisions & positive).sum())
    precision = tp / max(decisions.sum(), 1)
    recall = tp / max(positive.sum(), 1)
    f2 = 5 * precision * recall / (4 * precision + recall) if tp else 0.0
    s, p = torch.tensor(scores), torch.tensor(positive)
    return {
        "spearman": float(spearmanr(scores, beauty).statistic),
        "pearson": float(pearsonr(scores, beauty).statistic),
        "f2": f2,
        "gr100": gallery_reduction(s, p, 1.0),
        "gr95": gallery_reduction(s, p, 0.95),
    }


def bootstrap(scores, decisions, rows, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        pick = rng.integers(0, len(rows), len(rows))
        sub = [rows[i] for i in pick]
        if not any(r["tier"] >= POSITIVE_TIER for r in sub):
            continue
        samples.append(metrics([scores[i] for i in pick], [decisions[i] for i in pick], sub))
    return {k: (float(np.percentile([m[k] for m in samples], 5)), float(np.percentile([m[k] for m in samples], 95))) for k in samples[0]}


def run_beholder(name, overrides, rows, folds, fold, root, work, args):
    """Train on the other folds (a stratified 80/20 train/val split of them), score this fold."""
    test = [r for r, f in zip(rows, folds) if f == fold]
    rest = [r for r, f in zip(rows, folds) if f != fold]
    inner = stratified_folds(rest, 5, args.seed + fold)
    labels = os.path.join(work, f"{name}-fold{fold}.csv")
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "tier", "beauty_mean", "split"])
        for r, k in zip(rest, inner):
            writer.writerow([r["image"], r["tier"], r["beauty"], "val" if k == 0 else "train"])
        for r in test:
            writer.writerow([r["image"], r["tier"], r["beauty"], "test"])
    cfg = compose([
        "backbone=efficientnet_lite0", f"data.root={root}", f"data.labels={labels}",
        f"data.image_size=[{args.image_size},{args.image_size}]", f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"seed={args.seed}",
        f"output_dir={work}/{name}-fold{fold}", *overrides.split(),
    ])
    train(cfg)
    images = [r["image"] for r in test]
    return dict(zip(images, zip(*score_with_checkpoint(f"{work}/{name}-fold{fold}/checkpoints/best.ckpt", root, images))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "oasis"))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(5)), help="which of the 5 folds to run")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=288, help="the frozen probe ranks better at 288 than at 224 (bench/PILOTS.md, 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], help="NAME=HYDRA OVERRIDES: another beholder system")
    parser.add_argument("--only", nargs="*", default=None, help="run only these of the default beholder systems (none: only --variant)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    rows = read_oasis(args.data)
    root = os.path.join(args.data, "images")
    folds = stratified_folds(rows, 5, args.seed)
    systems = {"regression": "head=regression data.score_column=beauty_mean", "softmax": "head=softmax"}
    if args.only is not None:
        systems = {name: o for name, o in systems.items() if name in args.only}
    systems.update(dict(v.split("=", 1) for v in args.variant))
    scored = {name: {} for name in ["probe", *systems, "random"]}
    timings = {name: 0.0 for name in scored}
    work = tempfile.mkdtemp(prefix="beholder-quality-")
    rng = np.random.default_rng(args.seed)

    started = time.perf_counter()
    features = probe_features(root, [r["image"] for r in rows], [args.image_size, args.image_size])
    timings["probe"] += time.perf_counter() - started
    alphas = []
    for fold in args.folds:
        test = [i for i, f in enumerate(folds) if f == fold]
        train_idx = [i for i, f in enumerate(folds) if f != fold]
        started = time.perf_counter()
        beauty = np.array([r["beauty"] for r in rows])
        weight, bias, alpha = ridge_cv(features[train_idx], beauty[train_idx], args.seed)
        alphas.append(alpha)
        cut = min(rows[i]["beauty"] for i in train_idx if rows[i]["tier"] >= POSITIVE_TIER)
        for i, s in zip(test, (features[test] @ weight + bias)[:, 0]):
            scored["probe"][rows[i]["image"]] = (float(s), bool(s >= cut))
        timings["probe"] += time.perf_counter() - started
        prevalence = np.mean([rows[i]["tier"] >= POSITIVE_TIER for i in train_idx])
        for i in test:
            scored["random"][rows[i]["image"]] = (float(rng.random()), bool(rng.random() < prevalence))
        for name, overrides in systems.items():
            started = time.perf_counter()
            scored[name].update(run_beholder(name, overrides, rows, folds, fold, root, work, args))
            timings[name] += time.perf_counter() - started
            print(f"fold {fold} {name}: {time.perf_counter() - started:.0f}s", flush=True)

    covered = [r for r, f in zip(rows, folds) if f in args.folds]
    table, results = [], {}
    for name, by_image in scored.items():
        scores = [by_image[r["image"]][0] for r in covered]
        decisions = [by_image[r["image"]][1] for r in covered]
        point, interval = metrics(scores, decisions, covered), bootstrap(scores, decisions, covered)
        # pooled scores come from 5 different models; the per-fold mean shows ranking without calibration drift
        per_fold = [spearmanr([by_image[r["image"]][0] for r in part], [r["beauty"] for r in part]).statistic
                    for part in ([r for r, f in zip(rows, folds) if f == k] for k in args.folds)]
        point["spearman_fold_mean"] = float(np.mean(per_fold))
        results[name] = {"point": point, "interval": interval, "seconds": timings[name]}
        cell = lambda k: f"{point[k]:.3f} [{interval[k][0]:.3f}, {interval[k][1]:.3f}]"  # noqa: E731
        table.append([name, cell("spearman"), f"{point['spearman_fold_mean']:.3f}", cell("pearson"), f"{point['f2']:.3f}",
                      cell("gr100"), cell("gr95"), f"{timings[name]:.0f}"])
    header = ["system", "Spearman (pooled)", "Spearman (mean per fold)", "Pearson", "F2 (tier>=2)", "gallery reduction @100% recall", "@95% recall", "seconds"]
    body = (
        f"OASIS: {len(covered)} photos scored out of fold ({len(args.folds)} of 5 stratified folds, seed {args.seed}); "
        f"{sum(r['tier'] >= POSITIVE_TIER for r in covered)} of them tier >= 2. Backbone efficientnet_lite0 (offline "
        f"ImageNet weights) at {args.image_size}x{args.image_size}; beholder systems trained {args.epochs} epochs on the "
        f"other folds (80/20 train/val). Ridge alpha per fold (inner 5-fold CV): {alphas}. "
        f"Brackets: bootstrap 90 % intervals.\n\n"
        + markdown_table(header, table)
        + "\n\nbeholder systems:\n" + "\n".join(f"- `{n}`: `{o}`" for n, o in systems.items())
    )
    with open(os.path.join(work, "quality.json"), "w") as f:
        json.dump(results, f, indent=2)
    publish("quality", "Quality (bench/quality.py)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
