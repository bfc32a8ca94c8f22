import csv
import json
import math
import os
import subprocess

import pytest
import torch

from beholder.module import load_checkpoint
from beholder.storage import Store
from beholder.train import train

from conftest import PYTHON, ROOT, TINY, make_gallery, upload_folder


def tensorboard_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    return set(events.Tags()["scalars"]) | set(events.Tags()["images"])


@pytest.mark.parametrize("head, extra", [("softmax", []), ("regression", ["data.score_column=beauty_mean"])])
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
    assert type(module.net.head).__name__ == {"softmax": "SoftmaxHead", "regression": "RegressionHead"}[head]
    assert not math.isnan(module.keep_threshold(1.0))
    assert module.keep_threshold(0.5) >= module.keep_threshold(1.0)
    assert module.net(torch.zeros(2, 3, 32, 64)).shape[0] == 2


def test_only_the_classification_head_oversamples_rare_tiers_by_default():
    """Oversampling would shift a regression's target distribution; an explicit override still wins."""
    from conftest import compose_train

    assert compose_train(["head=softmax"]).data.oversample is True
    assert compose_train(["head=regression"]).data.oversample is False
    assert compose_train(["head=regression", "data.oversample=true"]).data.oversample is True


def test_regression_learns_the_score_column(tmp_path):
    """Images whose brightness sets their score: a few epochs must rank them well above chance."""
    gallery = make_gallery(tmp_path / "g", count=80)
    from conftest import compose_train

    cfg = compose_train(TINY + [
        f"data.root={gallery}", f"data.labels={gallery}/labels.csv", f"output_dir={tmp_path}/run",
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
    train(tiny_cfg("trainer.max_epochs=3", f"ckpt_path={last}", f"output_dir={tmp_path}/resumed"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2
    assert resumed["global_step"] == 3 * first["global_step"]


def test_training_from_s3_through_moto_server(s3_bucket, s3_endpoint, tmp_path):
    client, bucket = s3_bucket
    gallery = make_gallery(tmp_path / "g", count=40)
    upload_folder(client, bucket, gallery, "panocam")
    from conftest import compose_train

    cache = tmp_path / "cache"
    cfg = compose_train(TINY + [
        f"data.root=s3://{bucket}/panocam", f"data.labels=s3://{bucket}/panocam/labels.csv",
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


def test_sweep_over_heads_writes_a_summary(gallery, tmp_path):
    run_cli(["-m", *TINY, "head=softmax,regression", f"data.root={gallery}", f"data.labels={gallery}/labels.csv",
        f"hydra.sweep.dir={tmp_path}/sweep", "trainer.max_epochs=1",
    ], cwd=tmp_path)
    with open(tmp_path / "sweep" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["overrides"].split()[0] for row in rows] == ["head=softmax", "head=regression"]
    assert all(0 <= float(row["val/gallery_reduction"]) <= 1 for row in rows)


def test_ddp_with_two_cpu_processes(gallery, tmp_path):
    result = run_cli(TINY + [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false",
        f"data.root={gallery}", f"data.labels={gallery}/labels.csv", f"hydra.run.dir={tmp_path}/run",
    ], cwd=tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    assert "world_size: 2" in result.stdout + result.stderr or "distributed_backend=gloo" in result.stdout + result.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/gallery_reduction"] >= 0
