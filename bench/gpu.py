"""Scoring throughput on a GPU (run through bench/gpu.sh): the beholder network (legacy_xception
backbone, regression head; random weights, as nothing can be downloaded) at the original's
299x299 and at the panoramas' 237x1820.

1. Network alone, batches already on the device: images/s for fp32, bf16 autocast, bf16 +
   channels_last, and bf16 + channels_last + torch.compile (the predict.py options
   trainer.precision=bf16-mixed, channels_last=true, compile=true).
2. Fed by beholder's own loader (GalleryDataset over JPEGs on local disk, decoded and resized in
   num_workers=auto processes, pinned memory): images/s and the share of the time the GPU waits
   for the next batch.
Prints a markdown table and makes it the "gpu" section of bench/RESULTS.md; --json writes the
figures for bench/scale.py's projection."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beholder.core.launch import MOST_LOADER_WORKERS  # noqa: E402
from beholder.core.storage import Store  # noqa: E402
from beholder.data.gallery import GalleryDataset, build_transform, collate  # noqa: E402
from beholder.models.module import BeholderModule  # noqa: E402
from bench.common import markdown_table, publish  # noqa: E402

SIZES = {"299x299": (299, 299), "237x1820": (237, 1820)}
HEAD = {"_target_": "beholder.models.heads.RegressionHead", "positive_tier": 2, "dropout": 0.6,
        "target_mean": 0.0, "target_std": 1.0, "tier_values": [0.0, 1.0, 2.0, 3.0]}
OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1e-4}


def network(size: tuple[int, int], device: str, channels_last: bool, compiled: bool) -> BeholderModule:
    module = BeholderModule({"name": "legacy_xception", "pretrained": False}, HEAD, OPTIMIZER, image_size=list(size)).eval().to(device)
    if channels_last:
        module.use_channels_last()
    if compiled:
        module.net.features = torch.compile(module.net.features)
    return module


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def network_rate(module, size, device, bf16, batch, seconds) -> float:
    """Images/s of predict_step on a batch already on the device (after warm-up and compiling)."""
    images = torch.randn(batch, 3, *size, device=device)
    step = {"image": images, "index": list(range(batch)), "image_path": [""] * batch, "skipped": []}
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            module.predict_step(step, 0)
        synchronize(device)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            module.predict_step(step, 0)
            done += batch
        synchronize(device)
    return done / (time.perf_counter() - started)


def make_jpegs(folder: str, size: tuple[int, int], count: int) -> list[str]:
    """Photo-like JPEGs (smooth gradients plus grain), so decoding costs what a real one does."""
    rng = np.random.default_rng(0)
    height, width = size
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(1, 0.3, height)[:, None, None]
    names = []
    for i in range(count):
        colour = rng.uniform(60, 200, 3)
        pixels = np.clip(ramp * colour + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        name = f"{i:05d}.jpg"
        Image.fromarray(pixels).save(os.path.join(folder, name), quality=90)
        names.append(name)
    return names


@torch.no_grad()
def loader_rate(module, folder, names, device, batch, workers, seconds) -> tuple[float, float]:
    """(images/s, share of the time spent waiting for the loader) over the JPEGs, bf16."""
    dataset = GalleryDataset(folder, names, Store(), build_transform(module.net.data_config, train=False))
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate, pin_memory=device == "cuda",
                        persistent_workers=workers > 0)
    done, waited, started = 0, 0.0, None
    with torch.autocast(device, dtype=torch.bfloat16):
        while started is None or time.perf_counter() - started < seconds:
            batches = iter(loader)
            while True:
                synchronize(device)  # the GPU has finished the last batch: from here it waits for the next
                asked = time.perf_counter()
                try:
                    step = next(batches)
                except StopIteration:
                    break
                if started is None:
                    started = time.perf_counter()  # from the first batch on: workers started, model warm
                else:
                    waited += time.perf_counter() - asked
                step["image"] = step["image"].to(device, non_blocking=True)
                module.predict_step(step, 0)
                done += len(step["image_path"])
        synchronize(device)
    total = time.perf_counter() - started
    return done / total, waited / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement")
    parser.add_argument("--images", type=int, default=1024, help="JPEGs per size for the loader measurement")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone (a CPU dry run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device visible (give --device cpu for a dry run)")
    torch.backends.cudnn.benchmark = True
    workers = min(MOST_LOADER_WORKERS, len(os.sched_getaffinity(0)))
    variants = [("fp32", False, False, False), ("bf16", True, False, False), ("bf16 + channels_last", True, True, False)]
    if not args.no_compile:
        variants.append(("bf16 + channels_last + compile", True, True, True))
    results = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device, "batch": args.batch, "network": {}, "loader": {}}
    for size_name, size in SIZES.items():
        for name, bf16, channels_last, compiled in variants:
            module = network(size, args.device, channels_last, compiled)
            results["network"].setdefault(size_name, {})[name] = network_rate(module, size, args.device, bf16, args.batch, args.seconds)
            print(f"{size_name:9} {name:32} {results['network'][size_name][name]:9.1f} images/s", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            names = make_jpegs(folder, size, args.images)
            module = network(size, args.device, True, False)
            rate, waiting = loader_rate(module, folder, names, args.device, args.batch, workers, args.seconds)
        results["loader"][size_name] = {"images_per_second": rate, "waiting_share": waiting, "workers": workers}
        print(f"{size_name:9} {'JPEG loader, bf16 + channels_last':32} {rate:9.1f} images/s, GPU waiting {waiting:.0%} ({workers} workers)", flush=True)
    rows = [[size_name, *(f"{results['network'][size_name][name]:.0f}" for name, *_ in variants),
             f"{results['loader'][size_name]['images_per_second']:.0f}", f"{results['loader'][size_name]['waiting_share']:.0%}"]
            for size_name in SIZES]
    table = markdown_table(["input", *(f"{name} images/s" for name, *_ in variants), "fed by the JPEG loader (bf16 + channels_last)",
                            "time the GPU waits for data"], rows)
    publish("gpu", "Scoring on a GPU (bench/gpu.sh)", f"{results['device']}, batch {args.batch}, {workers} loader workers; "
            f"legacy_xception + regression head, random weights.\n\n{table}", write=not args.no_write)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
