"""Personal taste: does a model of one person's ratings beat the crowd model *for that person*?

OASIS's 86,080 individual beauty ratings (757 raters, ~114 photos each). The 458 photos are split
60/40 once (fixed seed); every fit sees training photos only, every score is on held-out photos. The
crowd model is beholder's experiment=best head=regression trained on the mean ratings of the
training photos. The raters are split once: --raters *targets* (measured), the rest the
*population*, whose first half builds the taste space (beholder/train/taste.py) and whose second
half chooses, by simulated users, each fixed penalty and how a person is fitted in the taste space
(their photos scored by a ridge on the crowd's means out of fold, as a person's new photos are): no target rater ever
builds or tunes what it is measured with. For each target, with all their training ratings (~75)
and with 20 of them (drawn at random, or chosen as the photos most informative about their taste):
  crowd                    the crowd model's score (rescaling does not change a Spearman)
  person-only ridge        ridge on the frozen features, the person's ratings alone (5-fold CV penalty)
  personal, own CV         the crowd rescaled plus a feature ridge, its penalty by 5-fold CV per person
  personal, pooled penalty the same with one penalty chosen on the population
  personal, taste space    the shipped fit: closed form over [1, crowd, taste coordinates], the crowd
                           slope shrunk toward the population's, blended with the feature ridge
  ..., photos new to the crowd  the same, fitted against the crowd's scores of the person's photos
                           out of fold (the crowd model was trained on them; a user's photos are new to it)
  other raters' mean       every other rater's mean rating of each held-out photo (an oracle)
Reported per system: median and mean Spearman with each rater's held-out ratings, the paired median
gain over the crowd with a bootstrap 90 % interval, the share improved and the share worse by more
than 0.05. Results replace the "personal" section of bench/RESULTS.md.

    python bench/personal.py [--raters 200] [--work DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import math
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
from beholder.train.personal import CROWD_MARGIN, base_head_linear  # noqa: E402
from beholder.train.probe import out_of_fold, ridge_cv  # noqa: E402
from beholder.train.taste import (  # noqa: E402
    PersonalFit,
    TasteSpace,
    build_taste_space,
    crowd_mean,
    crowd_out_of_fold,
    fit_deviation,
    fit_deviations,
    rho,
    tune,
)
from bench.common import SHARED, markdown_table, publish  # noqa: E402

OWN_CV_PENALTIES = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6, math.inf)


def crowd_checkpoint(oasis: str, train_photos: set[str], work: str, seed: int) -> str:
    """experiment=best head=regression on the training photos' mean ratings (the rest are its test split)."""
    ckpt = os.path.join(work, "crowd", "checkpoints", "best.ckpt")
    if os.path.exists(ckpt):
        return ckpt
    from beholder.core.entry import compose_config
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
    cfg = compose_config("train", [
        "experiment=best", "head=regression", "cv=0", "data.score_column=beauty_mean", f"gallery={oasis}/images",
        f"labels={labels}", f"feature_cache={work}/cache", f"output_dir={work}/crowd", "trainer.enable_progress_bar=false"])
    train(cfg)
    return ckpt


def personal_fit(x: np.ndarray, base: np.ndarray, y: np.ndarray, folds: list[np.ndarray], alphas=OWN_CV_PENALTIES) -> PersonalFit:
    """The baseline: each person's own penalty, of least squared error over ``folds`` (row indices,
    :func:`beholder.data.labels.fold_rows`)."""
    predicted = out_of_fold(folds, len(y), lambda fit, part: np.stack(
        [deviation.predict(x[part], base[part]) for deviation in fit_deviations(x[fit], base[fit], y[fit], alphas)], axis=1)).T
    return fit_deviation(x, base, y, alphas[int(np.argmin(((predicted - y) ** 2).sum(1)))])


def most_informative(crowd: np.ndarray, coordinates: np.ndarray, count: int, penalty: float, asked: list[int] | None = None) -> list[int]:
    """The ``count`` photos (rows) whose ratings would make the person's model most certain about the
    whole gallery: greedy V-optimal design over [1, crowd, coordinates] (each pick the one that most
    lowers the mean variance of the predicted ratings, the fit's penalty as prior), after the photos
    ``asked`` already. Unlike D-optimal design it does not chase the gallery's extremes."""
    design = np.column_stack([np.ones(len(crowd)), crowd, coordinates])
    spread = design.T @ design / len(design)
    chosen = list(asked or [])
    information = np.diag([1e-3, 1e-3, *([penalty] * coordinates.shape[1])]) + design[chosen].T @ design[chosen]
    for _ in range(min(count, len(crowd) - len(chosen))):
        inverse = np.linalg.inv(information)
        towards = design @ inverse  # each candidate's z^T M^-1
        lowered = np.einsum("ij,jk,ik->i", towards, spread, towards) / (1 + np.einsum("ij,ij->i", towards, design))
        lowered[chosen] = -np.inf
        best = int(np.argmax(lowered))
        chosen.append(best)
        information += np.outer(design[best], design[best])
    return chosen[len(asked or []):]


def bootstrap_median(values: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    medians = [np.median(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


REGIMES = {"all": None, "20": 20}
MARGINS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # how far below the crowd, out of fold, a personal model may be and still ship
MARGIN_COUNTS = (20, 28, None)  # ratings fitted: 20, about what bench/library.py's raters have, all their training ratings
CLOSE = 0.005  # a margin is close enough to always shipping the personal model when its mean gain is within this


def shipping_evidence(space: TasteSpace, x: np.ndarray, fitted_crowd: np.ndarray, crowd: np.ndarray, ratings: dict[str, dict[str, float]],
                      raters: list[str], photos: list[str], train_photos: set[str], seed: int) -> dict:
    """For each count of MARGIN_COUNTS, per rater: what beholder/train/personal.py compares (the
    personal fit's out-of-fold Spearman on the ratings it fits, less the crowd's) and what it decides
    (the fit's held-out Spearman gain over the crowd). Fitted photos carry ``fitted_crowd`` (the
    crowd's scores out of fold: they are new to it, as a person's are), held-out ones ``crowd``."""
    row_of = {p: i for i, p in enumerate(photos)}
    evidence = {count: ([], []) for count in MARGIN_COUNTS}
    for rater in raters:
        rated = ratings[rater]
        every = np.array([row_of[p] for p in rated if p in train_photos])
        held = np.array([row_of[p] for p in rated if p not in train_photos])
        if len(every) < 30 or len(held) < 10:  # as the targets are chosen, with fewer held out
            continue
        y_held = np.array([rated[photos[i]] for i in held])
        for count in MARGIN_COUNTS:
            fit = every if count is None else np.random.default_rng(int(rater)).choice(every, count, replace=False)
            y, base = np.array([rated[photos[i]] for i in fit]), fitted_crowd[fit]
            setting = space.chosen(len(fit))
            predicted = out_of_fold(fold_rows([0] * len(fit), None, 5, seed), len(fit),
                                    lambda part_fit, part: space.fit(x[fit][part_fit], base[part_fit], y[part_fit], setting).predict(x[fit][part], base[part]))
            evidence[count][0].append(rho(predicted, y) - rho(base, y))
            evidence[count][1].append(rho(space.fit(x[fit], base, y, setting).predict(x[held], crowd[held]), y_held) - rho(crowd[held], y_held))
    return {count: (np.array(d), np.array(g)) for count, (d, g) in evidence.items()}


def shipped_gain(out_of_fold_gap: np.ndarray, held_gain: np.ndarray, margin: float) -> np.ndarray:
    """Each rater's held-out gain over the crowd when the personal model ships unless its
    out-of-fold Spearman is more than ``margin`` below the crowd's (then: the crowd's order, no gain)."""
    return np.where(out_of_fold_gap >= -margin, held_gain, 0.0)


def chosen_margin(evidence: dict) -> float:
    """The smallest margin whose mean gain is within CLOSE of always shipping, at every count."""
    return next((m for m in MARGINS if all(shipped_gain(d, g, m).mean() >= g.mean() - CLOSE for d, g in evidence.values())), math.inf)


def margin_section(tuning: dict, targets: dict) -> str:
    margin = chosen_margin(tuning)
    rows = []
    for count, (d, g) in targets.items():
        for m in (*MARGINS, math.inf):
            gain = shipped_gain(d, g, m)
            rows.append([count or "all", "always personal" if math.isinf(m) else f"{m:g}" + (" (chosen)" if m == margin else ""),
                         f"{np.mean(d >= -m):.0%}", f"{gain.mean():+.4f}", f"{np.mean(gain > 0):.0%}", f"{np.mean(gain < -0.05):.0%}"])
    correlation = ", ".join(f"{c or 'all'} ratings {np.corrcoef(d, g)[0, 1]:+.2f}" for c, (d, g) in targets.items())
    shipped = "the same as" if margin == CROWD_MARGIN else f"NOT the same as ({CROWD_MARGIN:g})"
    return (f"\n**When the crowd's order is kept**: a personal model ships unless its out-of-fold Spearman on the ratings it fits is more "
            f"than a margin below the crowd's. Chosen on the tuning raters (the smallest margin whose mean held-out gain is within {CLOSE} "
            f"of always shipping, at {', '.join(str(c or 'all') for c in MARGIN_COUNTS)} ratings): {margin:g}, {shipped} "
            f"beholder/train/personal.py's CROWD_MARGIN. How well the out-of-fold gap predicts the held-out gain (correlation, targets): "
            f"{correlation}. On the target raters:\n\n"
            + markdown_table(["ratings", "margin", "personal shipped", "mean held-out gain over the crowd", "improved", "worse by > 0.05"], rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "oasis"))
    parser.add_argument("--raters", type=int, default=200, help="target raters (fixed seed); the rest are the population")
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
    train_rows = np.array(sorted(row_of[p] for p in train_photos))

    eligible = sorted(r for r, rated in ratings.items()
                      if sum(p in train_photos for p in rated) >= 30 and sum(p not in train_photos for p in rated) >= 20)
    targets = sorted(rng.choice(eligible, min(args.raters, len(eligible)), replace=False).tolist(), key=int)
    population = [r for r in sorted(ratings, key=int) if r not in set(targets)]
    rng.shuffle(population)
    builders, tuners = population[: len(population) // 2], population[len(population) // 2:]
    on_train = {r: {row_of[p]: v for p, v in ratings[r].items() if p in train_photos} for r in population}
    mean_rating = crowd_mean([on_train[r] for r in population], len(photos))  # of each training photo
    space = build_taste_space(x[train_rows], mean_rating[train_rows],
                              [{int(np.searchsorted(train_rows, row)): v for row, v in on_train[r].items()} for r in builders if len(on_train[r]) >= 20])
    tuning = [on_train[r] for r in tuners if len(on_train[r]) >= 30]
    new_to_crowd = crowd.copy()  # the simulated users' photos as a person's are: not fitted by the crowd model
    new_to_crowd[train_rows] = crowd_out_of_fold(x[train_rows], mean_rating[train_rows], args.seed)
    chosen_for = tune(space, x, new_to_crowd, tuning, args.seed)
    settings = {name: chosen_for[count] for name, count in REGIMES.items()}

    totals = defaultdict(lambda: [0.0, 0])
    for rater, rated in ratings.items():
        for photo, value in rated.items():
            totals[photo][0] += value
            totals[photo][1] += 1
    results: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in (*REGIMES, "20 chosen")}
    counts = []
    for rater in targets:
        rated = ratings[rater]
        all_fit = np.array([row_of[p] for p in rated if p in train_photos])
        test_photos = [p for p in rated if p not in train_photos]
        held = np.array([row_of[p] for p in test_photos])
        y_held = np.array([rated[p] for p in test_photos])
        counts.append(len(all_fit))
        others = np.array([(totals[p][0] - rated[p]) / (totals[p][1] - 1) for p in test_photos])
        for regime in results:
            chosen = settings["20" if regime.startswith("20") else "all"]
            setting = chosen["setting"]
            if regime == "all":
                fit = all_fit
            elif regime == "20":
                fit = np.random.default_rng(int(rater)).choice(all_fit, 20, replace=False)
            else:
                fit = all_fit[most_informative(crowd[all_fit], space.coordinates(x[all_fit], setting.k), 20, setting.penalty)]
            y = np.array([rated[photos[i]] for i in fit])
            folds = fold_rows([0] * len(fit), None, 5, args.seed)  # OASIS photos are all different: no groups
            row = results[regime]
            row["crowd model"].append(rho(crowd[held], y_held))
            if regime != "20 chosen":
                alone_weight, alone_bias, _ = ridge_cv(x[fit], y, folds, alphas=(1e1, 1e2, 1e3, 1e4, 1e5, 1e6))
                row["person-only ridge"].append(rho((x[held] @ alone_weight + alone_bias).ravel(), y_held))
                own = personal_fit(x[fit], crowd[fit], y, folds)
                row["personal, own CV penalty"].append(rho(own.predict(x[held], crowd[held]), y_held))
                pooled = fit_deviation(x[fit], crowd[fit], y, chosen["feature_penalty"])
                row["personal, pooled penalty"].append(rho(pooled.predict(x[held], crowd[held]), y_held))
            row["personal, taste space"].append(rho(space.fit(x[fit], crowd[fit], y, setting).predict(x[held], crowd[held]), y_held))
            if regime != "20 chosen":  # the same, the person's photos scored as new to the crowd, as they are in use
                row["personal, taste space, photos new to the crowd"].append(
                    rho(space.fit(x[fit], new_to_crowd[fit], y, setting).predict(x[held], crowd[held]), y_held))
            row["other raters' mean (oracle)"].append(rho(others, y_held))

    body = (f"{len(targets)} target raters (of {len(eligible)} with >= 30 training and >= 20 held-out ratings; fixed seed); the other "
            f"{len(population)} raters are the population: {len(builders)} build the taste space, {len(tuners)} choose how a "
            f"person is fitted (simulated users, scored against the crowd's ridge out of fold; crowd slope {space.slope:.2f} sd per point). "
            f"{len(train_photos)} training photos / {len(photos) - len(train_photos)} held out; training ratings per "
            f"target {min(counts)}-{max(counts)} (median {int(np.median(counts))}). Spearman with each target's held-out ratings.\n\n")
    body += "Chosen on the population: " + "; ".join(
        f"{name} ratings: feature penalty {s['feature_penalty']:g}; taste space k = {s['setting'].k}, penalty {s['setting'].penalty:g}, "
        f"crowd slope worth {s['setting'].prior_ratings:g} ratings, {s['setting'].blend:.0%} from a feature ridge"
        + (f" (penalty {s['setting'].feature_penalty:g})" if s['setting'].blend else "")
        + f" (population gains {s['gain_feature']:+.3f} and {s['gain_taste']:+.3f})"
        for name, s in settings.items()) + ".\n"
    for regime, table in results.items():
        title = {"all": "all training ratings", "20": "20 ratings drawn at random", "20 chosen": "20 ratings chosen as most informative"}[regime]
        crowd_values = np.array(table["crowd model"])
        rows = []
        for name, values in table.items():
            values = np.array(values)
            gain = values - crowd_values
            low, high = bootstrap_median(gain, args.seed)
            rows.append([name, f"{np.median(values):.3f}", f"{np.mean(values):.3f}"] + (
                ["-", "-", "-"] if name == "crowd model" else
                [f"{np.median(gain):+.3f} [{low:+.3f}, {high:+.3f}]", f"{np.mean(gain > 0):.0%}", f"{np.mean(gain < -0.05):.0%}"]))
        body += f"\n**{title}**\n\n" + markdown_table(
            ["model", "median", "mean", "paired median gain over the crowd [90 % interval]", "improved", "worse by > 0.05"], rows) + "\n"
    random_20 = np.array(results["20"]["personal, taste space"])
    chosen_20 = np.array(results["20 chosen"]["personal, taste space"])
    low, high = bootstrap_median(chosen_20 - random_20, args.seed)
    body += (f"\nCold start, taste space with 20 ratings: the most informative photos against 20 at random, paired median "
             f"{np.median(chosen_20 - random_20):+.3f} [{low:+.3f}, {high:+.3f}] (chosen among each target's rated training photos).")
    space.settings = [chosen["setting"] for chosen in chosen_for.values()]  # as the default model's taste space stores them
    evidence = [shipping_evidence(space, x, new_to_crowd, crowd, ratings, raters, photos, train_photos, args.seed) for raters in (tuners, targets)]
    body += "\n" + margin_section(*evidence)
    publish("personal", "Personal taste: per-rater models on OASIS (bench/personal.py)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
