"""Fault experiments, longer than the tests: inject faults, count retries, resumes and losses.

  s3        predict over a gallery on S3 (moto's server behind bench/fault_proxy.py) with throttling,
            downloads cut off mid-way and a 3 s outage, against a clean run: images lost, faults
            injected, time overhead
  kill      kill -9 of predict.py at three points of a gallery, then one rerun: images lost or doubled
  train     kill -9 of train.py mid-epoch, then ckpt_path=last: epoch and step it resumed at
  bad       a gallery seeded with broken and odd files: skipped, scored, peak memory
  labeller  the labeller's server under 10 clients posting one set at once, 10 raters in parallel, a
            cross-site page in Chromium, a rebinding Host header, and 10 requests for 81-megapixel PNGs
  archive   ingest of a hostile archive (encoded ../ and / links, a redirect to another site, a
            dribbling download, an endless listing) and of one 268 MB file: what was refused, written
            outside, fetched elsewhere, and the ingester's peak memory
Results replace the "faults" section of bench/RESULTS.md.

    python bench/faults.py          # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import os
import random
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
    process = subprocess.Popen([PYTHON, os.path.join(REPO, "predict.py"), *FAST, f"ckpt_path={ckpt}", f"gallery={gallery}",
                                f"output={work}/bad-out", f"hydra.run.dir={work}/h-bad"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:  # its own high-water mark; ru_maxrss of children would include earlier ones
        try:
            peak = max(peak, rss_peak_mb(process.pid))
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    result = process
    skipped = scores_of(os.path.join(work, "bad-out", "skipped.csv")) if result.returncode == 0 else []
    scored = scores_of(os.path.join(work, "bad-out", "scores.csv")) if result.returncode == 0 else []
    return [[len(files), len(scored), len(skipped), ", ".join(sorted(skipped)), "0" if result.returncode == 0 else "crash", f"{peak:.0f}"]]


def rss_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def labeller_experiment(work):
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import numpy as np
    from PIL import Image

    from tests.test_label import free_port, honest_rater

    gallery = os.path.join(work, "to-label")
    os.makedirs(gallery)
    rng = np.random.default_rng(0)
    for i in range(120):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(os.path.join(gallery, f"img_{i:03d}.jpg"))
    for name in ("huge_a.png", "huge_b.png"):  # 9000 x 9000 = 81 megapixels each
        Image.new("RGB", (9000, 9000), (40, 90, 160)).save(os.path.join(gallery, name))
    db, port = os.path.join(work, "labels.sqlite"), free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([PYTHON, "-m", "beholder.label", "--gallery", gallery, "--db", db, "--port", str(port)],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            return httpx.get(f"{base}/api/state").status_code == 200
        except httpx.HTTPError:
            return False

    def rows(sql):
        with sqlite3.connect(db) as connection:
            return connection.execute(sql).fetchone()[0]

    try:
        wait_for(up, timeout=120)
        # one set posted by 10 clients at once, 20 times over
        accepted, state = 0, httpx.post(f"{base}/api/next", json={}).json()
        for _ in range(20):
            body = {"set_id": state["set"]["id"], "advanced": [state["set"]["images"][0]["id"]]}
            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(lambda _: httpx.post(f"{base}/api/submit", json=body, timeout=60), range(10)))
            accepted += sum(a.status_code == 200 for a in answers)
            state = next(a for a in answers if a.status_code == 200).json()
        same_set = [20 * 10, accepted, rows("SELECT COUNT(*) FROM decisions"), 20 * 4]

        with ThreadPoolExecutor(10) as pool:
            refused = sum(pool.map(lambda name: honest_rater(base, name), [f"r{i}" for i in range(10)]))
        parallel = [150, 150 - refused, refused, rows("SELECT COUNT(*) FROM decisions WHERE rater LIKE 'r%'"), 150 * 4]

        judged = rows("SELECT COUNT(*) FROM decisions d JOIN sets s ON s.id = d.set_id WHERE s.undone = 0 AND d.rater = 'me'")
        sets_before = rows("SELECT COUNT(*) FROM sets")
        attack_statuses = cross_site_attack(base, work)
        rebinding = httpx.get(f"{base}/api/state", headers={"Host": "attacker.example"}).status_code
        for _ in range(50):
            httpx.get(f"{base}/api/state", params={"rater": "reader"})
        after = rows("SELECT COUNT(*) FROM decisions d JOIN sets s ON s.id = d.set_id WHERE s.undone = 0 AND d.rater = 'me'")
        cross = [attack_statuses, judged, after, rebinding, rows("SELECT COUNT(*) FROM sets") - sets_before]

        ids = [rows(f"SELECT id FROM images WHERE key = '{name}'") for name in ("huge_a.png", "huge_b.png")]
        before = rss_peak_mb(server.pid)
        started = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda i: httpx.get(f"{base}/image/{ids[i % 2]}", timeout=300).status_code, range(10)))
        memory = [10, codes.count(200), f"{before:.0f}", f"{rss_peak_mb(server.pid):.0f}", f"{time.perf_counter() - started:.1f}"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    return same_set, parallel, cross, memory


def cross_site_attack(base, work):
    """A page on another origin, opened in Chromium, posts 15 undo forms and 15 no-cors fetches to
    the labeller. Returns what the browser could see of it, or why it did not run."""
    from tests.test_label import CHROMIUM, open_from_another_origin

    if not os.path.exists(CHROMIUM):
        return f"not run (no {CHROMIUM})"

    frames = "".join(f'<iframe name="f{i}"></iframe><form target="f{i}" method="POST" action="{base}/api/undo?rater=me" '
                     f'enctype="text/plain"><input name=\'{{"x":"\' value=\'"}}\'></form>' for i in range(15))
    page = (frames + "<script>for (const form of document.forms) form.submit();"
            f'for (let i = 0; i < 15; i++) fetch("{base}/api/undo?rater=me", {{method: "POST", mode: "no-cors", body: "{{}}"}});</script>').encode()
    open_from_another_origin(page, lambda tab: time.sleep(3))  # time for every post to land
    return "30 posts sent"


def archive_experiment(work):
    import functools
    import uuid
    from http.server import SimpleHTTPRequestHandler

    from tests.test_ingest import Elsewhere, hostile_archive, serve

    escape = f"beholder-escape-{uuid.uuid4().hex}.jpg"
    Elsewhere.hits = []
    other, elsewhere = serve(Elsewhere)
    archive, base = serve(hostile_archive(escape, elsewhere))
    mirror = os.path.join(work, "deep", "er", "mirror")
    started = time.perf_counter()
    result = subprocess.run([PYTHON, "-m", "beholder.ingest", f"{base}/archive/", mirror, "--quiet", "--max-depth", "6", "--deadline", "5",
                             "--retries", "1"], env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    archive.shutdown()
    other.shutdown()
    outside = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(work, "deep")) for name in names
               if not os.path.join(folder, name).startswith(mirror + os.sep)] + ([f"/tmp/{escape}"] if os.path.exists(f"/tmp/{escape}") else [])
    copied = sum(len(names) for _, _, names in os.walk(mirror)) - 1  # less the manifest
    hostile = [result.stdout.count("would leave the destination"), len(outside), len(Elsewhere.hits),
               result.stdout.count("redirect to"), result.stdout.count("DeadlineExceeded"), result.stdout.count("deeper than --max-depth"),
               copied, f"{seconds:.1f}"]

    site = os.path.join(work, "big-site")
    os.makedirs(site)
    with open(os.path.join(site, "big.bin"), "wb") as f:
        f.truncate(268 * 1024 * 1024)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=site)
    handler.log_message = lambda *args: None
    server, url = serve(handler)
    target = os.path.join(work, "big-mirror")
    # VmHWM, not ru_maxrss: ru_maxrss outlives fork and exec, so a child would report this bench's own size.
    measured = ("import sys; from beholder.ingest import main; main(sys.argv[1:]); "
                "print('peak', next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))")
    run = subprocess.run([PYTHON, "-c", measured, f"{url}/", target, "--quiet"], env=env(), capture_output=True, text=True)
    server.shutdown()
    peak = next((int(line.split()[1]) / 1024 for line in run.stdout.splitlines() if line.startswith("peak ")), float("nan"))
    size = os.path.getsize(os.path.join(target, "big.bin")) if os.path.exists(os.path.join(target, "big.bin")) else 0
    big = [268, f"{size / 2**20:.0f}", f"{peak:.0f}"]
    return hostile, big


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
    same_set, parallel, cross, memory = labeller_experiment(work)
    print(same_set, parallel, cross, memory, flush=True)
    hostile, big = archive_experiment(work)
    print(hostile, big, flush=True)

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
        "The labeller's server (`python -m beholder.label`, 120 images): one set posted by 10 clients at once, 20 times over:\n\n"
        + markdown_table(["posts", "accepted", "decision rows", "expected rows"], [same_set]),
        "10 raters submitting 15 sets each in parallel:\n\n"
        + markdown_table(["honest submissions", "accepted", "refused", "decision rows", "expected rows"], [parallel]),
        "A page on another origin opened in Chromium (15 cross-site undo forms and 15 no-cors fetches), a request with "
        "`Host: attacker.example`, and 50 `GET /api/state` of a new rater:\n\n"
        + markdown_table(["cross-site page", "rater's judged images before", "after", "status for a foreign Host", "sets created by GETs"], [cross]),
        "10 concurrent requests for two 81-megapixel PNGs (9000x9000) on the labeller:\n\n"
        + markdown_table(["requests", "answered 200", "server peak RSS before MB", "after MB", "seconds"], [memory]),
        "`python -m beholder.ingest` of a hostile archive (4 links with encoded `..` or `/`, a 302 to another site, a file "
        "dribbled a byte every 50 ms with `--deadline 5`, an endless folder nesting with `--max-depth 6`):\n\n"
        + markdown_table(["links refused as leaving DEST", "files written outside", "requests to the other site",
                          "redirects refused", "downloads cut by the deadline", "folders refused by depth", "files copied", "seconds"], [hostile]),
        "One 268 MB file mirrored to a local folder (streamed to disk in 1 MB reads):\n\n"
        + markdown_table(["file MB", "copied MB", "peak RSS of the ingester MB"], [big]),
    ])
    publish("faults", "Faults (bench/faults.py)", body, write=not args.no_write)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
