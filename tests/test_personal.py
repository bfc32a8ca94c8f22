"""experiment=personal: one person's ratings as a deviation from a crowd checkpoint."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from beholder.core.errors import UserError
from beholder.data.labels import fold_rows, top_rating
from beholder.models.metrics import spearman
from beholder.predict.run import predict
from beholder.train.personal import CROWD_MARGIN, better_of, fit_in_features
from beholder.train.probe import ridge_fits
from beholder.train.run import train
from beholder.train.taste import Setting, TasteSpace, build_taste_space, choose_settings, crowd_out_of_fold, fit_deviation, population_slope, simulated_users

from conftest import TINY, compose_predict, compose_train, make_gallery, read_scores


def test_the_deviation_stays_at_the_rescaled_base_unless_the_ratings_differ():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 40))
    w_base = np.eye(40)[0]
    base = x @ w_base + 0.3 * rng.standard_normal(120)
    folds = fold_rows([0] * 120, None, 5, seed=0)
    agreeing = 3 + 2 * base + 0.1 * rng.standard_normal(120)
    weight, _, _, _ = fit_in_features(x, base, agreeing, folds, w_base, 0.0)
    assert np.std(x @ (weight - 2 * w_base)) < 0.1  # the crowd, rescaled
    differing = 3 + 2 * base + 3 * x[:, 5]  # the person also cares, as much, about something the crowd does not
    weight, _, out_of_fold, _ = fit_in_features(x, base, differing, folds, w_base, 0.0)
    assert np.std(x @ (weight - 2 * w_base)) > 1 and spearman(out_of_fold, differing) > spearman(base, differing) + 0.2


def test_a_personal_model_worse_than_the_crowd_on_the_persons_own_ratings_is_not_shipped():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 8))
    w_base, c_base = np.eye(8)[0], 4.0
    base = x @ w_base + c_base
    y = 2 * base + 1 + 0.2 * rng.standard_normal(40)  # the person rates much as the crowd does
    overfitted = rng.standard_normal(40)  # a personal model's out-of-fold scores that miss it
    weight, bias, scores, shipped = better_of(y, base, overfitted, (np.ones(8), 0.0), w_base, c_base)
    assert shipped == "crowd" and spearman(scores, y) == spearman(base, y)  # the crowd's order ...
    assert np.allclose(x @ weight + bias, scores) and abs(np.mean(scores) - np.mean(y)) < 0.1  # ... on the person's scale, one head
    better = y + 0.01 * rng.standard_normal(40)
    weight, bias, scores, shipped = better_of(y, base, better, (np.ones(8), 0.5), w_base, c_base)
    assert shipped == "personal" and bias == 0.5 and scores is better
    near = y + 0.4 * rng.standard_normal(40)  # a little worse than the crowd out of fold: within chance, shipped
    assert spearman(base, y) - CROWD_MARGIN < spearman(near, y) < spearman(base, y)
    assert better_of(y, base, near, (np.ones(8), 0.5), w_base, c_base)[3] == "personal"


@pytest.mark.slow
def test_a_taste_the_population_shares_is_learnt_from_20_ratings_and_folds_into_one_head():
    """Population raters depart from the crowd mean along a few directions; a new person along one
    of them is fitted in the taste space from 20 ratings better than by the crowd."""
    rng = np.random.default_rng(1)
    photos, features = 300, 60
    x = rng.standard_normal((photos, features))
    tastes = np.linalg.qr(rng.standard_normal((features, 3)))[0]  # three ways of departing from the crowd
    crowd_mean = 4 + x[:, 0]
    raters = []
    for _ in range(150):
        own = crowd_mean + x @ tastes @ rng.normal(0, 1.0, 3) + 0.3 * rng.standard_normal(photos)
        rows = rng.choice(photos, 100, replace=False)
        raters.append({int(r): float(own[r]) for r in rows})
    space = build_taste_space(x, crowd_mean, raters, k=6)
    assert np.linalg.norm(space.directions[:, :3].T @ tastes, axis=0).min() > 0.8  # the three directions are found (their span)
    tuned = choose_settings(x, crowd_mean, simulated_users(raters[:60], 20, seed=0), space)  # as the default model chooses them
    space.settings = [tuned["setting"], Setting(75, 6, 1.0, 0.0, 0.0, math.inf)]
    assert space.chosen(18) == tuned["setting"] and space.chosen(90).k == 6 and tuned["gain_taste"] > 0.1
    person = crowd_mean + 1.5 * x @ tastes[:, 1]
    setting = space.chosen(20)
    asked = rng.choice(photos, 20, replace=False)
    fit = space.fit(x[asked], crowd_mean[asked], person[asked], setting)
    weight, bias = fit.head(np.eye(features)[0], 4.0)
    assert np.allclose(x @ weight + bias, fit.predict(x, crowd_mean))  # one linear head
    held = np.setdiff1d(np.arange(photos), asked)
    assert spearman(fit.predict(x[held], crowd_mean[held]), person[held]) > spearman(crowd_mean[held], person[held]) + 0.2
    space.slope = population_slope(crowd_mean, raters)
    restored = type(space).from_state(space.state(), features)
    assert np.allclose(restored.coordinates(x, setting.k), space.coordinates(x, setting.k), atol=1e-4)
    assert restored.settings == space.settings and restored.slope == space.slope > 0


def test_a_blend_is_the_taste_fit_and_the_feature_ridge_in_proportion_and_the_slope_prior_holds_few_ratings_to_the_population():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 30))
    crowd = x[:, 0] + 4
    space = TasteSpace(np.linalg.qr(rng.standard_normal((30, 4)))[0], np.ones(4), "digest", slope=1.0)
    y = 2 - 0.3 * crowd + rng.standard_normal(40)  # these few ratings happen to run against the crowd
    alone = space.fit(x, crowd, y, Setting(40, 4, 1.0, 0.0, 0.0, math.inf))
    feature = fit_deviation(x, crowd, y, 100.0)
    half = space.fit(x, crowd, y, Setting(40, 4, 1.0, 0.0, 0.5, 100.0))
    assert np.allclose(half.predict(x, crowd), (alone.predict(x, crowd) + feature.predict(x, crowd)) / 2)
    assert alone.slope < 0
    held_to_it = space.fit(x, crowd, y, Setting(40, 4, 1.0, 1e6, 0.0, math.inf))
    assert held_to_it.slope == pytest.approx(np.std(y), rel=1e-3)  # the population's 1 sd per point of crowd score


def test_the_crowd_out_of_fold_cannot_fit_a_photos_own_rating():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 300))
    noise = rng.standard_normal(100)  # ratings the features cannot predict
    in_sample = x @ ridge_fits(x, noise[:, None], [1.0])[0][0]
    assert spearman(in_sample.ravel(), noise) > 0.9 and spearman(crowd_out_of_fold(x, noise), noise) < 0.3


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """A crowd model on frozen features (head=regression), and its gallery."""
    root = tmp_path_factory.mktemp("crowd")
    gallery = make_gallery(root / "gallery", count=60)
    train(compose_train(TINY + [f"gallery={gallery}", f"labels={gallery}/labels.csv", "head=regression",
                                "backbone.trainable_blocks=0", f"feature_cache={root}/cache", f"output_dir={root}/run"]))
    return root / "run" / "checkpoints" / "best.ckpt", gallery, root / "cache"


def test_a_person_who_likes_the_dark_gets_a_model_of_their_own(crowd, tmp_path, capsys):
    ckpt, gallery, cache = crowd
    with open(gallery / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "mine.csv", "w", newline="") as f:  # stars against the crowd's brightness
        writer = csv.writer(f)
        writer.writerow(["image", "tier", "rating"])
        for row in rows:
            stars = 5 - int(row["tier"]) - (float(row["beauty_mean"]) > 2.5)
            writer.writerow([row["image"], {5: 3, 4: 2}.get(stars, 1 if stars >= 2 else 0), stars])
    options = TINY + ["experiment=personal", f"base_ckpt={ckpt}", f"gallery={gallery}", f"labels={tmp_path}/mine.csv",
                      "data.score_column=rating", f"feature_cache={cache}", f"output_dir={tmp_path}/me"]
    with pytest.raises(UserError, match=r"save=.*: give a file in a folder that exists"):
        train(compose_train(options + [f"save={tmp_path}"]))
    capsys.readouterr()
    train(compose_train(options + [f"save={tmp_path}/my-taste.ckpt"]))
    printed = capsys.readouterr().out
    assert "cull            gentle keeps about" in printed and "normal keeps about" in printed and "hard   keeps about" in printed
    metrics = json.loads((tmp_path / "me" / "metrics.json").read_text())
    assert metrics["ratings"] == 60 and metrics["cv/spearman_base"] < 0 < 0.5 < metrics["cv/spearman_personal"]
    assert metrics["shipped"] == "personal"
    personal = tmp_path / "me" / "checkpoints" / "best.ckpt"
    assert (tmp_path / "my-taste.ckpt").read_bytes() == personal.read_bytes()  # the stable name predict's ckpt= is given
    saved = torch.load(personal, map_location="cpu", weights_only=True)
    assert saved["personal"]["base_ckpt"] == str(ckpt) and len(saved["personal"]["base_sha256"]) == 64

    summary = predict(compose_predict([f"ckpt={personal}", f"gallery={gallery}", f"output={tmp_path}/scored"]))
    assert summary["threshold_source"].startswith("cull=normal: ")  # a personal model's default: their best photos' share
    lowest = [row for row in read_scores(tmp_path / "scored" / "scores.csv") if row["reason"] == "lowest"]
    assert "among the person's lowest ratings (out of fold" in summary["threshold_source"]
    assert 0 < len(lowest) == summary["rejected_for"]["among the person's lowest ratings"] and all(row["band"] == "reject" for row in lowest)
    sheet = (tmp_path / "scored" / "highlights.html").read_text()
    assert "aria-label='what a cull costs'" in sheet and all(f">{level}</text>" in sheet for level in ("gentle", "normal", "hard"))
    cuts = {level: predict(compose_predict([f"ckpt={personal}", f"gallery={gallery}", f"output={tmp_path}/{level}", f"cull={level}"]))
            for level in ("gentle", "hard")}
    assert cuts["gentle"]["rejected"] <= summary["rejected"] <= cuts["hard"]["rejected"] and cuts["gentle"]["rejected"] < cuts["hard"]["rejected"]
    with pytest.raises(UserError, match=r"cull=hard: the cull levels are calibrated on a person's ratings"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/crowd", "cull=hard"]))
    with pytest.raises(UserError, match=r"cull=hard is a cut of its own; leave out keep_top"):
        predict(compose_predict([f"ckpt={personal}", f"gallery={gallery}", f"output={tmp_path}/x", "cull=hard", "keep_top=0.5"]))
    scored = {row["image"]: float(row["score"]) for row in read_scores(tmp_path / "scored" / "scores.csv")}
    brightness = {row["image"]: float(row["beauty_mean"]) for row in rows}
    images = sorted(scored)
    assert spearman(np.array([scored[i] for i in images]), np.array([brightness[i] for i in images])) < -0.5


def test_a_base_that_is_not_a_frozen_regression_model_is_refused(trained, crowd, tmp_path):
    ckpt, gallery = trained  # fine-tuned, softmax
    cfg = compose_train(TINY + ["experiment=personal", f"base_ckpt={ckpt}", f"gallery={gallery}", f"labels={gallery}/labels.csv",
                                f"feature_cache={tmp_path}/cache", f"output_dir={tmp_path}/me"])
    with pytest.raises(Exception, match="fine-tuned|head=regression"):
        train(cfg)


def test_a_persons_top_tier_follows_their_own_ratings():
    generous = np.array([5] * 30 + [4] * 27 + [3] * 30 + [2] * 13)  # 57 % at 4-5 stars
    assert top_rating(generous) == 5  # their 5 stars, not "4 or 5"
    sparing = np.array([5] * 2 + [4] * 2 + [3] * 96)
    assert top_rating(sparing) == 4  # 4 % at 4-5 stars: both
    assert top_rating(np.linspace(1, 7, 200)) >= np.quantile(np.linspace(1, 7, 200), 0.95)  # mean ratings: their top 5 %
