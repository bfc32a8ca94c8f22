"""Quality on real human ratings: 5-fold cross-validation on OASIS (458 photos, crowd beauty ratings).

Every image is scored once by a model that never saw it. Systems, on the same folds:
  probe            ridge regression on beauty_mean over frozen, standardised ImageNet features of
                   EfficientNet-Lite2+Lite1+Lite0 (what the LAION aesthetic predictor does with CLIP
                   features): the anchor to beat
  probe-levels     the same over every pooled feature level of the three (MLSP), each seen at the
                   two sizes of experiment=best (backbone.scales) and averaged: the best probe here
  probe-levels-one-size   the same at one size
  best-*           beholder experiment=best (cached-feature heads, cv=5 inside each outer fold) with
                   the regression, ordinal and softmax heads
  best-regression-one-size   best-regression at one size (backbone.scales=null)
  best-regression-cv0   the same without cv (one 80/20 train/val split)
  defaults         beholder fine-tuning EfficientNet-Lite0's top blocks, head=regression
  random           a random ranking (the floor)
Reported: Spearman and Pearson with beauty_mean, F2 for tier >= 2, gallery reduction at 100 % and
95 % recall of tier >= 2 (bootstrap 90 % intervals), and for beholder systems the shipped threshold
(predict.py's default policy, calibrated on the checkpoint's scores) on the held-out fold: the share
of its top-tier photos kept (not rejected) and the share put in the review band. Seconds: training
per fold, frozen features of all images once (cache cold) apart. Results replace the "quality"
section of bench/RESULTS.md.

    python bench/quality.py                      # the full run (about 40 minutes on 2 CPU cores)
    python bench/quality.py --folds 0 --only best-regression   # a quick look at fold 0
    python bench/quality.py --variant "lr3e-3=experiment=best head=regression data.score_column=beauty_mean optimizer.lr=3e-3"
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

from beholder.core.storage import Store  # noqa: E402
from beholder.data.labels import fold_rows  # noqa: E402
from beholder.models.features import cached_features  # noqa: E402
from beholder.models.inference import score_images  # noqa: E402
from beholder.models.load import load_checkpoint  # noqa: E402
from beholder.models.metrics import gallery_reduction  # noqa: E402
from beholder.models.scorenet import ScoreNet  # noqa: E402
from beholder.predict.policy import Policy  # noqa: E402
from beholder.train.probe import ridge_cv  # noqa: E402
from beholder.train.run import train  # noqa: E402
from bench.common import REPO, SHARED, markdown_table, publish  # noqa: E402

POSITIVE_TIER = 2
BEST = "experiment=best data.score_column=beauty_mean"
SYSTEMS = {
    "best-regression": f"{BEST} head=regression",
    "best-ordinal": f"{BEST} head=ordinal",
    "best-softmax": f"{BEST} head=softmax",
    "best-regression-cv0": f"{BEST} head=regression cv=0",
    "best-regression-one-size": f"{BEST} head=regression backbone.scales=null",
    "defaults": "backbone=efficientnet_lite0 data.image_size=[288,288] trainer.max_epochs=6 head=regression data.score_column=beauty_mean",
}


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
    from beholder.core.entry import compose_config

    return compose_config("train", overrides)


def shipped_policy(module):
    """predict.py's default keep / review / reject policy for a checkpoint."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(os.path.join(REPO, "conf", "predict.yaml"))
    return Policy.calibrated(module.val_positive_scores.tolist(), 1.0, defaults.promise_recall, defaults.promise_confidence)


def score_with_checkpoint(ckpt, root, images):
    """Each image's (score, predicted tier >= 2, band of the shipped policy)."""
    module = load_checkpoint(ckpt)
    policy = shipped_policy(module)
    scored = score_images(module, root, images, Store())
    return {i: (scored[i][0], scored[i][1] >= POSITIVE_TIER, policy.band(scored[i][0])) for i in images}


def probe_features(root, images, levels, work, one_size=False):
    """View 0 of the frozen features experiment=best trains on (``levels``: every pooled level;
    ``one_size``: at its input size alone), from its cache."""
    overrides = ["backbone.scales=null"] if one_size else []
    cfg = compose(["experiment=best", f"backbone.levels={levels}", "gallery=.", "labels=x", "output_dir=.", *overrides])
    net = ScoreNet(dict(cfg.backbone), {"_target_": "beholder.models.heads.RegressionHead"})
    views = cfg.feature_views if levels else 1  # the levels' caches are the ones the best-* systems read
    features, _ = cached_features(net, root, images, Store(), dict(cfg.data.augment), views, f"{work}/cache", cfg.data.max_pixels)
    return np.stack([features[i][0].numpy() for i in images]).astype(np.float64)


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
        f"gallery={root}", f"labels={labels}", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"seed={args.seed}", f"output_dir={work}/{name}-fold{fold}", *overrides.split(),
    ])
    if cfg.feature_cache:  # one cache for every system and fold of this run
        cfg.feature_cache = f"{work}/cache"
    train(cfg)
    return score_with_checkpoint(f"{work}/{name}-fold{fold}/checkpoints/best.ckpt", root, [r["image"] for r in test])


def cold_run(root, labels, work):
    """Seconds of the README's experiment=best command on every photo, feature cache empty."""
    started = time.perf_counter()
    command = [sys.executable, os.path.join(REPO, "train.py"), "experiment=best", "head=regression", f"gallery={root}",
               f"labels={labels}", "data.score_column=beauty_mean", f"feature_cache={work}/cold-cache",
               f"hydra.run.dir={work}/cold-run", "trainer.enable_progress_bar=false"]
    import subprocess

    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "oasis"))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(5)), help="which of the 5 folds to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], help="NAME=HYDRA OVERRIDES: another beholder system")
    parser.add_argument("--only", nargs="*", default=None, help="run only these of the default beholder systems (none: only --variant)")
    parser.add_argument("--no-cold-run", action="store_true", help="skip timing experiment=best on all photos with an empty cache")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--work", help="a folder for runs and the feature cache (default: a new temporary one); reuse it to skip extraction")
    args = parser.parse_args()

    rows = read_oasis(args.data)
    root = os.path.join(args.data, "images")
    images = [r["image"] for r in rows]
    folds = stratified_folds(rows, 5, args.seed)
    systems = dict(SYSTEMS)
    if args.only is not None:
        systems = {name: o for name, o in systems.items() if name in args.only}
    systems.update(dict(v.split("=", 1) for v in args.variant))
    scored = {name: {} for name in ["probe", "probe-levels", "probe-levels-one-size", *systems, "random"]}
    timings = {name: 0.0 for name in scored}
    work = args.work or tempfile.mkdtemp(prefix="beholder-quality-")
    rng = np.random.default_rng(args.seed)
    beauty = np.array([r["beauty"] for r in rows])

    cache = "cache warm: --work reused" if os.path.isdir(os.path.join(work, "cache")) else "cache cold"
    started = time.perf_counter()
    features = {"probe-levels": probe_features(root, images, True, work)}
    extraction = time.perf_counter() - started
    best = compose(["experiment=best", "gallery=.", "labels=x", "output_dir=."])
    views, sizes = best.feature_views, len(best.backbone.scales or [1.0])
    features["probe-levels-one-size"] = probe_features(root, images, True, work, one_size=True)
    features["probe"] = probe_features(root, images, False, work, one_size=True)
    alphas = {name: [] for name in features}
    for fold in args.folds:
        test = [i for i, f in enumerate(folds) if f == fold]
        train_idx = [i for i, f in enumerate(folds) if f != fold]
        cut = min(rows[i]["beauty"] for i in train_idx if rows[i]["tier"] >= POSITIVE_TIER)
        for name, x in features.items():
            started = time.perf_counter()
            mean, std = x[train_idx].mean(0), x[train_idx].std(0) + 1e-6
            inner = fold_rows([rows[i]["tier"] for i in train_idx], None, 5, args.seed)
            weight, bias, alpha = ridge_cv((x[train_idx] - mean) / std, beauty[train_idx], inner)
            alphas[name].append(alpha)
            for i, value in zip(test, (((x[test] - mean) / std) @ weight + bias)[:, 0]):
                scored[name][rows[i]["image"]] = (float(value), bool(value >= cut), None)
            timings[name] += time.perf_counter() - started
        prevalence = np.mean([rows[i]["tier"] >= POSITIVE_TIER for i in train_idx])
        for i in test:
            scored["random"][rows[i]["image"]] = (float(rng.random()), bool(rng.random() < prevalence), None)
        for name, overrides in systems.items():
            started = time.perf_counter()
            scored[name].update(run_beholder(name, overrides, rows, folds, fold, root, work, args))
            timings[name] += time.perf_counter() - started
            print(f"fold {fold} {name}: {time.perf_counter() - started:.0f}s", flush=True)
    cold = None if args.no_cold_run or not any(o.startswith(BEST) for o in systems.values()) else cold_run(root, os.path.join(args.data, "labels.csv"), work)

    covered = [r for r, f in zip(rows, folds) if f in args.folds]
    parts = [[r for r, f in zip(rows, folds) if f == k] for k in args.folds]
    table, results = [], {}
    for name, by_image in scored.items():
        scores = [by_image[r["image"]][0] for r in covered]
        decisions = [by_image[r["image"]][1] for r in covered]
        point, interval = metrics(scores, decisions, covered), bootstrap(scores, decisions, covered)
        # pooled scores come from 5 different models; the per-fold mean shows ranking without calibration drift
        per_fold = [spearmanr([by_image[r["image"]][0] for r in part], [r["beauty"] for r in part]).statistic for part in parts]
        point["spearman_fold_mean"] = float(np.mean(per_fold))
        shipped = ["-", "-"]
        if by_image[covered[0]["image"]][2] is not None:  # a beholder checkpoint: predict.py's bands
            kept = [np.mean([by_image[r["image"]][2] != "reject" for r in part if r["tier"] >= POSITIVE_TIER]) for part in parts]
            review = [np.mean([by_image[r["image"]][2] == "review" for r in part]) for part in parts]
            point.update(shipped_recall=float(np.mean(kept)), review_share=float(np.mean(review)))
            shipped = [f"{point['shipped_recall']:.3f} (min {min(kept):.2f})", f"{point['review_share']:.3f}"]
        seconds = timings[name] / len(args.folds)
        results[name] = {"point": point, "interval": interval, "seconds_per_fold": seconds}
        cell = lambda k: f"{point[k]:.3f} [{interval[k][0]:.3f}, {interval[k][1]:.3f}]"  # noqa: E731
        table.append([name, cell("spearman"), f"{point['spearman_fold_mean']:.3f}", cell("pearson"), f"{point['f2']:.3f}",
                      cell("gr100"), cell("gr95"), *shipped, f"{seconds:.0f}"])
    header = ["system", "Spearman (pooled)", "Spearman (mean per fold)", "Pearson", "F2 (tier>=2)", "gallery reduction @100% recall",
              "@95% recall", "shipped threshold: top-tier kept (mean over folds)", "review share", "seconds per fold"]
    body = (
        f"OASIS: {len(covered)} photos scored out of fold ({len(args.folds)} of 5 stratified folds, seed {args.seed}); "
        f"{sum(r['tier'] >= POSITIVE_TIER for r in covered)} of them tier >= 2. beholder systems trained on the other folds "
        f"(their own 80/20 train/val split, or cv=5 over both). Frozen features of all {len(rows)} photos (3 networks x "
        f"levels x {sizes} sizes x {views} views, {cache}): {extraction:.0f} s once, not in the per-fold seconds. Ridge alpha per fold "
        f"(inner 5-fold CV): {alphas}. Brackets: bootstrap 90 % intervals. Shipped threshold: predict.py's default "
        f"policy from the checkpoint (reject below the score that keeps >= 95 % of new top-tier photos with 90 % "
        f"confidence), applied to the held-out fold.\n\n"
        + markdown_table(header, table)
        + "\n\nbeholder systems:\n" + "\n".join(f"- `{n}`: `{o}`" for n, o in systems.items())
        + (f"\n\n`python train.py experiment=best head=regression data.score_column=beauty_mean` on all {len(rows)} photos, "
           f"feature cache empty: {cold:.0f} s." if cold else "")
    )
    with open(os.path.join(work, "quality.json"), "w") as f:
        json.dump(results, f, indent=2)
    publish("quality", "Quality (bench/quality.py)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
