"""Fault experiments, longer than the tests: inject faults, count retries, resumes and losses.

  s3        predict over a gallery on S3 (moto's server behind bench/fault_proxy.py) with throttling,
            downloads cut off mid-way and a 3 s outage, against a clean run: images lost, faults
            injected, time overhead
  kill      kill -9 of predict.py at three points of a gallery, then one rerun: images lost or doubled
  train     kill -9 of train.py mid-epoch, then ckpt_path=last: epoch and step it resumed at
  bad       a gallery seeded with broken and odd files: skipped, scored, peak memory
Results replace the "faults" section of bench/RESULTS.md.

    python bench/faults.py          # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, SHARED, local_s3, markdown_table, publish  # noqa: E402
from bench.fault_proxy import FaultProxy  # noqa: E402
from bench.throughput import fill_gallery, make_module, save_checkpoint  # noqa: E402
from beholder.demo import make_gallery  # noqa: E402

PYTHON = sys.executable
FAST = ["batch_size=8", "num_workers=2", "threshold=0.5", "trainer.enable_progress_bar=false", "highlights=4"]


def predict_cli(args, **kwargs):
    return subprocess.run([PYTHON, os.path.join(REPO, "predict.py"), *FAST, *args], env={**env(), **kwargs.pop("env", {})},
                          capture_output=True, text=True, **kwargs)


def env():
    """The environment for child processes, read when they start (the S3 experiment sets credentials)."""
    return {**os.environ, "PYTHONPATH": REPO}


def scores_of(path):
    with open(path) as f:
        return [row["image"] for row in csv.DictReader(f)]


def wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.05)


def s3_experiment(work, ckpt, photos):
    with local_s3("faults") as (endpoint, s3):
        names = sorted(os.listdir(photos))[:120]
        for name in names:
            s3.upload_file(os.path.join(photos, name), "faults", f"gallery/{name}")
        rows = []
        for label, settings in (("clean", {}), ("faulty", {"throttle_every": 6, "drop_every": 9, "outage_after": (80, 3.0)})):
            proxy = FaultProxy(endpoint).start()
            for key, value in settings.items():
                setattr(proxy, key, value)
            started = time.perf_counter()
            result = predict_cli([f"ckpt_path={ckpt}", "gallery=s3://faults/gallery", f"output=s3://faults/out-{label}",
                                  f"endpoint_url={proxy.url}", f"hydra.run.dir={work}/h-{label}"], env={"HOME": work})
            seconds = time.perf_counter() - started
            proxy.stop()
            if result.returncode:
                print(result.stderr[-2000:], file=sys.stderr)
            body = s3.get_object(Bucket="faults", Key=f"out-{label}/scores.csv")["Body"].read().decode() if result.returncode == 0 else ""
            scored = max(len(body.strip().splitlines()) - 1, 0)
            c = proxy.counts
            rows.append([label, len(names), scored, len(names) - scored, c["requests"], c["throttled"], c["dropped"],
                         c["refused"], f"{seconds:.1f}"])
    return rows


def kill_experiment(work, ckpt, photos, points=(0.2, 0.5, 0.8), count=400):
    gallery = fill_gallery([os.path.join(photos, n) for n in sorted(os.listdir(photos))], os.path.join(work, "kill-gallery"), count)
    output = os.path.join(work, "kill-out")
    shard = os.path.join(output, ".beholder-partial", "scores-rank0.csv")
    args = [PYTHON, os.path.join(REPO, "predict.py"), *FAST, f"ckpt_path={ckpt}", f"gallery={gallery}", f"output={output}",
            f"hydra.run.dir={work}/h-kill"]
    rows = []
    for point in points:
        process = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(shard) and sum(1 for _ in open(shard)) - 1 >= point * count)
        time.sleep(random.Random(point).random() * 0.5)  # land anywhere inside a batch
        process.send_signal(signal.SIGKILL)
        process.wait()
        rows.append(sum(1 for _ in open(shard)) - 1)
    rerun = subprocess.run(args, env=env(), capture_output=True, text=True)
    images = scores_of(os.path.join(output, "scores.csv")) if rerun.returncode == 0 else []
    return [[", ".join(f"{int(p * 100)} %" for p in points), count, " / ".join(map(str, rows)), len(images),
             count - len(set(images)), len(images) - len(set(images))]]


def train_experiment(work):
    gallery = os.path.join(work, "panoramas")
    make_gallery(gallery, count=120, seed=3, height=60, width=460)
    common = [os.path.join(REPO, "train.py"), "backbone=efficientnet_lite0", f"data.root={gallery}", f"data.labels={gallery}/labels.csv",
              "data.image_size=[48,368]", "data.batch_size=16", "trainer.enable_progress_bar=false", f"runs_root={work}/runs"]
    process = subprocess.Popen([PYTHON, *common, "trainer.max_epochs=50", f"hydra.run.dir={work}/runs/a"], env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(work, "runs", "a", "checkpoints", "last.ckpt")
    wait_for(lambda: os.path.exists(last) and torch.load(last, weights_only=True)["epoch"] >= 1)
    time.sleep(1.5)  # mid-epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(last, weights_only=True)
    result = subprocess.run([PYTHON, *common, f"trainer.max_epochs={saved['epoch'] + 2}", "ckpt_path=last",
                             f"hydra.run.dir={work}/runs/b"], env=env(), capture_output=True, text=True)
    final = torch.load(os.path.join(work, "runs", "b", "checkpoints", "last.ckpt"), weights_only=True) if result.returncode == 0 else {}
    per_epoch = saved["global_step"] // (saved["epoch"] + 1)
    return [[saved["epoch"], saved["global_step"], "yes" if result.returncode == 0 else "no", final.get("epoch"),
             final.get("global_step"), saved["global_step"] + per_epoch]]


def bad_files_experiment(work, ckpt, photos):
    from PIL import Image

    from tests.test_data import encode, png_declaring  # the same broken files the tests use

    gallery = os.path.join(work, "bad")
    os.makedirs(gallery)
    picture = Image.open(os.path.join(photos, sorted(os.listdir(photos))[0])).convert("RGB")
    files = {
        "truncated.jpg": encode(picture, "JPEG")[:500], "empty.jpg": b"", "text.jpg": b"not a picture",
        "bomb.png": png_declaring(30000, 30000), "cmyk.jpg": encode(picture.convert("CMYK"), "JPEG"),
        "gray.png": encode(picture.convert("L")), "palette.png": encode(picture.convert("P")), "plain.jpg": encode(picture, "JPEG"),
    }
    for name, data in files.items():
        with open(os.path.join(gallery, name), "wb") as f:
            f.write(data)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = predict_cli([f"ckpt_path={ckpt}", f"gallery={gallery}", f"output={work}/bad-out", f"hydra.run.dir={work}/h-bad"])
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    skipped = scores_of(os.path.join(work, "bad-out", "skipped.csv")) if result.returncode == 0 else []
    scored = scores_of(os.path.join(work, "bad-out", "scores.csv")) if result.returncode == 0 else []
    return [[len(files), len(scored), len(skipped), ", ".join(sorted(skipped)), "0" if result.returncode == 0 else "crash", f"{peak:.0f}"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="beholder-faults-")
    photos = os.path.join(SHARED, "photos")
    ckpt = os.path.join(work, "lite0.ckpt")
    save_checkpoint(make_module("efficientnet_lite0", [224, 224]), ckpt)

    s3_rows = s3_experiment(work, ckpt, photos)
    print(s3_rows, flush=True)
    kill_rows = kill_experiment(work, ckpt, photos)
    print(kill_rows, flush=True)
    train_rows = train_experiment(work)
    print(train_rows, flush=True)
    bad_rows = bad_files_experiment(work, ckpt, photos)
    print(bad_rows, flush=True)

    body = "\n\n".join([
        "S3 faults during `predict.py` (120 photos on moto's S3 behind the fault proxy: every 6th request 503 SlowDown, "
        "every 9th object download cut off half-way, and a 3 s outage after request 80):\n\n"
        + markdown_table(["run", "images", "scored", "lost", "requests", "503 SlowDown", "cut-off downloads", "refused (outage)", "seconds"], s3_rows),
        "`kill -9` of `predict.py` at three points of one gallery, then one plain rerun:\n\n"
        + markdown_table(["killed at", "images", "scored before each kill", "in final scores.csv", "lost", "doubled"], kill_rows),
        "`kill -9` of `train.py` mid-epoch (efficientnet_lite0 on 120 demo panoramas), then `ckpt_path=last`:\n\n"
        + markdown_table(["last.ckpt epoch", "its global step", "resumed", "final epoch", "final global step", "expected final step"], train_rows),
        "A gallery of broken and odd files (truncated, empty, text named .jpg, a PNG declaring 30,000x30,000, CMYK, grayscale, palette):\n\n"
        + markdown_table(["files", "scored", "skipped", "skipped files", "crashes", "peak RSS of a predict process MB"], bad_rows),
    ])
    publish("faults", "Faults (bench/faults.py)", body, write=not args.no_write)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
