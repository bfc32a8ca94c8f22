"""Speed, as ratios of things measured side by side in one run (these machines are noisy).

For legacy_xception (random weights) at 299x299 and at the native panorama size 237x1820:
  loader/step     images/s of the training DataLoader alone (decode + augment; local folder and S3
                  through moto's server on 127.0.0.1) against images/s of the training step alone
                  on preloaded tensors, same batch and size: above 1, the pipeline is not the limit
  predict/forward predict.py end to end (files in, scores.csv out) against the bare forward pass
                  on preloaded tensors: the target is >= 0.9
and for predict.py over 100, 1,000 and 10,000 images (duplicated files): wall time, images/s and
peak resident memory (main process and its loader workers), which should grow linearly and stay
flat. Results replace the "throughput" section of bench/RESULTS.md.

    python bench/throughput.py                  # about 6 minutes on 2 CPU cores
    python bench/throughput.py --quick          # smaller counts, to check it runs
    python bench/throughput.py --only technical # the default model with the technical checks off and on,
                                                # real photos and 24-MP JPEGs ("throughput-technical")
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beholder.core.memory import keep_freed_memory  # noqa: E402
from beholder.core.storage import Store  # noqa: E402
from beholder.data.gallery import GalleryDataset, build_transform, collate, list_gallery  # noqa: E402
from beholder.models import checkpoint  # noqa: E402
from beholder.models.module import BeholderModule  # noqa: E402
from bench.common import REPO, SHARED, local_s3, markdown_table, publish  # noqa: E402

SIZES = {"299x299": [299, 299], "237x1820": [237, 1820]}
HEAD = {"_target_": "beholder.models.heads.SoftmaxHead"}
OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-4, "momentum": 0.9}


def make_module(backbone, size):
    return BeholderModule({"name": backbone, "pretrained": False, "trainable_blocks": 4}, HEAD, OPTIMIZER, size)


def save_checkpoint(module, path):
    """What load_checkpoint needs: weights, hyperparameters, the format (no validation scores:
    predict then needs threshold=)."""
    checkpoint.write(path, module)


def loader_rate(root, images, store, data_config, batch, batches, workers=2):
    dataset = GalleryDataset(root, images, store, build_transform(data_config, train=True))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate, sampler=sampler)
    it = iter(loader)
    next(it)  # workers started
    started, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(it)["image"])
    return seen / (time.perf_counter() - started)


def train_step_rate(module, size, batch, steps):
    optimizer = module.configure_optimizers()
    module.train()
    images, batch_data = torch.randn(batch, 3, *size), {"tier": torch.randint(0, 4, (batch,))}

    def step():
        loss = module.net.head.loss(module.net(images), batch_data)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), 0.5)
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


@torch.no_grad()
def forward_rate(module, size, batch, batches):
    module.eval()
    images = torch.randn(batch, 3, *size)
    module.net(images)
    started = time.perf_counter()
    for _ in range(batches):
        module.net(images)
    return batch * batches / (time.perf_counter() - started)


def fill_gallery(source_files, folder, count):
    """``count`` files under ``folder``, cycling through ``source_files`` (hard links: no disk cost)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        src = source_files[i % len(source_files)]
        dst = os.path.join(folder, f"{i // 1000:03d}", f"{i:06d}{os.path.splitext(src)[1]}")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy(src, dst)
    return folder


PREDICT_RUNNER = """
import json, resource, sys, time
from hydra import compose, initialize_config_dir
from beholder.predict.run import predict
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="predict", overrides=sys.argv[2:])
started = time.perf_counter()
summary = predict(cfg)
wall = time.perf_counter() - started
print("RESULT " + json.dumps({"wall": wall, "ips": summary["images_per_second"], "scored": summary["scored"],
    "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_predict(ckpt, gallery, output, batch, extra=()):
    overrides = [f"ckpt={ckpt}", f"gallery={gallery}", f"output={output}", f"batch_size={batch}", "num_workers=2",
                 "threshold=0.5", "trainer.enable_progress_bar=false", "highlights=4", *extra]
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", PREDICT_RUNNER, os.path.join(REPO, "conf"), *overrides], capture_output=True, text=True, env=env)
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    if result.returncode or not line:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(line[0][len("RESULT "):])


def big_jpegs(sources: list[str], folder: str, count: int, size=(6000, 4000)) -> str:
    """``count`` 24-MP JPEGs made by upscaling real photos (a camera's full-size files to decode)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as picture:
            picture.convert("RGB").resize(size, Image.LANCZOS).save(os.path.join(folder, f"big_{i:03d}.jpg"), quality=90)
    return folder


def technical_rows(work: str, quick: bool) -> tuple[list[list], list[list]]:
    """The default model's predict with the technical checks and without, in one run on the same
    photos (real ones, and 24-MP JPEGs), and its own path against a bare forward of its networks."""
    from beholder import default_model
    from beholder.models.load import load_checkpoint

    ckpt = default_model.checkpoint_path()
    photos = os.path.join(SHARED, "photos")
    sources = [os.path.join(photos, name) for name in list_gallery(Store(), photos)]
    galleries = {"real photos (shared/data/photos, 256-1024 px)": fill_gallery(sources[: 24 if quick else 96], os.path.join(work, "real"),
                                                                              24 if quick else 96),
                 "24-MP JPEGs (6000x4000, upscaled real photos)": big_jpegs(sources, os.path.join(work, "big"), 6 if quick else 24)}
    rows = []
    for label, gallery in galleries.items():
        rates = {"off": [], "default": []}
        for round_ in range(2):  # off, on, off, on: a drift of the machine falls on both
            for checks in rates:
                result = run_predict(ckpt, gallery, os.path.join(work, f"out-{checks}-{len(rows)}-{round_}"), 16,
                                     ["feature_cache=null", f"technical={checks}"])
                rates[checks].append(result["ips"])
        off, on = (float(np.median(rates[checks])) for checks in rates)
        rows.append([label, f"{off:.2f} ({', '.join(f'{r:.2f}' for r in rates['off'])})", f"{on:.2f} ({', '.join(f'{r:.2f}' for r in rates['default'])})",
                     f"**{on / off:.2f}**"])
        print(rows[-1], flush=True)
    module = load_checkpoint(ckpt)
    size = list(module.net.data_config["input_size"][1:])
    forward = forward_rate(module, size, 16, 2 if quick else 6)
    plain = float(rows[0][1].split()[0])
    path = [[f"default model ({len(module.net.extractors) + 1} frozen networks, sizes {[list(s) for s in module.net.sizes]})",
             f"{plain:.2f}", f"{forward:.2f}", f"**{plain / forward:.2f}**"]]
    return rows, path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--only", choices=["technical"], help="run only this experiment (and publish only its section)")
    args = parser.parse_args()
    torch.manual_seed(0)
    keep_freed_memory()  # as train() and predict() do: the step and forward rates are the best this CPU gives
    work = tempfile.mkdtemp(prefix="beholder-throughput-")
    if args.only == "technical":
        rows, path = technical_rows(work, args.quick)
        body = ("`beholder predict` with the default model (`feature_cache=null`, batch 16, 2 loader workers), the technical "
                "checks off and on, alternately twice on the same photos, medians (each run's rate in brackets; target: on >= 0.85 x "
                "off). With them on, each "
                "photo is decoded once at a JPEG scale whose long side is at least 1,024 px, for both:\n\n"
                + markdown_table(["photos", "images/s, checks off", "images/s, checks on", "on / off"], rows)
                + "\n\nThe default model's own path: `beholder predict` (checks off, the real photos above) against a bare "
                "forward of the same networks on preloaded tensors of its input size, batch 16:\n\n"
                + markdown_table(["model", "predict images/s", "bare forward images/s", "predict / forward"], path))
        publish("throughput-technical", "Throughput with the technical checks (bench/throughput.py --only technical)", body,
                write=not args.no_write)
        shutil.rmtree(work, ignore_errors=True)
        return
    photos = os.path.join(SHARED, "photos")
    panoramas = os.path.join(SHARED, "needle", "panoramas")
    store = Store()

    with local_s3("bench") as (endpoint, s3):
        rows = []
        for label, size in SIZES.items():
            source = photos if size[0] == size[1] else panoramas
            images = list_gallery(store, source)
            for name in images:
                s3.upload_file(os.path.join(source, name), "bench", f"{label}/{name}")
            module = make_module("legacy_xception", size)
            batch = 8 if size[0] == size[1] else 4
            n = 2 if args.quick else 6
            local = loader_rate(source, images, store, module.net.data_config, batch, n * 2)
            remote = loader_rate(f"s3://bench/{label}", images, Store(endpoint), module.net.data_config, batch, n * 2)
            step = train_step_rate(module, size, batch, n)
            forward = forward_rate(module, size, batch, n)
            ckpt = os.path.join(work, f"xception-{label}.ckpt")
            save_checkpoint(module, ckpt)
            count = (4 if args.quick else 16) * batch
            gallery = fill_gallery([os.path.join(source, i) for i in images], os.path.join(work, f"gallery-{label}"), count)
            end_to_end = run_predict(ckpt, gallery, os.path.join(work, f"out-{label}"), batch)
            rows.append([f"legacy_xception {label}", batch, f"{local:.1f}", f"{remote:.1f}", f"{step:.2f}", f"**{local / step:.1f}** / **{remote / step:.1f}**",
                         f"{end_to_end['ips']:.2f}", f"{forward:.2f}", f"**{end_to_end['ips'] / forward:.2f}**"])
            print(rows[-1], flush=True)

    # Scaling: a cheap backbone, so that 10,000 images fit in minutes on a CPU; what grows here is the pipeline.
    scale_rows = []
    module = make_module("efficientnet_lite0", [224, 224])
    ckpt = os.path.join(work, "lite0.ckpt")
    save_checkpoint(module, ckpt)
    sources = [os.path.join(photos, i) for i in list_gallery(store, photos)]
    counts = [50, 200, 800] if args.quick else [100, 1000, 10000]
    base = None
    for count in counts:
        gallery = fill_gallery(sources, os.path.join(work, f"scale-{count}"), count)
        result = run_predict(ckpt, gallery, os.path.join(work, f"scale-out-{count}"), 32)
        base = base or result["wall"] / count
        scale_rows.append([count, f"{result['wall']:.1f}", f"{count / result['wall']:.1f}", f"{result['wall'] / count / base:.2f}",
                           f"{result['rss_main_mb']:.0f}", f"{result['rss_workers_mb']:.0f}"])
        print(scale_rows[-1], flush=True)

    body = (
        "Each ratio divides two rates measured in the same run on the same machine. legacy_xception with "
        "random weights (top 4 groups trainable), the evaluation/training transforms of beholder, 2 loader "
        "workers. Photos: `shared/data/photos` (182 PNG/JPEG, 256-1024 px) for 299x299; `shared/data/needle/panoramas` "
        "for 237x1820. S3: moto's server on 127.0.0.1.\n\n"
        + markdown_table(
            ["model, input", "batch", "loader local img/s", "loader S3 img/s", "train step img/s", "loader/step local / S3",
             "predict.py img/s", "bare forward img/s", "predict/forward"],
            rows,
        )
        + "\n\nScaling of `predict.py` (efficientnet_lite0 at 224x224, random weights, batch 32, 2 workers; files "
        "duplicated from `shared/data/photos`). Time per image relative to the smallest run: 1.00 = linear. Peak "
        "RSS: main process, and the largest loader worker.\n\n"
        + markdown_table(["images", "wall s", "images/s", "time/image vs first", "peak RSS main MB", "peak RSS worker MB"], scale_rows)
    )
    publish("throughput", "Throughput (bench/throughput.py)", body, write=not args.no_write)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
