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
    python bench/throughput.py --only default   # the default model as shipped: each engine and precision of its
                                                # frozen networks, and predict fp32 against precision=auto
                                                # ("throughput-default", about 20 minutes)
    python bench/throughput.py --only scale     # the default model over 1,000, 4,000 and 10,000 photos: time per
                                                # image and peak memory ("throughput-scale", about 30 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
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
from beholder.models.fusion import fold_batch_norms  # noqa: E402
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
from beholder.core.entry import compose_config
from beholder.core.memory import keep_freed_memory
from beholder.predict.run import predict
keep_freed_memory()  # as beholder predict does
cfg = compose_config("predict", sys.argv[1:])
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
    result = subprocess.run([sys.executable, "-c", PREDICT_RUNNER, *overrides], capture_output=True, text=True, env=env)
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


def technical_rows(work: str, quick: bool) -> list[list]:
    """The default model's predict with the technical checks and without, in one run on the same
    photos (real ones, and 24-MP JPEGs). Its path against a bare forward of its networks, in the
    same precision: :func:`default_rows`."""
    from beholder import default_model

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
    return rows


ENGINES = ("eager fp32", "eager fp32 + channels_last", "eager fp32 + channels_last + folded norms", "eager bf16 + channels_last",
           "eager bf16 + channels_last + folded norms", "torch.compile bf16 + channels_last", "ONNX Runtime fp32", "OpenVINO fp32",
           "OpenVINO bf16")
SHIPPED_BEFORE = ["precision=fp32", "channels_last=false", "fold_norms=false"]  # predict's engine as shipped before issue 34


def engine(name: str, net, sample: torch.Tensor, work: str, rest: int):
    """``name``'s forward of ``net.features`` (a frozen default path) as images -> features, and its
    setup seconds (an export, a compile: torch.compile compiles again for each batch size, so for the
    last batch's ``rest`` too); None where the engine is not installed."""
    import copy

    started = time.perf_counter()
    features = FeaturePath(copy.deepcopy(net)).eval()
    if "folded norms" in name:
        fold_batch_norms(features, sample[:2])
    channels_last = "channels_last" in name
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    if name.startswith(("eager", "torch.compile")):
        run = torch.compile(features) if name.startswith("torch.compile") else features
        bf16 = "bf16" in name

        def forward(images):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return run(images.contiguous(memory_format=torch.channels_last) if channels_last else images).float()
        forward(sample)  # torch.compile compiles here, and for a last batch of another size
        forward(sample[:rest] if rest else sample)
        return forward, time.perf_counter() - started
    if name.startswith("ONNX"):
        try:
            import onnxruntime
        except ModuleNotFoundError:
            return None, None
        path = os.path.join(work, "features.onnx")
        torch.onnx.export(features, (sample,), path, input_names=["images"], dynamic_axes={"images": {0: "batch"}}, dynamo=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return (lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])), time.perf_counter() - started
    try:
        import openvino
    except ModuleNotFoundError:
        return None, None
    model = openvino.Core().compile_model(openvino.convert_model(features, example_input=sample), "CPU",
                                          {"INFERENCE_PRECISION_HINT": "bf16" if "bf16" in name else "f32"})
    return (lambda images: torch.from_numpy(model(images.numpy())[0])), time.perf_counter() - started


class FeaturePath(torch.nn.Module):
    """A ScoreNet's frozen networks as one module (what an exporter takes)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net.features(images)


def decoded_photos(module, root: str) -> torch.Tensor:
    """Every photo of ``root`` decoded once, as predict's loader gives them (evaluation transform)."""
    images = list_gallery(Store(), root)
    dataset = GalleryDataset(root, images, Store(), build_transform(module.net.data_config, train=False))
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.cat([s["image"] for s in samples if "image" in s and len(s["image"]) == 1])  # a panorama's tiles left out


def agreement(reference: np.ndarray, scores: np.ndarray, policy) -> tuple[float, float]:
    """Spearman of ``scores`` with ``reference``, and the share of keep / review / reject bands that differ."""
    from scipy.stats import spearmanr

    bands = [(policy.band(a, 0), policy.band(b, 0)) for a, b in zip(reference, scores)]
    return float(spearmanr(reference, scores)[0]), sum(a != b for a, b in bands) / len(bands)


def peak_gflops(dtype) -> float:
    """What these cores do at their best: a 2048 x 2048 matrix product, GFLOP/s."""
    a = torch.randn(2048, 2048).to(dtype)
    a @ a
    started = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - started) / 1e9


def mixed_formats(sources: list[str], folder: str, count: int) -> str:
    """Half HEIC, half camera RAW (real DNGs, the tests' PiDNG writer), from real photos at 12 MP."""
    import pillow_heif
    from PIL import Image

    from tests.raw_files import dng_bytes

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as picture:
            rgb = picture.convert("RGB").resize((4000, 3000), Image.LANCZOS)
        if i % 2:
            pillow_heif.from_pillow(rgb).save(os.path.join(folder, f"mixed_{i:03d}.heic"), quality=90)
        else:
            scratch = tempfile.mkdtemp()
            with open(os.path.join(folder, f"mixed_{i:03d}.dng"), "wb") as f:
                f.write(dng_bytes(pathlib.Path(scratch), np.asarray(rgb, dtype=np.float32) / 255))
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def scores_of(output: str) -> dict[str, dict]:
    from beholder.data.scores import read_scored

    return {row["image"]: row for row in read_scored(Store(), output)}


def default_rows(work: str, quick: bool) -> str:
    """The default model as shipped: its frozen path under each engine and precision (bare forward on
    decoded real photos), and predict end to end at fp32 against precision=auto, on real photos,
    24-MP JPEGs and a RAW/HEIC mix, with the scores' agreement."""
    from torch.utils.flop_counter import FlopCounterMode

    from beholder import default_model
    from beholder.core.hardware import native_bf16
    from beholder.models.load import load_checkpoint
    from beholder.predict.policy import Policy

    module = load_checkpoint(default_model.checkpoint_path()).eval()
    photos = os.path.join(SHARED, "photos")
    decoded = decoded_photos(module, photos)[: 32 if quick else None]
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        module.net.features(decoded[:1])
    gflop = flops.get_total_flops() / 1e9
    peaks = {"fp32": peak_gflops(torch.float32), "bf16": peak_gflops(torch.bfloat16)}
    policy = Policy.calibrated(module.val_positive_scores.tolist(), 1.0, 0.95, 0.9, tiers=module.calibration_photos)
    head = lambda features: module.net.head.score(module.net.head(module.net.standardise(features.float()))).detach().numpy()  # noqa: E731
    engines, reference = [], None
    for name in ENGINES:
        forward, setup = engine(name, module.net, decoded[:16], work, len(decoded) % 16)
        if forward is None:
            engines.append([name, "not installed", "", "", "", ""])
            continue
        started, parts = time.perf_counter(), []
        for batch in decoded.split(16):
            parts.append(forward(batch))
        rate = len(decoded) / (time.perf_counter() - started)
        scores = head(torch.cat(parts))
        reference = scores if reference is None else reference
        spearman, changed = agreement(reference, scores, policy)
        peak = peaks["bf16" if "bf16" in name else "fp32"]
        engines.append([name, f"{rate:.2f}", f"{setup:.0f}", f"{gflop * rate:.0f} of {peak:.0f} ({gflop * rate / peak:.0%})",
                        f"{spearman:.5f}", f"{changed:.1%}"])
        print(engines[-1], flush=True)
    sources = [os.path.join(photos, name) for name in list_gallery(Store(), photos)]
    galleries = {"real photos (shared/data/photos, 256-1024 px)": photos,
                 "24-MP JPEGs (6000x4000, upscaled real photos)": big_jpegs(sources, os.path.join(work, "big"), 6 if quick else 96),
                 "RAW (DNG) and HEIC, 12 MP, half each": mixed_formats(sources, os.path.join(work, "mixed"), 6 if quick else 48)}
    rows = []
    for label, gallery in galleries.items():
        rates = {"fp32": [], "auto": []}  # fp32: as shipped before (eager, NCHW, unfolded)
        for round_ in range(1 if quick or "real" not in label else 2):  # fp32, auto, fp32, auto: a drift of the machine falls on both
            for precision in rates:
                output = os.path.join(work, f"out-{precision}-{len(rows)}-{round_}")
                rates[precision].append(run_predict(default_model.checkpoint_path(), gallery, output, 32,
                                                    ["feature_cache=null", "threshold=null", "num_workers=auto",
                                                     *(SHIPPED_BEFORE if precision == "fp32" else [])])["ips"])
        fp32, auto = (scores_of(os.path.join(work, f"out-{p}-{len(rows)}-0")) for p in rates)
        from scipy.stats import spearmanr
        common = sorted(fp32)
        spearman = float(spearmanr([fp32[i]["score"] for i in common], [auto[i]["score"] for i in common])[0])
        changed = sum(fp32[i]["band"] != auto[i]["band"] for i in common) / len(common)
        slow, fast = (float(np.median(rates[p])) for p in rates)
        rows.append([label, len(common), f"{slow:.2f} ({', '.join(f'{r:.2f}' for r in rates['fp32'])})",
                     f"{fast:.2f} ({', '.join(f'{r:.2f}' for r in rates['auto'])})", f"**{fast / slow:.2f}**", f"{spearman:.5f}", f"{changed:.1%}"])
        print(rows[-1], flush=True)
    bare = {row[0]: float(row[1]) for row in engines if row[1] != "not installed"}
    auto_engine = f"eager {'bf16' if native_bf16() else 'fp32'} + channels_last + folded norms"
    agreeing = [row for row in engines if row[1] != "not installed" and float(row[4]) >= 0.999 and float(row[5].rstrip("%")) <= 1.0]
    fastest = max(agreeing, key=lambda row: float(row[1]))
    real = float(rows[0][3].split()[0])
    return ("The default model's frozen path (three EfficientNet-Lites, every feature level, at "
            f"{' and '.join('x'.join(map(str, s)) for s in module.net.sizes)} px; {gflop:.1f} GFLOP per photo) on "
            f"{len(decoded)} real photos decoded once (`shared/data/photos`), batch 16, each engine and precision; the scores "
            "(the model's own head, in fp32) against eager fp32's, and the share of keep / review / reject decisions that "
            "change (the checkpoint's calibrated policy). Setup: an export or a compile, paid once per model. Peak: a 2048 x 2048 "
            "matrix product on these cores, in that precision.\n\n"
            + markdown_table(["engine", "images/s", "setup s", "GFLOP/s of peak", "Spearman vs eager fp32", "decisions changed"], engines)
            + f"\n\nThe fastest at Spearman >= 0.999 and <= 1% of decisions changed: **{fastest[0]}** ({fastest[1]} images/s); "
            f"predict's default here: {auto_engine} ({bare.get(auto_engine, math.nan):.2f}), with no export, no compile and no "
            "dependency beyond torch."
            + "\n\n`beholder predict` with the default model end to end (`feature_cache=null`, technical checks on, batch 32, "
            f"`num_workers=auto`), as shipped before (`{' '.join(SHIPPED_BEFORE)}`: eager fp32) against the defaults "
            f"(`precision=auto`, here: {native_bf16() or 'no native bf16'}, so {auto_engine}); the real photos alternately twice, "
            "medians (each run's rate in brackets); agreement of the two runs' scores.csv:\n\n"
            + markdown_table(["photos", "count", "images/s, before", "images/s, now", "now / before", "Spearman", "decisions changed"], rows)
            + f"\n\npredict with its defaults against a bare forward of the same networks in the same precision: "
              f"{real:.2f} / {bare.get(auto_engine, math.nan):.2f} = **{real / bare.get(auto_engine, math.nan):.2f}**; "
              f"achieved {gflop * real:.0f} GFLOP/s.")


def default_scale_rows(work: str, quick: bool) -> str:
    """The default model, as shipped (``precision=auto``, technical checks on, no feature cache), over
    more and more photos (real ones, repeated as hard links): time per image and peak memory."""
    from beholder import default_model

    photos = os.path.join(SHARED, "photos")
    sources = [os.path.join(photos, name) for name in list_gallery(Store(), photos)]
    rows, base = [], None
    for count in ([40, 160] if quick else [1000, 4000, 10000]):  # 100,000: about 3 hours on 2 cores
        gallery = fill_gallery(sources, os.path.join(work, f"scale-{count}"), count)
        result = run_predict(default_model.checkpoint_path(), gallery, os.path.join(work, f"scale-out-{count}"), 32,
                             ["feature_cache=null", "threshold=null", "num_workers=auto"])
        base = base or result["wall"] / count
        rows.append([f"{count:,}", f"{result['wall']:.0f}", f"{count / result['wall']:.2f}", f"{result['wall'] / count / base:.2f}",
                     f"{result['rss_main_mb']:.0f}", f"{result['rss_workers_mb']:.0f}"])
        print(rows[-1], flush=True)
    return ("`beholder predict` with the default model as shipped (`precision=auto`, technical checks on, `feature_cache=null`, "
            "batch 32, `num_workers=auto`) over `shared/data/photos` repeated (hard links) to each count. Time per image against "
            "the smallest run (1.00: linear); peak RSS of the main process and of the largest loader worker.\n\n"
            + markdown_table(["photos", "wall s", "images/s", "time/image vs first", "peak RSS main MB", "peak RSS worker MB"], rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--only", choices=["technical", "default", "scale"], help="run only this experiment (and publish only its section)")
    args = parser.parse_args()
    torch.manual_seed(0)
    keep_freed_memory()  # as train() and predict() do: the step and forward rates are the best this CPU gives
    work = tempfile.mkdtemp(prefix="beholder-throughput-")
    if args.only == "scale":
        publish("throughput-scale", "The default model over more photos (bench/throughput.py --only scale)", default_scale_rows(work, args.quick),
                write=not args.no_write)
        shutil.rmtree(work, ignore_errors=True)
        return
    if args.only == "default":
        publish("throughput-default", "The default model's speed by engine and precision (bench/throughput.py --only default)",
                default_rows(work, args.quick), write=not args.no_write)
        shutil.rmtree(work, ignore_errors=True)
        return
    if args.only == "technical":
        rows = technical_rows(work, args.quick)
        body = ("`beholder predict` with the default model (`feature_cache=null`, batch 16, 2 loader workers), the technical "
                "checks off and on, alternately twice on the same photos, medians (each run's rate in brackets; target: on >= 0.85 x "
                "off). With them on, each "
                "photo is decoded once at a JPEG scale whose long side is at least 1,024 px, for both:\n\n"
                + markdown_table(["photos", "images/s, checks off", "images/s, checks on", "on / off"], rows)
                + "\n\nThe default model's path against a bare forward of its networks in the same precision: "
                "[throughput-default](#the-default-models-speed-by-engine-and-precision-benchthroughputpy---only-default).")
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
