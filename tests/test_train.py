import csv
import json
import math
import os
import subprocess

import pytest
import torch

from beholder.core.storage import Store
from beholder.models.load import load_checkpoint
from beholder.predict.policy import Policy
from beholder.train.run import train

from conftest import PYTHON, ROOT, TINY, make_gallery, upload_folder


def tensorboard_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return set(events.Tags()["scalars"]) | set(events.Tags()["images"])


@pytest.mark.parametrize("head, extra", [("softmax", []), ("regression", ["data.score_column=beauty_mean"]), ("ordinal", [])])
def test_fast_training_run_for_each_head(tiny_cfg, tmp_path, head, extra):
    cfg = tiny_cfg(f"head={head}", *extra)
    best = train(cfg)
    run = tmp_path / "run"
    assert not math.isnan(best) and 0.0 <= best <= 1.0
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("test/f2", "test/spearman_tier", "test/gallery_reduction", "test/gallery_reduction_95", "test/accuracy"):
        assert name in metrics
    assert ("test/spearman_value" in metrics) == (head == "regression")
    tags = tensorboard_tags(run)
    assert {"val/gallery_reduction", "val/f2", "val/spearman_tier", "train/loss", "val/confusion_matrix", "val/best_scored", "val/worst_scored"} <= tags

    module = load_checkpoint(str(run / "checkpoints" / "best.ckpt"))  # the checkpoint alone rebuilds the model
    assert type(module.net.head).__name__ == {"softmax": "SoftmaxHead", "regression": "RegressionHead", "ordinal": "OrdinalHead"}[head]
    policy = Policy.calibrated(module.val_positive_scores.tolist())  # the checkpoint holds the calibration scores
    assert not math.isnan(policy.keep_at) and Policy.calibrated(module.val_positive_scores.tolist(), keep_recall=0.5).keep_at >= policy.keep_at
    assert module.net(torch.zeros(2, 3, 32, 64)).shape[0] == 2


def test_only_the_classification_head_oversamples_rare_tiers_by_default(gallery):
    """Oversampling would shift a regression's target distribution; an explicit override still wins.
    Checked on the training loader each head gets, not on the YAML."""
    from torch.utils.data import WeightedRandomSampler

    from beholder.train.cached_data import labelled_gallery

    from conftest import compose_train

    for overrides, oversampled in ((["head=softmax"], True), (["head=regression"], False), (["head=regression", "data.oversample=true"], True)):
        data = labelled_gallery(compose_train([*overrides, f"gallery={gallery}", f"labels={gallery}/labels.csv", "data.num_workers=0"]))
        data.data_config = {"input_size": (3, 32, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        data.setup()
        assert isinstance(data.train_dataloader().sampler, WeightedRandomSampler) is oversampled, overrides


def test_regression_learns_the_score_column(tmp_path):
    """Images whose brightness sets their score: a few epochs must rank them well above chance."""
    gallery = make_gallery(tmp_path / "g", count=80)
    from conftest import compose_train

    cfg = compose_train(TINY + [
        f"gallery={gallery}", f"labels={gallery}/labels.csv", f"output_dir={tmp_path}/run",
        "head=regression", "data.score_column=beauty_mean", "optimizer=adamw", "optimizer.lr=3e-3",
        "trainer.max_epochs=6", "backbone.trainable_blocks=99", "data.augment.jitter=0",
    ])
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/spearman_value"] > 0.6


def test_corrupt_images_are_skipped_and_counted(tiny_cfg, gallery, tmp_path):
    (gallery / "sub0" / "img_000.jpg").write_bytes(b"garbage")
    (gallery / "sub1" / "img_001.jpg").write_bytes((gallery / "sub1" / "img_004.jpg").read_bytes()[:200])
    train(tiny_cfg())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # both are skipped in whichever split they fell in; the training split is sampled with
    # replacement, so a file there may not be drawn — at least one is always seen
    assert 1 <= metrics["skipped_images"] <= 2


def test_resume_from_last_checkpoint(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=1"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["epoch"] == 0
    train(tiny_cfg("trainer.max_epochs=3", f"resume={last}", f"output_dir={tmp_path}/resumed"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2
    assert resumed["global_step"] == 3 * first["global_step"]


@pytest.mark.parametrize("train_norm", [True, False])
def test_frozen_batchnorm_statistics_do_not_move(tiny_cfg, tmp_path, train_norm):
    train(tiny_cfg(f"backbone.train_norm={str(train_norm).lower()}", "backbone.trainable_blocks=2"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt")).net
    frozen = set(net.frozen_norms)
    moved = {name for name, value in state.items() if name.endswith("running_mean") and value.abs().sum() > 0}
    assert moved and all(name.removeprefix("net.").removesuffix(".running_mean") not in frozen for name in moved) if train_norm else moved == set()


def test_resume_keeps_the_best_score_seen_before(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_epochs=1"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    (best_key,) = [k for k in checkpoint["callbacks"] if "'monitor': 'val/gallery_reduction'" in k]
    # the best so far: a score no later epoch can beat (every gem kept means the gallery never empties)
    state = checkpoint["callbacks"][best_key]
    state.update(best_model_score=torch.tensor(1.0), kth_value=torch.tensor(1.0), best_k_models={state["best_model_path"]: torch.tensor(1.0)})
    torch.save(checkpoint, last)
    train(tiny_cfg("trainer.max_epochs=3", f"resume={last}", f"output_dir={tmp_path}/resumed"))
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["val/gallery_reduction"] == 1.0
    assert metrics["best_checkpoint"] == str(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert not (tmp_path / "resumed" / "checkpoints" / "best.ckpt").exists()


def test_resume_last_resumes_a_run_of_this_data_and_model(tiny_cfg, tmp_path):
    from omegaconf import OmegaConf

    from beholder.core.errors import MissingInput
    from beholder.train.run import resolve_checkpoint

    cfg = tiny_cfg(f"runs_root={tmp_path}/outputs", "resume=last")
    other = tiny_cfg("labels=demo/gallery/labels.csv")
    for name, config in (("2026-11-01/mine", cfg), ("demo/2026-11-02", other), ("multirun/2026-11-03/0", other)):
        run = tmp_path / "outputs" / name
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
        os.utime(run / "checkpoints" / "last.ckpt", (len(name), len(name)))  # the others are newer
    assert resolve_checkpoint(cfg) == str(tmp_path / "outputs" / "2026-11-01" / "mine" / "checkpoints" / "last.ckpt")
    with pytest.raises(MissingInput, match="of a run with gallery=.*backbone.name=test_resnet"):
        resolve_checkpoint(tiny_cfg(f"runs_root={tmp_path}/outputs", "resume=last", "backbone.name=test_resnet"))


def test_losses_are_minimised():
    from beholder.core.errors import UserError
    from beholder.train.run import metric_mode

    assert metric_mode("val/loss", "auto") == "min" and metric_mode("val/gallery_reduction", "auto") == "max"
    assert metric_mode("val/spearman_value", "min") == "min"
    with pytest.raises(UserError, match="optimized_mode='down'"):
        metric_mode("val/loss", "down")


def test_training_from_s3_through_moto_server(s3_bucket, s3_endpoint, tmp_path):
    client, bucket = s3_bucket
    gallery = make_gallery(tmp_path / "g", count=40)
    upload_folder(client, bucket, gallery, "panocam")
    from conftest import compose_train

    cache = tmp_path / "cache"
    cfg = compose_train(TINY + [
        f"gallery=s3://{bucket}/panocam", f"labels=s3://{bucket}/panocam/labels.csv",
        f"data.endpoint_url={s3_endpoint}", f"data.cache_dir={cache}", f"output_dir={tmp_path}/run",
        "data.num_workers=2",
    ])
    train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    cached = {p.relative_to(cache / bucket / "panocam").as_posix() for p in cache.rglob("*.jpg")}
    assert len(cached) >= 30  # every image read at least once is now on local disk

    one = sorted(cached)[0]
    client.delete_object(Bucket=bucket, Key=f"panocam/{one}")  # later reads come from the cache
    assert Store(s3_endpoint, str(cache)).read(f"s3://{bucket}/panocam/{one}")[:2] == b"\xff\xd8"


def run_cli(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run([PYTHON, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_sweep_over_heads_writes_a_summary(gallery, tmp_path):
    run_cli(["-m", *TINY, "head=softmax,regression", f"gallery={gallery}", f"labels={gallery}/labels.csv",
        f"hydra.sweep.dir={tmp_path}/sweep", "trainer.max_epochs=1",
    ], cwd=tmp_path)
    with open(tmp_path / "sweep" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["overrides"].split()[0] for row in rows] == ["head=softmax", "head=regression"]
    assert all(0 <= float(row["val/gallery_reduction"]) <= 1 for row in rows)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    """Frozen norms, 51 training images on 2 ranks at batch 32: the checkpoint must hold the
    top-tier scores of the whole validation split, and no frozen BatchNorm may move. (DDP refuses
    SyncBatchNorm on CPU processes; test_model checks that the conversion keeps frozen norms frozen.)"""
    gallery = make_gallery(tmp_path / "g", count=85, split_column=True)  # 51 train, 17 val, 17 test
    refused = subprocess.run([PYTHON, str(ROOT / "train.py"), *TINY, "trainer=ddp", "trainer.accelerator=cpu", f"gallery={gallery}",
                              f"labels={gallery}/labels.csv", f"hydra.run.dir={tmp_path}/refused"],
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "trainer.sync_batchnorm=true needs GPUs" in refused.stderr
    result = run_cli(TINY + [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false", "data.batch_size=32",
        "backbone.train_norm=false",
        f"gallery={gallery}", f"labels={gallery}/labels.csv", f"hydra.run.dir={tmp_path}/run",
    ], cwd=tmp_path)
    assert "processes       2" in result.stdout
    with open(gallery / "labels.csv") as f:
        val_top = sum(1 for row in csv.DictReader(f) if row["split"] == "val" and int(row["tier"]) >= 2)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)
    assert val_top >= 2 and len(checkpoint["val_positive_scores"]) == val_top
    norms = {name: value for name, value in checkpoint["state_dict"].items() if name.endswith(("running_mean", "running_var"))}
    assert norms and all(torch.equal(v, torch.zeros_like(v) if n.endswith("mean") else torch.ones_like(v)) for n, v in norms.items())
    assert 0 <= json.loads((tmp_path / "run" / "metrics.json").read_text())["test/gallery_reduction"] <= 1


def test_training_with_extra_extractors_and_predicting_from_the_checkpoint(tiny_cfg, gallery, tmp_path):
    from beholder.models.inference import score_images

    train(tiny_cfg('backbone.extra=["test_resnet"]', "trainer.max_epochs=1"))
    module = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "best.ckpt"))
    assert len(module.net.extractors) == 1 and module.hparams.backbone["extra"] == ["test_resnet"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(value, state[f"net.extractors.0.{name}"]) for name, value in module.net.extractors[0].state_dict().items())
    scores = score_images(module, str(gallery), ["sub0/img_000.jpg", "sub1/img_001.jpg"], Store(), num_workers=0)
    assert len(scores) == 2
