"""experiment=personal: one person's ratings as a deviation from a crowd checkpoint."""

import csv
import json

import numpy as np
import pytest
import torch

from beholder.data.labels import fold_rows, top_rating
from beholder.models.metrics import spearman
from beholder.predict.run import predict
from beholder.train.personal import fit_in_features
from beholder.train.run import train
from beholder.train.taste import build_taste_space, choose_settings, fit_taste, simulated_users

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
    space.settings = [(20, tuned["k"], tuned["penalty"]), (75, 6, 1.0)]
    assert space.setting(18) == (tuned["k"], tuned["penalty"]) and space.setting(90) == (6, 1.0) and tuned["gain_taste"] > 0.1
    person = crowd_mean + 1.5 * x @ tastes[:, 1]
    k, penalty = space.setting(20)
    coordinates = space.coordinates(x, k)
    asked = rng.choice(photos, 20, replace=False)
    fit = fit_taste(crowd_mean[asked], coordinates[asked], person[asked], penalty)
    weight, bias = space.fold(fit, k, np.eye(features)[0], 4.0)
    assert np.allclose(x @ weight + bias, fit.predict(crowd_mean, coordinates))  # one linear head
    held = np.setdiff1d(np.arange(photos), asked)
    assert spearman(fit.predict(crowd_mean[held], coordinates[held]), person[held]) > spearman(crowd_mean[held], person[held]) + 0.2
    restored = type(space).from_state(space.state())
    assert np.allclose(restored.coordinates(x, k), coordinates, atol=1e-4) and restored.settings == space.settings


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """A crowd model on frozen features (head=regression), and its gallery."""
    root = tmp_path_factory.mktemp("crowd")
    gallery = make_gallery(root / "gallery", count=60)
    train(compose_train(TINY + [f"gallery={gallery}", f"labels={gallery}/labels.csv", "head=regression",
                                "backbone.trainable_blocks=0", f"feature_cache={root}/cache", f"output_dir={root}/run"]))
    return root / "run" / "checkpoints" / "best.ckpt", gallery, root / "cache"


def test_a_person_who_likes_the_dark_gets_a_model_of_their_own(crowd, tmp_path):
    ckpt, gallery, cache = crowd
    with open(gallery / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "mine.csv", "w", newline="") as f:  # stars against the crowd's brightness
        writer = csv.writer(f)
        writer.writerow(["image", "tier", "rating"])
        for row in rows:
            stars = 5 - int(row["tier"]) - (float(row["beauty_mean"]) > 2.5)
            writer.writerow([row["image"], {5: 3, 4: 2}.get(stars, 1 if stars >= 2 else 0), stars])
    cfg = compose_train(TINY + ["experiment=personal", f"base_ckpt={ckpt}", f"gallery={gallery}", f"labels={tmp_path}/mine.csv",
                                "data.score_column=rating", f"feature_cache={cache}", f"output_dir={tmp_path}/me"])
    train(cfg)
    metrics = json.loads((tmp_path / "me" / "metrics.json").read_text())
    assert metrics["ratings"] == 60 and metrics["cv/spearman_base"] < 0 < 0.5 < metrics["cv/spearman_personal"]
    personal = tmp_path / "me" / "checkpoints" / "best.ckpt"
    saved = torch.load(personal, map_location="cpu", weights_only=True)
    assert saved["personal"]["base_ckpt"] == str(ckpt) and len(saved["personal"]["base_sha256"]) == 64

    predict(compose_predict([f"ckpt={personal}", f"gallery={gallery}", f"output={tmp_path}/scored"]))
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
