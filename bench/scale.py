"""Scoring an archive at scale (issue 15): 100,000 small JPEGs on a local S3 server (moto, in its own
process), scored by predict.py in 2 processes (torchrun, gloo, this machine's 2 CPU cores):

* the time predict.py takes to list the S3 prefix;
* images/s and each process's memory (with its loader workers) over time;
* one process killed with SIGKILL at about half, then the same command again: every image is scored
  exactly once across the two runs, none lost, none twice;
* with --gpu-json (the figures bench/gpu.sh writes on a GPU machine), the projection for the
  original 130,000-image archive on 1, 8 and 64 GPUs.

The network is timm's tiny test_efficientnet at 64x64: this measures the pipeline (S3 reads,
decoding, shards, the merge), not the network, whose rate bench/gpu.sh measures."""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beholder.core.storage import Store  # noqa: E402
from beholder.data.images import IMAGE_SUFFIXES  # noqa: E402
from bench.common import REPO, SHARED, markdown_table, publish  # noqa: E402

PY = sys.executable
BUCKET = "scale"
ARCHIVE = 130_000
SAMPLE_SECONDS = 2.0


def start_moto(work: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(work, "moto.log"), "w")
    server = subprocess.Popen([os.path.join(os.path.dirname(PY), "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto_server did not start")


def upload_archive(s3, count: int, size: tuple[int, int]) -> float:
    """``count`` webcam-named JPEGs, crops of the real photos in shared/data/photos; returns seconds."""
    folder = os.path.join(SHARED, "photos")
    sources = [Image.open(os.path.join(folder, name)).convert("RGB") for name in sorted(os.listdir(folder))]
    start = datetime.datetime(2016, 1, 1, 8, 0)

    def put(i: int) -> None:
        rng = np.random.default_rng(i)
        photo = sources[i % len(sources)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1)), int(h * rng.uniform(0.6, 1))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        buffer = io.BytesIO()
        photo.crop((x, y, x + cw, y + ch)).resize(size).save(buffer, "JPEG", quality=85)
        taken = start + datetime.timedelta(minutes=10 * i)
        s3.put_object(Bucket=BUCKET, Key=f"archive/{taken:%Y/%m/%d/%Y_%m%d_%H%M%S}.jpg", Body=buffer.getvalue())

    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))
    return time.perf_counter() - began


def train_checkpoint(work: str) -> str:
    """A tiny model, trained for one epoch on 80 of the photos with made-up tiers."""
    folder = os.path.join(work, "labelled")
    os.makedirs(folder, exist_ok=True)
    photos = sorted(os.listdir(os.path.join(SHARED, "photos")))[:80]
    with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "tier"])
        for i, name in enumerate(photos):
            shutil.copy(os.path.join(SHARED, "photos", name), os.path.join(folder, name))
            writer.writerow([name, (0, 0, 1, 2, 3)[i % 5]])
    run = os.path.join(work, "train")
    subprocess.run([PY, os.path.join(REPO, "train.py"), "backbone.name=test_efficientnet", "backbone.pretrained=false",
                    "data.image_size=[64,64]", "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", f"gallery={folder}",
                    f"labels={folder}/labels.csv", f"hydra.run.dir={run}"], check=True, capture_output=True, cwd=work)
    return os.path.join(run, "checkpoints", "best.ckpt")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (the loader workers)."""
    total = 0
    for p in [pid, *children(pid), *(g for c in children(pid) for g in children(c))]:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        return int(env[b"RANK"])
    except (OSError, KeyError, ValueError):
        return None


class Monitor(threading.Thread):
    """Every few seconds: the images this run's shards under the output hold, and each process's
    memory; with ``kill_at``, SIGKILLs the process of rank 1 once that many images are done."""

    def __init__(self, launcher: subprocess.Popen, s3, kill_at: int | None):
        super().__init__(daemon=True)
        self.launcher, self.s3, self.kill_at = launcher, s3, kill_at
        self.samples, self.counted, self.done, self.before, self.killed_at = [], {}, 0, 0, None
        self.count_new_shards()
        self.before, self.done = self.done, 0  # left by an earlier run: not this run's work
        self.started = time.perf_counter()

    def count_new_shards(self) -> None:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="scored/.beholder-partial/scores-")
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"] not in self.counted:
                    body = self.s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
                    self.counted[obj["Key"]] = body.count(b"\n") - 1
        self.done = sum(self.counted.values()) - self.before

    def run(self) -> None:
        last_list = 0.0
        while self.launcher.poll() is None:
            now = time.perf_counter() - self.started
            if now - last_list >= 5:
                try:
                    self.count_new_shards()
                except Exception:  # the merge deletes the shards under our feet at the end
                    pass
                last_list = now
            ranks = {rank_of(p): p for p in children(self.launcher.pid)}
            self.samples.append((now, self.done, {r: rss_mib(p) for r, p in ranks.items() if r is not None}))
            if self.kill_at is not None and self.killed_at is None and self.done >= self.kill_at and 1 in ranks:
                os.kill(ranks[1], signal.SIGKILL)
                self.killed_at = self.done
            time.sleep(SAMPLE_SECONDS)
        self.ended = time.perf_counter() - self.started


def score(work: str, ckpt: str, endpoint: str, name: str, s3, kill_at: int | None) -> tuple[subprocess.CompletedProcess, Monitor, float]:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"}
    command = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(REPO, "predict.py"),
               f"ckpt={ckpt}", f"gallery=s3://{BUCKET}/archive", f"output=s3://{BUCKET}/scored", "trainer.devices=2",
               "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "num_workers=1", "batch_size=64",
               f"hydra.run.dir={work}/{name}"]
    began = time.perf_counter()
    launcher = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monitor = Monitor(launcher, s3, kill_at)
    monitor.start()
    out, err = launcher.communicate()
    monitor.join()
    return subprocess.CompletedProcess(command, launcher.returncode, out, err), monitor, time.perf_counter() - began


def shard_images(s3) -> list[str]:
    images = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="scored/.beholder-partial/scores-"):
        for obj in page.get("Contents", []):
            text = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read().decode()
            images += [row["image"] for row in csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1]))]
    return images


def timeline(monitor: Monitor, window: float = 30.0) -> list[list]:
    """Rows per ``window`` seconds: time, images done, images/s in the window, memory of each rank."""
    rows, last_t, last_done = [], 0.0, 0
    for t, done, memory in monitor.samples:
        if t - last_t >= window:
            rows.append([f"{t:.0f}", done, f"{(done - last_done) / (t - last_t):.0f}",
                         *(f"{memory[r]:.0f}" if r in memory else "-" for r in (0, 1))])
            last_t, last_done = t, done
    return rows


def flatness(monitor: Monitor) -> dict:
    """Rate and memory in the second fifth of this run's work against its fourth fifth."""
    total = monitor.done

    def window(lo, hi):
        inside = [(t, d, m) for t, d, m in monitor.samples if lo * total <= d <= hi * total and m]
        if len(inside) < 2:
            return None
        (t0, d0, _), (t1, d1, _) = inside[0], inside[-1]
        rate = (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")
        memory = {r: max(m.get(r, 0) for _, _, m in inside) for r in (0, 1)}
        return rate, memory
    return {"early": window(0.2, 0.4), "late": window(0.6, 0.8)}


def first_results(monitor: Monitor) -> float:
    return min(t for t, done, _ in monitor.samples if done > 0)


def summary_value(stdout: str, label: str) -> str:
    return next((line.split(None, len(label.split()))[-1] for line in stdout.splitlines() if line.strip().startswith(label)), "?")


def projection(gpu_json: str | None, listing_s: float, merge_s: float, images: int) -> str:
    scale = ARCHIVE / images
    fixed = listing_s * scale + merge_s * scale
    if not gpu_json:
        return (f"No GPU rate: bench/gpu.sh has not run on a GPU machine (none was lent to this session). Fixed costs "
                f"for {ARCHIVE:,} images, from this run scaled linearly: listing {listing_s * scale:.0f} s, merge on the first "
                f"process {merge_s * scale:.0f} s. Run `bash bench/gpu.sh --json gpu.json` there, then "
                f"`python bench/scale.py --gpu-json gpu.json --project-only` for the projection.")
    with open(gpu_json) as f:
        gpu = json.load(f)
    rows = []
    for size, fed in gpu["loader"].items():
        for devices in (1, 8, 64):
            seconds = ARCHIVE / (fed["images_per_second"] * devices) + fixed
            rows.append([size, devices, f"{fed['images_per_second']:.0f}", f"{seconds / 60:.1f} min"])
    return (f"Projection for {ARCHIVE:,} images on {gpu['device']} (per-device rate fed by the JPEG loader, bench/gpu.sh; "
            f"linear in devices, plus this run's listing and merge scaled to {ARCHIVE:,}):\n\n"
            + markdown_table(["input", "GPUs", "images/s per GPU", "wall time"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", default="/tmp/beholder-scale")
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the images after which rank 1 is killed")
    parser.add_argument("--gpu-json", help="bench/gpu.sh --json output, for the projection")
    parser.add_argument("--project-only", action="store_true", help="only the projection, from --gpu-json and the last RESULTS figures")
    parser.add_argument("--listing-s", type=float, default=None, help="with --project-only: the listing time measured before")
    parser.add_argument("--merge-s", type=float, default=None, help="with --project-only: the merge time measured before")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    if args.project_only:
        print(projection(args.gpu_json, args.listing_s or 0.0, args.merge_s or 0.0, args.images))
        return
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server, endpoint = start_moto(args.work)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET)
        upload_s = upload_archive(s3, args.images, (96, 72))
        print(f"uploaded {args.images} JPEGs in {upload_s:.0f} s", flush=True)
        ckpt = train_checkpoint(args.work)
        began = time.perf_counter()
        listed = Store(endpoint).versions(f"s3://{BUCKET}/archive", IMAGE_SUFFIXES)
        listing_s = time.perf_counter() - began
        print(f"listed {len(listed)} objects in {listing_s:.1f} s", flush=True)

        first, first_monitor, first_s = score(args.work, ckpt, endpoint, "run1", s3, int(args.kill_at * args.images))
        kept = shard_images(s3)
        print(f"run 1: exit {first.returncode} after {first_s:.0f} s, rank 1 killed at {first_monitor.killed_at} images; "
              f"{len(kept)} rows kept in the shards ({len(set(kept))} images)", flush=True)
        second, second_monitor, second_s = score(args.work, ckpt, endpoint, "run2", s3, None)
        if second.returncode != 0:
            sys.exit(f"the rerun failed:\n{second.stderr[-3000:]}")
        body = s3.get_object(Bucket=BUCKET, Key="scored/scores.csv")["Body"].read().decode()
        scored = [row["image"] for row in csv.DictReader(io.StringIO(body))]
        newly = int(summary_value(second.stdout, "scored").split("(")[1].split()[0])
        last_shard = min(t for t, d, _ in second_monitor.samples if d >= second_monitor.done)
        merge_s = second_monitor.ended - last_shard
        merge_mib = max(m.get(0, 0) for t, _, m in second_monitor.samples if t >= last_shard)
    finally:
        server.terminate()

    lost = set(listed) - set(scored)
    doubled = len(scored) - len(set(scored))
    rescored_after_kill = newly - (len(listed) - len(set(kept)))
    rows = [
        ["images in the archive (S3 objects)", f"{len(listed):,}"],
        ["listing the prefix (Store.versions, as predict.py does)", f"{listing_s:.1f} s"],
        ["run 1: rank 1 killed (SIGKILL) after", f"{first_monitor.killed_at:,} images"],
        ["run 1: exit code (torchrun)", first.returncode],
        ["run 1: rows kept in the shards / distinct images", f"{len(kept):,} / {len(set(kept)):,}"],
        ["run 2 (same command): newly scored", f"{newly:,} (= {len(listed):,} - {len(set(kept)):,} kept: {'yes' if rescored_after_kill == 0 else 'NO'})"],
        ["scores.csv rows / distinct / lost / twice", f"{len(scored):,} / {len(set(scored)):,} / {len(lost)} / {doubled}"],
        ["run 2 images/s (its summary)", summary_value(second.stdout, "scored").split(",")[1].strip()],
        ["run 2: first results after (start, listing, reading run 1's shards)", f"{first_results(second_monitor):.0f} s"],
        ["run 2: merge and final files on the first process (after its last shard; ±5 s)", f"{merge_s:.0f} s, {merge_mib:.0f} MiB"],
    ]
    report = [markdown_table(["what", "measured"], rows)]
    for name, monitor in (("run 1 (killed at about half)", first_monitor), ("run 2 (the rest)", second_monitor)):
        flat = flatness(monitor)
        report.append(f"\n{name}: images done, images/s in each 30 s, memory of each process with its loader worker (MiB):\n")
        report.append(markdown_table(["s", "images done", "images/s", "rank 0 MiB", "rank 1 MiB"], timeline(monitor)))
        if flat["early"] and flat["late"]:
            (r0, m0), (r1, m1) = flat["early"], flat["late"]
            report.append(f"\nflat? images/s {r0:.0f} (20-40 % of the work) vs {r1:.0f} (60-80 %): ratio {r1 / r0:.2f}; "
                          f"peak memory rank 0 {m0[0]:.0f} vs {m1[0]:.0f} MiB, rank 1 {m0[1]:.0f} vs {m1[1]:.0f} MiB")
    report.append("\n" + projection(args.gpu_json, listing_s, merge_s, len(listed)))
    publish("scale", "Scoring an archive on S3 with 2 processes (bench/scale.py)", "\n".join(report), write=not args.no_write)


if __name__ == "__main__":
    main()
