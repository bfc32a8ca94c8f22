"""The feature cache, heads trained on it, multi-level features and cv=K."""

import csv
import json
import os
import subprocess

import pytest
import torch
from scipy.stats import spearmanr

from beholder.core.errors import UserError
from beholder.core.storage import Store
from beholder.models.features import cached_features
from beholder.models.inference import score_images
from beholder.models.load import load_checkpoint
from beholder.models.scorenet import ScoreNet
from beholder.predict.run import predict
from beholder.train.run import train

from conftest import PYTHON, ROOT, TINY, compose_predict, compose_train, read_scores, tiny_net

FROZEN = ["backbone.trainable_blocks=0", "backbone.levels=true", 'backbone.extra=["test_resnet"]', "head=regression",
          "data.score_column=beauty_mean", "trainer.max_epochs=4"]


def test_levels_pool_every_feature_level_of_every_network():
    torch.manual_seed(0)
    plain, levels = tiny_net(extra=["test_resnet"]), tiny_net(extra=["test_resnet"], levels=True)
    levels.backbone.load_state_dict(plain.backbone.state_dict())
    images = torch.randn(2, 3, 32, 64)
    widths = [m.num_features + sum(i["num_chs"] for i in m.feature_info) for m in (levels.backbone, *levels.extractors)]
    out = levels.features(images)
    assert out.shape == (2, sum(widths)) and levels.head.fc.in_features == sum(widths)
    # the first part of each network's block is its usual pooled output
    assert torch.allclose(out[:, : plain.backbone.num_features], plain.backbone.eval()(images), atol=1e-5)


def test_scales_average_each_networks_features_over_the_sizes_and_key_the_cache(tmp_path):
    from beholder.models.features import network_key

    torch.manual_seed(0)
    one, two = tiny_net(levels=True), tiny_net(levels=True, scales=[1.0, 1.5])
    two.load_state_dict(one.state_dict())
    assert two.data_config["input_size"] == (3, 48, 96) and two.sizes == [(48, 96), (32, 64)]
    large = torch.randn(2, 3, 48, 96)
    small = torch.nn.functional.interpolate(large, size=(32, 64), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        assert torch.allclose(two.eval().features(large), (one.eval().features(large) + one.features(small)) / 2, atol=1e-5)
    assert network_key(one, {}) != network_key(two, {})
    with pytest.raises(UserError, match=r"backbone.scales=\[1.0, 0.0\]"):
        tiny_net(scales=[1.0, 0.0])


def test_cached_features_are_the_networks_features_and_are_computed_once(gallery, tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = tiny_net(levels=True)
    images = [p.relative_to(gallery).as_posix() for p in sorted(gallery.rglob("*.jpg"))][:10]
    calls = []
    features_of = net.features
    monkeypatch.setattr(net, "features", lambda x: calls.append(len(x)) or features_of(x))
    first, skipped = cached_features(net, str(gallery), images, Store(), {}, 3, str(tmp_path / "cache"), 10**8, num_workers=0)
    assert sum(calls) == 30 and not skipped and first[images[0]].shape == (3, net.head.fc.in_features)

    # view 0 is what prediction computes from the image; view 1 its mirror image
    from beholder.data.gallery import GalleryDataset, build_transform

    picture = GalleryDataset(str(gallery), images[:1], Store(), build_transform(net.data_config, train=False))[0]["image"]
    with torch.no_grad():
        assert torch.allclose(first[images[0]][0], features_of(picture)[0], atol=1e-4)
        assert torch.allclose(first[images[0]][1], features_of(picture.flip(-1))[0], atol=1e-4)

    calls.clear()
    again, _ = cached_features(net, str(gallery), images, Store(), {}, 3, str(tmp_path / "cache"), 10**8, num_workers=0)
    assert calls == [] and all(torch.equal(first[i], again[i]) for i in images)

    (gallery / images[0]).write_bytes((gallery / images[1]).read_bytes())  # new content: computed anew
    changed, _ = cached_features(net, str(gallery), images[:1], Store(), {}, 3, str(tmp_path / "cache"), 10**8, num_workers=0)
    assert torch.equal(changed[images[0]], first[images[1]])
    assert calls == []  # ... from the cache: the content is that of images[1]

    with torch.no_grad():
        net.backbone.conv_stem.weight.mul_(2)  # other weights: another key, nothing reused
    cached_features(net, str(gallery), images[:2], Store(), {}, 3, str(tmp_path / "cache"), 10**8, num_workers=0)
    assert sum(calls) == 6


def test_a_trainable_backbone_is_refused_by_the_cache(gallery, tmp_path):
    net = ScoreNet({"name": "test_efficientnet", "pretrained": False}, {"_target_": "beholder.models.heads.RegressionHead"}, [32, 64])
    with pytest.raises(UserError, match="trainable_blocks=0"):
        cached_features(net, str(gallery), ["sub0/img_000.jpg"], Store(), {}, 1, str(tmp_path), 10**8)


def run_overrides(gallery, tmp_path, *extra):
    return TINY + [f"gallery={gallery}", f"labels={gallery}/labels.csv", f"output_dir={tmp_path}/run",
                   f"feature_cache={tmp_path}/cache", *FROZEN, *extra]


def test_a_head_on_cached_features_scores_as_the_checkpoint_does_on_images(gallery, tmp_path):
    train(compose_train(run_overrides(gallery, tmp_path)))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    module = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "best.ckpt"))
    assert module.net.feature_std.min() > 0 and not torch.equal(module.net.feature_mean, torch.zeros_like(module.net.feature_mean))
    with open(gallery / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    from beholder.data.labels import parse_labels, split_labels

    test = split_labels(parse_labels((gallery / "labels.csv").read_text(), "labels.csv", "beauty_mean"), 0)["test"]
    scores = score_images(module, str(gallery), [lb.image for lb in test], Store(), num_workers=0)
    value = {r["image"]: float(r["beauty_mean"]) for r in rows}
    rho = spearmanr([scores[lb.image][0] for lb in test], [value[lb.image] for lb in test]).statistic
    assert rho == pytest.approx(metrics["test/spearman_value"], abs=1e-4)  # the same model, from images


def test_folded_norms_give_the_same_scores_and_share_the_feature_cache(gallery, tmp_path, capsys):
    """fold_norms=true (predict's default) computes the same features with fewer passes: the same
    decisions, and features cached unfolded are found folded (the cache's key is the networks' as trained)."""
    train(compose_train(run_overrides(gallery, tmp_path)))
    args = [f"ckpt={tmp_path}/run/checkpoints/best.ckpt", f"gallery={gallery}", f"feature_cache={tmp_path}/predicted"]
    plain = predict(compose_predict(args + [f"output={tmp_path}/plain"]))
    cached = predict(compose_predict(args + [f"output={tmp_path}/cached", "fold_norms=true"]))
    assert plain["from_cache"] is None and cached["from_cache"]["photos"] == cached["scored"] == 60
    capsys.readouterr()
    folded = predict(compose_predict(args + [f"output={tmp_path}/folded", "fold_norms=true", "feature_cache=null"]))
    assert plain["computed_in"]["folded_norms"] is None and folded["computed_in"]["folded_norms"] > 10  # test_efficientnet's and test_resnet's
    assert f"computed in     fp32, channels_last, {folded['computed_in']['folded_norms']} batch norms folded" in capsys.readouterr().out
    a, b = ({r["image"]: r for r in read_scores(tmp_path / name / "scores.csv")} for name in ("plain", "folded"))
    assert max(abs(float(a[k]["score"]) - float(b[k]["score"])) for k in a) < 1e-3
    assert all(a[k]["band"] == b[k]["band"] for k in a)


@pytest.mark.slow
def test_cv_ships_one_averaged_checkpoint_calibrated_on_every_labelled_top_tier_photo(gallery, tmp_path):
    overrides = run_overrides(gallery, tmp_path, "cv=3")
    best = train(compose_train(overrides))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val/gallery_reduction"] == best and "test/spearman_value" in metrics
    from beholder.data.labels import parse_labels, split_labels

    splits = split_labels(parse_labels((gallery / "labels.csv").read_text(), "labels.csv", "beauty_mean"), 0)
    top = [lb for lb in splits["train"] + splits["val"] if lb.tier >= 2]
    module = load_checkpoint(str(run / "checkpoints" / "best.ckpt"))
    assert len(module.val_positive_scores) == len(top) > len([lb for lb in splits["val"] if lb.tier >= 2])
    assert sorted((run / "tensorboard").iterdir()) and {"fold0", "fold1", "fold2"} <= {p.name for p in (run / "tensorboard").iterdir()}
    out = subprocess.run([PYTHON, "predict.py", f"ckpt={run}/checkpoints/best.ckpt", f"gallery={gallery}", f"output={tmp_path}/out",
                          "num_workers=0", "trainer.enable_progress_bar=false"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"of the {len(top)} calibration photos (tier >= 2, scored out of training)" in out.stdout and (tmp_path / "out" / "scores.csv").exists()


@pytest.mark.parametrize("extra, message", [
    (["cv=3", "feature_cache=null"], "cv=3 trains heads on cached features"),
    (["cv=1"], "cv=1: give K >= 2"),
    (["backbone.trainable_blocks=2"], "trainable_blocks=0"),
])
def test_cv_and_cache_options_that_cannot_work_are_refused(gallery, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        train(compose_train(run_overrides(gallery, tmp_path, *extra)))


def test_the_best_preset_is_a_cached_cross_validated_frozen_ensemble_and_the_demo_uses_it(tmp_path):
    for experiment in ("best", "demo"):
        cfg = compose_train([f"experiment={experiment}", "gallery=.", "labels=x.csv", f"output_dir={tmp_path}"])
        assert cfg.backbone.trainable_blocks == 0 and cfg.backbone.levels and len(cfg.backbone.extra) == 2
        assert cfg.cv == 5 and cfg.feature_cache == os.path.join(os.environ["XDG_CACHE_HOME"], "beholder", "features")  # the user's own
    assert compose_train(["gallery=.", "labels=x.csv", f"output_dir={tmp_path}"]).backbone.name == "legacy_xception"


def test_batch_norms_fold_into_their_convolutions_or_the_network_is_left_as_it_was(monkeypatch):
    from torch import nn

    from beholder.models import fusion

    net = tiny_net().eval()
    for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):  # statistics a trained network has
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    sample = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        before = net.features(sample)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]

    monkeypatch.setattr(fusion, "fuse_conv_bn_eval", lambda conv, norm: conv)  # a wrong fold: the norm's scale lost
    assert fusion.fold_batch_norms(net, sample, net.features) == fusion.Folded(0, False)
    assert [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == norms
    monkeypatch.undo()

    folded = fusion.fold_batch_norms(net, sample, net.features)
    assert folded.kept and folded.folded == len(norms) - sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0
    with torch.no_grad():
        assert torch.allclose(net.features(sample), before, rtol=1e-4, atol=1e-5)
