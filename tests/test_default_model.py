"""The default taste model shipped in the package: predict and personal models start from it."""

import csv
import json
import os

import pytest
import torch

from beholder import default_model
from beholder.data import gallery as data
from beholder.predict.run import predict
from beholder.train.run import train
from beholder.train.taste import TasteSpace

from conftest import TINY, compose_predict, compose_train, make_gallery, read_scores


def test_the_shipped_model_is_small_documented_and_loads():
    from pathlib import Path

    from beholder.models.load import load_checkpoint

    path = Path(default_model.checkpoint_path())
    assert path.stat().st_size < 1_000_000
    card = (path.parent / "MODEL_CARD.md").read_text()
    assert all(words in card for words in ("OASIS", "Brielmann & Pelli", "research", "Intended use", "Limits", "spearman_value"))
    module = load_checkpoint(str(path))
    assert module.net.frozen and len(module.net.extractors) == 2 and len(module.val_positive_scores) > 10


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_gallery(tmp_path_factory.mktemp("library") / "photos", count=24, size=(96, 72))


@pytest.mark.slow
def test_predict_without_a_checkpoint_uses_the_default_model_and_says_so(library, tmp_path, capsys, monkeypatch):
    summary = predict(compose_predict([f"gallery={library}", f"output={tmp_path}/out", f"feature_cache={tmp_path}/cache"]))
    assert summary["scored"] == 24 and summary["model"] == default_model.name() and summary["from_cache"] is None
    printed = capsys.readouterr().out
    assert "default crowd model" in printed and len(read_scores(tmp_path / "out" / "scores.csv")) == 24
    card = printed.split("its card: ", 1)[1].split(")", 1)[0]
    assert os.path.isfile(card)  # a path that exists wherever beholder is installed
    assert "scored 8 of 24 photos (33%)" in printed and "scored 24 of 24 photos (100%)" in printed  # in photos, not batches
    assert "from the feature cache" not in printed

    monkeypatch.setattr(data, "decode_image", refuse_to_decode)  # a second pass: every feature from the cache
    again = predict(compose_predict([f"gallery={library}", f"output={tmp_path}/again", f"feature_cache={tmp_path}/cache"]))
    scores = {row["image"]: row["score"] for row in read_scores(tmp_path / "out" / "scores.csv")}
    assert again["scored"] == 24 and {row["image"]: row["score"] for row in read_scores(tmp_path / "again" / "scores.csv")} == scores
    assert again["from_cache"] == {"photos": 24, "folder": f"{tmp_path}/cache"}
    assert f"24 of them from the feature cache {tmp_path}/cache" in capsys.readouterr().out  # why this run was fast


def refuse_to_decode(*args, **kwargs):
    raise AssertionError("decoded although its features are cached")


@pytest.mark.slow
def test_a_personal_model_without_a_base_starts_from_the_default_model(library, tmp_path, capsys, monkeypatch):
    with open(library / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "mine.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "tier", "rating"])
        writer.writerows([row["image"], row["tier"], 1 + int(row["tier"])] for row in rows)
    train(compose_train(TINY + ["experiment=personal", f"gallery={library}", f"labels={tmp_path}/mine.csv",
                                "data.score_column=rating", f"feature_cache={tmp_path}/cache", f"output_dir={tmp_path}/me"]))
    metrics = json.loads((tmp_path / "me" / "metrics.json").read_text())
    assert metrics["ratings"] == 24 and "default crowd model" in capsys.readouterr().out
    space = torch.load(default_model.checkpoint_path(), map_location="cpu", weights_only=True)["taste_space"]
    assert metrics["k"] == TasteSpace.from_state(space, space["directions"].shape[0]).chosen(24).k  # fitted in the default model's taste space
    personal = torch.load(tmp_path / "me" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert "taste_space" not in personal and personal["group_similarity"] is not None  # the crowd's space stays behind; its threshold comes along
    assert (tmp_path / "me" / "checkpoints" / "best.ckpt").stat().st_size < 1_000_000
    monkeypatch.setattr(data, "decode_image", refuse_to_decode)  # predict reads the features the personal model trained on
    summary = predict(compose_predict([f"ckpt={tmp_path}/me/checkpoints/best.ckpt", f"gallery={library}", f"output={tmp_path}/out",
                                       f"feature_cache={tmp_path}/cache"]))
    assert summary["scored"] == 24
