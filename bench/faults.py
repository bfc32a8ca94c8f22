"""Fault experiments, longer than the tests: inject faults, count retries, resumes and losses.

  s3        predict over a gallery on S3 (moto's server behind tests/fault_proxy.py) with throttling,
            downloads cut off mid-way and a 3 s outage, against a clean run: images lost, faults
            injected, time overhead
  kill      kill -9 of predict.py at three points of a gallery, then one rerun: images lost or doubled
  train     kill -9 of train.py mid-epoch, then resume=last: epoch and step it resumed at
  bad       a gallery seeded with broken and odd files: skipped, scored, peak memory
  labeller  the labeller's server under 10 clients posting one set at once, 10 raters in parallel, a
            cross-site page in Chromium, a rebinding Host header, and 10 requests for 81-megapixel PNGs
  archive   ingest of a hostile archive (encoded ../ and / links, a redirect to another site, a
            dribbling download, an endless listing) and of one 268 MB file: what was refused, written
            outside, fetched elsewhere, and the ingester's peak memory
  surfaces  hostile and careless input on ratings, sidecars, review, search, the feature cache and
            checkpoints, and a photographer's library as it is (a folder linked to another drive,
            everyday folder and file names, an editor saving while beholder merges, two runs into
            one output, crafted checkpoints, damaged earlier results), each through its command:
            files written outside, images served outside, photographer's fields changed, runs
            stopped by one bad input, NaN or false results, mixed-model results
Results replace the "faults" section of bench/RESULTS.md ("faults-surfaces" for the last).

    python bench/faults.py                   # about 6 minutes on 2 CPU cores
    python bench/faults.py --only surfaces   # about 4 minutes
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the tests' helpers (conftest, fault_proxy) and the test modules this bench borrows import each other
# by their plain names, as under pytest
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from beholder.data.demo import make_gallery  # noqa: E402
from beholder.models.module import BeholderModule  # noqa: E402
from bench.common import REPO, SHARED, local_s3, markdown_table, publish  # noqa: E402
from bench.throughput import HEAD, OPTIMIZER, fill_gallery, make_module, save_checkpoint  # noqa: E402

from fault_proxy import FaultProxy  # noqa: E402

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
            result = predict_cli([f"ckpt={ckpt}", "gallery=s3://faults/gallery", f"output=s3://faults/out-{label}",
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
    args = [PYTHON, os.path.join(REPO, "predict.py"), *FAST, f"ckpt={ckpt}", f"gallery={gallery}", f"output={output}",
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
    common = [os.path.join(REPO, "train.py"), "backbone=efficientnet_lite0", f"gallery={gallery}", f"labels={gallery}/labels.csv",
              "data.image_size=[48,368]", "data.batch_size=16", "trainer.enable_progress_bar=false", f"runs_root={work}/runs"]
    process = subprocess.Popen([PYTHON, *common, "trainer.max_epochs=50", f"hydra.run.dir={work}/runs/a"], env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(work, "runs", "a", "checkpoints", "last.ckpt")
    wait_for(lambda: os.path.exists(last) and torch.load(last, weights_only=True)["epoch"] >= 1)
    time.sleep(1.5)  # mid-epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(last, weights_only=True)
    result = subprocess.run([PYTHON, *common, f"trainer.max_epochs={saved['epoch'] + 2}", "resume=last",
                             f"hydra.run.dir={work}/runs/b"], env=env(), capture_output=True, text=True)
    final = torch.load(os.path.join(work, "runs", "b", "checkpoints", "last.ckpt"), weights_only=True) if result.returncode == 0 else {}
    per_epoch = saved["global_step"] // (saved["epoch"] + 1)
    return [[saved["epoch"], saved["global_step"], "yes" if result.returncode == 0 else "no", final.get("epoch"),
             final.get("global_step"), saved["global_step"] + per_epoch]]


def bad_files_experiment(work, ckpt, photos):
    from PIL import Image

    from conftest import encode, png_declaring  # the same broken files the tests use

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
    process = subprocess.Popen([PYTHON, os.path.join(REPO, "predict.py"), *FAST, f"ckpt={ckpt}", f"gallery={gallery}",
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


def rss_peak_mb(pid: int, field: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def rss_mb(pid: int) -> float:
    return rss_peak_mb(pid, "VmRSS")


def labeller_experiment(work):
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import numpy as np
    from PIL import Image
    from test_label import honest_rater

    from conftest import free_port

    gallery = os.path.join(work, "to-label")
    os.makedirs(gallery)
    rng = np.random.default_rng(0)
    for i in range(120):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(os.path.join(gallery, f"img_{i:03d}.jpg"))
    for name in ("huge_a.png", "huge_b.png"):  # 9000 x 9000 = 81 megapixels each
        Image.new("RGB", (9000, 9000), (40, 90, 160)).save(os.path.join(gallery, name))
    db, port = os.path.join(work, "labels.sqlite"), free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([PYTHON, "-m", "beholder", "label", "--gallery", gallery, "--db", db, "--port", str(port)],
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
    from test_label import open_from_another_origin

    from conftest import CHROMIUM

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

    from test_ingest import Elsewhere, hostile_archive, serve

    escape = f"beholder-escape-{uuid.uuid4().hex}.jpg"
    Elsewhere.hits = []
    other, elsewhere = serve(Elsewhere)
    archive, base = serve(hostile_archive(escape, elsewhere))
    mirror = os.path.join(work, "deep", "er", "mirror")
    started = time.perf_counter()
    result = subprocess.run([PYTHON, "-m", "beholder", "ingest", f"{base}/archive/", mirror, "--quiet", "--max-depth", "6", "--deadline", "5",
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
    measured = ("import sys; from beholder.data.ingest import main; main(sys.argv[1:]); "
                "print('peak', next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))")
    run = subprocess.run([PYTHON, "-c", measured, f"{url}/", target, "--quiet"], env=env(), capture_output=True, text=True)
    server.shutdown()
    peak = next((int(line.split()[1]) / 1024 for line in run.stdout.splitlines() if line.startswith("peak ")), float("nan"))
    size = os.path.getsize(os.path.join(target, "big.bin")) if os.path.exists(os.path.join(target, "big.bin")) else 0
    big = [268, f"{size / 2**20:.0f}", f"{peak:.0f}"]
    return hostile, big


SECRET_COLOUR = (255, 0, 255)  # the private photo outside the gallery: a colour no photo of the gallery has


def beholder_cli(args, **kwargs):
    """``python -m ...`` or a script of the repo, as a user runs it: (exit code, output)."""
    command = [PYTHON, "-m", *args] if not args[0].endswith(".py") else [PYTHON, os.path.join(REPO, args[0]), *args[1:]]
    run = subprocess.run(command, env=env(), capture_output=True, text=True, cwd=kwargs.pop("cwd", REPO), **kwargs)
    return run.returncode, run.stdout + run.stderr


def snapshot(folder):
    """Every file under ``folder`` with its content (what 'written outside' is counted against)."""
    found = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    found[path] = f.read()
    return found


def changed(before, after):
    return sum(after.get(path) != data for path, data in before.items()) + len(set(after) - set(before))


def last_line(output):
    lines = [line for line in output.strip().splitlines() if line.startswith("beholder")]
    return (lines[-1] if lines else output.strip().splitlines()[-1] if output.strip() else "").replace("|", "/")[:110]


def surfaces_experiment(work, ckpt, photos):
    """Each hostile input through its command, on a photographer's folder of real photos with a
    private folder beside it; the rows count what the README promises never happens."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from beholder.search.embeddings import read_parquet, write_parquet

    home = os.path.join(work, "surfaces")
    gallery, private, out = os.path.join(home, "Pictures"), os.path.join(home, "private"), os.path.join(home, "out")
    os.makedirs(private)
    for i, name in enumerate(sorted(os.listdir(photos))[:40]):
        os.makedirs(os.path.join(gallery, f"2026/0{i % 3 + 1}"), exist_ok=True)
        shutil.copy(os.path.join(photos, name), os.path.join(gallery, f"2026/0{i % 3 + 1}", name))
    Image.new("RGB", (64, 48), SECRET_COLOUR).save(os.path.join(private, "secret.jpg"))
    with open(os.path.join(private, "secret.xmp"), "w") as f:
        f.write("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    images = sorted(os.path.relpath(os.path.join(d, n), gallery) for d, _, fs in os.walk(gallery) for n in fs)
    deep = (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
            + b"<a>" * 5000 + b"</a>" * 5000 + b"</rdf:RDF></x:xmpmeta>")
    rated = ("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
             "<rdf:Description rdf:about='' xmlns:xmp='http://ns.adobe.com/xap/1.0/' xmlns:digiKam='http://www.digikam.org/ns/1.0/' {}/>"
             "</rdf:RDF></x:xmpmeta>")
    stem = lambda image: os.path.join(gallery, os.path.splitext(image)[0])  # noqa: E731
    with open(stem(images[0]) + ".xmp", "wb") as f:
        f.write(deep)
    for image, value in zip(images[1:4], ('xmp:Rating="1e400"', 'digiKam:PickLabel="²"', 'xmp:Rating="4"')):
        with open(stem(image) + ".xmp", "w") as f:
            f.write(rated.format(value))
    os.mkfifo(stem(images[4]) + ".xmp")
    os.symlink("/dev/zero", os.path.join(gallery, "zero.jpg"))
    with open(os.path.join(gallery, "openings.jpg"), "wb") as f:
        f.write(b"\xff\xd8" + b"<x:xmpmeta " * 100_000)
    outside_before = snapshot(private)
    rows = []
    row = functools.partial(surface_row, rows)

    started = time.perf_counter()  # the photographer's ratings, before beholder writes any
    code, output = beholder_cli(["beholder", "ratings", "import", gallery, "--gallery", gallery, "--out", os.path.join(home, "labels.csv")], timeout=300)
    row("ratings import (sidecars)", "Rating 1e400, PickLabel ², 5,000 deep, a FIFO, /dev/zero, 1 MB of packet openings",
        code, output, time.perf_counter() - started, stopped=int(code != 0 or not os.path.exists(os.path.join(home, "labels.csv"))))

    started = time.perf_counter()  # predict with sidecars beside the images, one of them 5,000 deep
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={gallery}", f"output={out}", "xmp=true",
                                 "xmp_beside_images=true", f"hydra.run.dir={work}/h-surfaces"], timeout=600)
    scored = os.path.exists(os.path.join(out, "scores.csv"))
    row("predict.py xmp_beside_images=true", "a sidecar nested 5,000 deep, a FIFO named .xmp, /dev/zero named .jpg",
        code, output, time.perf_counter() - started, changed(outside_before, snapshot(private)), stopped=int(code != 0 or not scored))

    catalogue = os.path.join(home, "library.db")
    darktable = sqlite3.connect(catalogue, isolation_level=None)
    darktable.execute("PRAGMA journal_mode=WAL")
    darktable.execute("PRAGMA wal_autocheckpoint=0")
    darktable.executescript("CREATE TABLE film_rolls (id INTEGER PRIMARY KEY, folder TEXT);"
                            "CREATE TABLE images (id INTEGER PRIMARY KEY, film_id INTEGER, filename TEXT, flags INTEGER);")
    darktable.execute("INSERT INTO film_rolls VALUES (1, ?), (2, NULL)", (os.path.join(gallery, "2026/01"),))
    names = sorted(os.listdir(os.path.join(gallery, "2026/01")))
    darktable.executemany("INSERT INTO images VALUES (?, ?, ?, ?)", [(1, 1, names[0], 1), (2, 1, None, 3), (3, 1, names[1], None), (4, 2, names[2], 2)])
    darktable.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    darktable.execute("UPDATE images SET flags = 5 WHERE id = 1")  # committed, only in the write-ahead log
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "ratings", "import", catalogue, "--gallery", gallery, "--out", os.path.join(home, "dt.csv")], timeout=300)
    darktable.close()
    with open(os.path.join(home, "dt.csv")) if code == 0 else open(os.devnull) as f:
        stars = {row["image"]: row["rating"] for row in csv.DictReader(f)}
    row("ratings import (darktable, open)", f"NULL path and flags rows; 5 stars only in the WAL (read: {stars.get('2026/01/' + names[0], 'none')})",
        code, output, time.perf_counter() - started, stopped=int(code != 0))

    scores = os.path.join(home, "hostile-scores.csv")
    with open(os.path.join(out, "scores.csv")) as f:
        good = list(csv.DictReader(f))
    with open(scores, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "score", "band", "rank"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(good[:10])
        for rank, image in enumerate(["../private/secret.jpg", os.path.join(private, "secret.jpg")], start=11):
            writer.writerow({"image": image, "score": 0.99, "band": "keep", "rank": rank})
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "ratings", "write", "--scored", scores, "--gallery", gallery], timeout=300)
    row("ratings write", "rows ../private/secret.jpg and an absolute path; the 5,000-deep sidecar", code, output,
        time.perf_counter() - started, changed(outside_before, snapshot(private)))

    port = free_port()
    server = subprocess.Popen([PYTHON, "-m", "beholder", "review", "--scored", scores, "--gallery", gallery, "--db",
                               os.path.join(home, "review.sqlite"), "--port", str(port)], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    started = time.perf_counter()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: port_open(port) or server.poll() is not None, timeout=120)
    served, answers = 0, []
    for image_id in range(1, len(good) + 20):
        status, body = http_get(f"{base}/image/{image_id}")
        answers.append(status)
        if status == 200 and magenta(body):
            served += 1
    huge_id = http_post(f"{base}/api/review/decide", b'{"image_id": %d, "keep": true}' % 2**70)
    huge_body = http_post(f"{base}/api/review/decide", b"{" + b" " * (1 << 20), declared=200 << 20)
    server.terminate()
    output = server.communicate()[0]
    listed = re.search(r"(\d+) decisions", output or "")  # the rows of the gallery, less the photographer's own rated ones
    row("label review", f"the same rows; image_id 2^70 (HTTP {huge_id}); a 200 MB body (HTTP {huge_body})",
        0 if listed and answers.count(200) == int(listed.group(1)) else 1, output or "served", time.perf_counter() - started, served=served)

    started = time.perf_counter()
    parquet = os.path.join(out, "embeddings.parquet")
    names_, vectors, metadata = read_parquet(parquet)
    vectors = vectors.copy()
    vectors[1] = np.nan
    renamed = ["../private/secret.jpg" if i == 2 else image for i, image in enumerate(names_)]
    with open(parquet, "wb") as f:
        write_parquet(f, renamed, vectors, metadata["beholder.checkpoint_sha256"], metadata["beholder.gallery"])
    os.rename(os.path.join(out, "scores.csv"), os.path.join(out, "scores.csv.kept"))
    os.remove(os.path.join(gallery, names_[3]))  # deleted since it was scored
    code, output = beholder_cli(["beholder", "similar", "--scored", out, "--query", names_[0], "--count", "30", "--out", os.path.join(home, "like")])
    nan = 0
    if code == 0:
        with open(os.path.join(home, "like", "similar.csv")) as f:
            nan = sum(not math.isfinite(float(r["similarity"])) for r in csv.DictReader(f))
        with open(os.path.join(home, "like", "similar.html"), "rb") as f:
            page = f.read()
    embedded_secret = int(code == 0 and contains_magenta(page))
    row("similar --out", "a NaN vector, a row naming ../private/secret.jpg, a deleted gallery image", code, output,
        time.perf_counter() - started, served=embedded_secret, nan=nan)
    with open(os.path.join(out, "embeddings.faiss.npz"), "wb") as f:
        f.write(b"PK\x03\x04 damaged")
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "similar", "--scored", out, "--query", names_[0], "--method", "faiss"])
    row("similar --method faiss", "a damaged embeddings.faiss.npz (rebuilt)", code, output, time.perf_counter() - started)
    empty = pa.table({"image": pa.array([], pa.string()), "vector": pa.FixedSizeListArray.from_arrays(pa.array([], pa.float16()), 4)})
    pq.write_table(empty.replace_schema_metadata({"beholder.dimension": "4"}), parquet)
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "similar", "--scored", out, "--query", names_[0]])
    row("similar", "an empty embeddings.parquet (one line, exit 2)", code, output, time.perf_counter() - started, stopped=0)

    labelled = os.path.join(home, "panoramas")
    make_gallery(labelled, count=40)
    cache = os.path.join(home, "cache")
    tiny = ["backbone.name=test_efficientnet", "backbone.pretrained=false", "backbone.trainable_blocks=0", "head=regression",
            "data.image_size=[32,64]", "data.num_workers=0", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
            f"gallery={labelled}", f"labels={labelled}/labels.csv", f"feature_cache={cache}"]
    beholder_cli(["train.py", *tiny, f"output_dir={home}/run1"], timeout=600)
    entries = sorted(os.path.join(d, n) for d, _, fs in os.walk(cache) for n in fs if n.endswith(".npy"))
    np.save(entries[0], np.full(np.load(entries[1]).shape, np.nan, dtype=np.float32))
    np.save(entries[1], np.zeros(3, dtype=np.float32))
    with open(entries[2], "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
    started = time.perf_counter()
    code, output = beholder_cli(["train.py", *tiny, f"output_dir={home}/run2"], timeout=600)
    nan = non_finite_weights(os.path.join(home, "run2", "checkpoints", "best.ckpt"))
    damaged = next((line.split()[1] for line in output.splitlines() if "damaged entries" in line), "0")
    row("train.py feature_cache=", f"cache entries: NaN, 3 floats, a header of 2^40 floats ({damaged} recomputed)", code, output,
        time.perf_counter() - started, nan=nan)

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    weight = next(k for k in checkpoint["state_dict"] if k.startswith("net.head") and k.endswith("weight"))
    checkpoint["state_dict"][weight].view(-1)[0] = float("nan")
    broken = os.path.join(home, "nan.ckpt")
    torch.save(checkpoint, broken)
    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={broken}", f"gallery={gallery}", f"output={home}/nan-out",
                                 f"hydra.run.dir={work}/h-nan"], timeout=600)
    row("predict.py", "a checkpoint with one NaN head weight (one line, exit 2)", code, output, time.perf_counter() - started,
        nan=nan_scores(os.path.join(home, "nan-out", "scores.csv")), stopped=0)
    started = time.perf_counter()
    code, output = beholder_cli(["train.py", "experiment=personal", f"base_ckpt={broken}", *tiny[4:], "data.score_column=beauty_mean",
                                 f"output_dir={home}/personal"], timeout=600)
    written = os.path.join(home, "personal", "checkpoints", "best.ckpt")
    row("train.py experiment=personal", "a base checkpoint with one NaN head weight (one line, exit 2)", code, output,
        time.perf_counter() - started, nan=int(os.path.exists(written)), stopped=0)
    return rows


EDITOR = """
import os, re, sys, time
path, edits = sys.argv[1], int(sys.argv[2])
undone = 0
for k in range(1, edits + 1):
    with open(path, "rb") as f:
        data = f.read()
    if k > 1 and b'xmp:Nickname="edit %d"' % (k - 1) not in data:
        undone += 1  # the edit this editor saved last is gone: another program replaced it with an older merge
    data = re.sub(rb'xmp:Nickname="[^"]*"', b'xmp:Nickname="edit %d"' % k, data)
    with open(path + ".editor-tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".editor-tmp", path)  # saved whole, as editors save
    time.sleep(0.002)
print(undone)
"""

PEAK = """
import atexit, resource, runpy, sys
atexit.register(lambda: print(f"peak RSS MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", file=sys.stderr))
sys.argv = ["beholder", *sys.argv[1:]]
runpy.run_module("beholder", run_name="__main__")
"""


def peak_cli(args, **kwargs):
    """A beholder command as a user runs it, and its peak memory: (exit code, output, MB)."""
    run = subprocess.run([PYTHON, "-c", PEAK, *args], env=env(), capture_output=True, text=True, cwd=kwargs.pop("cwd", REPO), **kwargs)
    peak = next((float(line.split()[-1]) for line in run.stderr.splitlines() if line.startswith("peak RSS MB")), math.nan)
    return run.returncode, run.stdout + run.stderr.replace(f"peak RSS MB {peak:.0f}", ""), peak


def scores_by_image(path):
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {row["image"]: float(row["score"]) for row in csv.DictReader(f)}


def differing(scores, reference, tolerance=1e-4):
    """Photos whose score is not the reference run's (absent ones count too)."""
    return sum(abs(scores.get(image, math.inf) - score) > tolerance for image, score in reference.items())


def rating_of(path):
    from beholder.ratings.xmp import read_rating

    with open(path, "rb") as f:
        values = read_rating(f.read())
    return values["rating"], values["label"]


def variant(ckpt, target, shift):
    """The same network with another head bias: another model, other scores."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    bias = next(k for k in checkpoint["state_dict"] if k.startswith("net.head") and k.endswith("bias"))
    checkpoint["state_dict"][bias] += shift
    torch.save(checkpoint, target)
    return target


def library_experiment(work, ckpt, photos):
    """A photographer's library as it is (issue 30): folders linked to another drive, everyday folder
    and file names, an editor saving while beholder merges, two runs at once, crafted checkpoints and
    damaged earlier results, each through its command on real photos."""
    from PIL import Image

    from beholder.core.storage import Store, file_digest
    from beholder.decisions.review import Review
    from beholder.decisions.tournament import Tournament
    from beholder.ratings.xmp import sidecar_targets, write_sidecars

    home = os.path.join(work, "library")
    gallery, other, fake_home = os.path.join(home, "Pictures"), os.path.join(home, "Other drive", "2019"), os.path.join(home, "home")
    names = sorted(os.listdir(photos))
    for i, name in enumerate(names[:40]):
        os.makedirs(os.path.join(gallery, f"2026/0{i % 3 + 1}"), exist_ok=True)
        shutil.copy(os.path.join(photos, name), os.path.join(gallery, f"2026/0{i % 3 + 1}", name))
    os.makedirs(other)
    os.makedirs(fake_home)
    shutil.copy(os.path.join(photos, names[40]), os.path.join(other, "beach.jpg"))
    rated = ("<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
             "<rdf:Description rdf:about='' xmlns:xmp='http://ns.adobe.com/xap/1.0/' {}/></rdf:RDF></x:xmpmeta>")
    with open(os.path.join(other, "beach.xmp"), "w") as f:
        f.write(rated.format('xmp:Rating="5"'))
    os.symlink(other, os.path.join(gallery, "from the other drive"))
    outside = snapshot(os.path.join(home, "Other drive"))
    rows = []
    row = functools.partial(surface_row, rows)
    clean = os.path.join(home, "clean")
    beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={gallery}", f"output={clean}", "feature_cache=null",
                  f"hydra.run.dir={work}/h-clean"], timeout=600)
    reference = scores_by_image(os.path.join(clean, "scores.csv"))

    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={gallery}", f"output={home}/beside", "xmp=true",
                                 "xmp_beside_images=true", "xmp_stars=true", "feature_cache=null", f"hydra.run.dir={work}/h-link"], timeout=600)
    row("predict.py xmp_beside_images=true", "a sub-folder linked to another library holding a rated sidecar", code, output,
        time.perf_counter() - started, changed(outside, snapshot(os.path.join(home, "Other drive"))))
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "ratings", "write", "--scored", f"{home}/beside/scores.csv", "--gallery", gallery, "--stars"], timeout=300)
    row("ratings write", "the same linked sub-folder", code, output, time.perf_counter() - started,
        changed(outside, snapshot(os.path.join(home, "Other drive"))))

    def photos_in(folder):
        return sorted(n for n in os.listdir(os.path.join(gallery, folder)) if not n.endswith(".xmp"))

    image = "2026/01/" + photos_in("2026/01")[0]
    sidecar = os.path.join(gallery, os.path.splitext(image)[0] + ".xmp")
    with open(sidecar, "w") as f:
        f.write(rated.format('xmp:Rating="3" xmp:Nickname="edit 0"'))
    targets = sidecar_targets([image], [os.path.relpath(sidecar, gallery)])
    editor = subprocess.Popen([PYTHON, "-c", EDITOR, sidecar, "300"], stdout=subprocess.PIPE, text=True)
    started, merges, store = time.perf_counter(), 0, Store()
    while editor.poll() is None:  # merge as often as beholder can while the editor saves its 300 edits
        write_sidecars(store, [{"image": image, "rank": 1, "band": "keep", "score": 0.9}], {image: [os.path.join(gallery, n) for n in targets[image]]},
                       1, False, gallery, gallery)
        merges += 1
    undone = int(editor.communicate()[0])
    row("ratings write (merge into sidecars)", f"an editor saving one sidecar 300 times while beholder merged into it {merges} times", 0,
        f"beholder: {undone} of the editor's 300 edits undone", time.perf_counter() - started, fields=undone)

    cases = os.path.join(home, "Cases")
    sources = [os.path.join(photos, n) for n in names[41:45]]
    for name, source in zip(["IMG.JPG", "img.jpg", "pair.jpg", "pair.tif"], sources):
        Image.open(source).convert("RGB").save(os.path.join(os.makedirs(cases, exist_ok=True) or cases, name))
    with open(os.path.join(cases, "img.jpg.xmp"), "w") as f:
        f.write(rated.format('xmp:Rating="2"'))
    with open(os.path.join(cases, "pair.xmp"), "w") as f:
        f.write(rated.format('xmp:Rating="4"'))
    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={cases}", f"output={home}/cases", "xmp=true",
                                 "xmp_beside_images=true", "feature_cache=null", f"hydra.run.dir={work}/h-cases"], timeout=600)
    beholder_cli(["beholder", "ratings", "import", cases, "--gallery", cases, "--out", f"{home}/cases.csv"], timeout=300)
    with open(f"{home}/cases.csv") as f:
        imported = {r["image"]: r["rating"] for r in csv.DictReader(f)}
    wrong = sum(imported.get(k) != v for k, v in {"img.jpg": "2", "pair.jpg": "4", "pair.tif": "4"}.items()) + int("IMG.JPG" in imported)
    row("predict.py xmp_beside_images=true; ratings import", "IMG.JPG + img.jpg + img.jpg.xmp (2 stars); pair.jpg + pair.tif + pair.xmp (4 stars)",
        code, output, time.perf_counter() - started, fields=wrong)

    folder = os.path.join(gallery, "2026/02")
    mine = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".xmp")][:5]
    for path in mine:  # the photographer clears the stars and the label beholder set
        with open(path, "rb") as f:
            data = f.read()
        data = re.sub(rb'xmp:Rating="\d"', b'xmp:Rating="0"', data)
        with open(path, "wb") as f:
            f.write(re.sub(rb' xmp:Label="\w+"', b"", data))
    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={gallery}", f"output={home}/beside", "xmp=true",
                                 "xmp_beside_images=true", "xmp_stars=true", "feature_cache=null", f"hydra.run.dir={work}/h-cleared"], timeout=600)
    row("predict.py xmp_beside_images=true (again)", "5 sidecars whose stars and label the photographer cleared since", code, output,
        time.perf_counter() - started, fields=sum(rating_of(path) != (0, "") for path in mine))

    everyday = os.path.join(home, "Tom's wedding, Trip [2024] day=1 ${oc.env:HOME}")
    shutil.copytree(os.path.join(gallery, "2026/03"), os.path.join(everyday, "photos"))
    before_home = snapshot(fake_home)
    started = time.perf_counter()
    run = subprocess.run([PYTHON, "-m", "beholder", "predict", *FAST, f"ckpt={ckpt}", f"gallery={everyday}/photos", f"output={everyday}/culled",
                          "feature_cache=null", f"hydra.run.dir={work}/h-everyday"], env={**env(), "HOME": fake_home},
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    row("beholder predict", "gallery= and output= in a folder named Tom's wedding, Trip [2024] day=1 ${oc.env:HOME}", run.returncode,
        run.stdout + run.stderr, time.perf_counter() - started, changed(before_home, snapshot(fake_home)),
        stopped=int(run.returncode != 0 or not os.path.exists(f"{everyday}/culled/scores.csv")))

    second = variant(ckpt, os.path.join(home, "other.ckpt"), 1.0)
    alone = {}
    for name, model in (("first", ckpt), ("second", second)):
        beholder_cli(["predict.py", *FAST, f"ckpt={model}", f"gallery={gallery}", f"output={home}/{name}-alone", "feature_cache=null",
                      f"hydra.run.dir={work}/h-{name}"], timeout=600)
        alone[name] = scores_by_image(f"{home}/{name}-alone/scores.csv")
    started = time.perf_counter()
    both = [subprocess.Popen([PYTHON, os.path.join(REPO, "predict.py"), *FAST, f"ckpt={model}", f"gallery={gallery}", f"output={home}/shared",
                              "feature_cache=null", f"hydra.run.dir={work}/h-both{i}"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for i, model in enumerate((ckpt, second))]
    outputs = [process.communicate()[0] for process in both]
    final = scores_by_image(f"{home}/shared/scores.csv")
    mixed = min(differing(final, alone["first"]), differing(final, alone["second"]))
    refused = next((o for p, o in zip(both, outputs) if p.returncode), "")
    row("predict.py, twice at once", "two checkpoints into one local output at the same time", max(p.returncode for p in both),
        refused or outputs[0], time.perf_counter() - started, mixed=mixed, stopped=0)
    run_json = f"{home}/shared/.beholder-partial/run.json"
    with open(run_json) as f:
        bound = f.read()
    winner = ckpt if differing(final, alone["first"]) == 0 else second
    loser = second if winner == ckpt else ckpt
    with open(run_json, "w") as f:  # the other run has just bound the output (an S3 output has no lock)
        f.write(bound.replace(file_digest(str(winner)), file_digest(str(loser))))
    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={loser}", f"gallery={gallery}", f"output={home}/shared", "feature_cache=null",
                                 f"hydra.run.dir={work}/h-rebound"], timeout=600)
    row("predict.py", "an output whose earlier rows another model scored, bound to this model meanwhile", code, output,
        time.perf_counter() - started, mixed=differing(scores_by_image(f"{home}/shared/scores.csv"), alone["first" if loser == ckpt else "second"]))

    review = Review(os.path.join(home, "review.sqlite"))
    keys = ["2026/01/" + photos_in("2026/01")[1], "../../etc/passwd", "/etc/hostname", "2026/../../x.jpg", "./2026/02/" + photos_in("2026/02")[0],
            "2026//03/" + photos_in("2026/03")[0], "2026/01/deleted.jpg"]
    review.load([{"image": key, "band": "review", "score": 0.5, "rank": i + 1} for i, key in enumerate(keys)])
    for image_id in review.keys():
        review.decide("me", image_id, keep=True)
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "ratings", "import", gallery, "--gallery", gallery, "--review", os.path.join(home, "review.sqlite"),
                                 "--out", f"{home}/reviewed.csv"], timeout=300)
    with open(f"{home}/reviewed.csv") if code == 0 else open(os.devnull) as f:
        labelled = [r["image"] for r in csv.DictReader(f) if r["source"] == "review"]
    false = sum(not os.path.isfile(os.path.join(gallery, image)) or image != os.path.normpath(image) for image in labelled) + len(labelled) - len(set(labelled))
    row("ratings import --review", "keys ../../etc/passwd, /etc/hostname, 2026/../../x.jpg, ./2026/02/…, 2026//03/…, a deleted photo", code, output,
        time.perf_counter() - started, nan=false)
    Tournament(os.path.join(home, "labels.sqlite")).sync_images(keys[:1])
    started = time.perf_counter()
    code, output = beholder_cli(["beholder", "ratings", "import", gallery, "--gallery", gallery, "--review", os.path.join(home, "labels.sqlite"),
                                 "--out", f"{home}/x.csv"], timeout=300)
    row("ratings import --review", "a labeller's database instead of a review's (one line, exit 2)", code, output, time.perf_counter() - started,
        stopped=int(code != 2 or output.strip().count("\n") > 0))
    code, output = beholder_cli(["beholder", "ratings", "import", gallery, "--gallery", gallery, "--review", os.path.join(home, "review.sqlite"),
                                 "--tiers", "1:0,2:0,3:1,4:2,5:3", "--out", f"{home}/y.csv"], timeout=300)
    row("ratings import --review --tiers", "tiers without reject", code, output, time.perf_counter() - started)

    frozen = os.path.join(home, "frozen.ckpt")
    save_checkpoint(BeholderModule({"name": "efficientnet_lite0", "pretrained": False, "trainable_blocks": 0}, HEAD, OPTIMIZER, [224, 224]), frozen)
    planted = os.path.join(home, "work-folder")
    os.makedirs(planted)
    beholder_cli(["predict.py", *FAST, f"ckpt={frozen}", f"gallery={gallery}", f"output={home}/frozen-clean", "feature_cache=null",
                  f"hydra.run.dir={work}/h-frozen"], timeout=600)
    beholder_cli(["predict.py", *FAST, f"ckpt={frozen}", f"gallery={gallery}", f"output={home}/frozen-plant", f"feature_cache={planted}/outputs/feature_cache",
                  f"hydra.run.dir={work}/h-plant"], timeout=600)
    entries = sorted(os.path.join(d, n) for d, _, fs in os.walk(os.path.join(planted, "outputs")) for n in fs if n.endswith(".npy"))
    vectors = [np.load(e) for e in entries]
    for entry, vector in zip(entries, vectors[1:] + vectors[:1]):  # every photo given another's features
        np.save(entry, vector)
    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={frozen}", f"gallery={gallery}", f"output={home}/frozen-default",
                                 f"hydra.run.dir={work}/h-default"], cwd=planted, timeout=600)
    row("predict.py (default feature_cache)", f"run from a folder holding a planted outputs/feature_cache ({len(entries)} entries, each another photo's)",
        code, output, time.perf_counter() - started,
        nan=differing(scores_by_image(f"{home}/frozen-default/scores.csv"), scores_by_image(f"{home}/frozen-clean/scores.csv")))

    partial = f"{home}/clean/.beholder-partial"
    shard = next(os.path.join(partial, n) for n in os.listdir(partial) if n.startswith("scores-"))
    with open(shard, "rb") as f:
        lines = f.read().split(b"\n")
    header = lines[0].split(b",")
    for number, (column, value) in enumerate([(b"score", b"1e308"), (b"score", b"nan"), (b"score", b"abc"), (b"embedding", b"not base64!"),
                                              (b"score", b"0.5\xff\xfe")], start=1):
        cells = lines[number].split(b",")
        cells[header.index(column)] = value
        lines[number] = b",".join(cells)
    with open(shard, "wb") as f:
        f.write(b"\n".join(lines))
    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={gallery}", f"output={home}/clean", "feature_cache=null",
                                 f"hydra.run.dir={work}/h-damaged"], timeout=600)
    row("predict.py (rerun)", "rows of .beholder-partial with score 1e308, nan, abc, an embedding not base64, bytes not UTF-8", code, output,
        time.perf_counter() - started, nan=differing(scores_by_image(f"{home}/clean/scores.csv"), reference))

    names_folder = os.path.join(home, "Names")
    shutil.copytree(os.path.join(gallery, "2026/01"), names_folder)
    shutil.copy(os.path.join(photos, names[0]), os.path.join(os.fsencode(names_folder), b"caf\xe9.jpg"))
    shutil.copy(os.path.join(photos, names[1]), os.path.join(names_folder, "line\rbreak.jpg"))
    with open(os.path.join(os.fsencode(names_folder), b"caf\xe9.xmp"), "w") as f:
        f.write(rated.format('xmp:Rating="5"'))
    started, codes = time.perf_counter(), []
    for attempt in range(2):
        code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={names_folder}", f"output={home}/names", "feature_cache=null",
                                     f"hydra.run.dir={work}/h-names{attempt}"], timeout=600)
        codes.append(code)
    imported, printed = beholder_cli(["beholder", "ratings", "import", names_folder, "--gallery", names_folder, "--out", f"{home}/names.csv"], timeout=300)
    row("predict.py twice; ratings import", "a file name that is not UTF-8 (caf\\xe9.jpg, with a sidecar) and one holding a CR", max(codes + [imported]),
        output, time.perf_counter() - started, stopped=sum(c != 0 for c in codes + [imported]))

    crafted = {
        "weights from a file": lambda c: c.update(weight_references={"net.backbone.": {"name": "efficientnet_lite0", "weights": "/etc/passwd"}}),
        "weights from the model hub": lambda c: c.update(weight_references={"net.backbone.": {"name": "efficientnet_lite0", "weights": ""}}),
        "references as a list": lambda c: c.update(weight_references=["net.backbone."]),
        "references as a string": lambda c: c.update(weight_references="net.backbone."),
        "a giant timm network": lambda c: c["hyper_parameters"]["backbone"].update(name="vit_giant_patch14_clip_224"),
        "image_size 60000x60000": lambda c: c["hyper_parameters"].update(image_size=[60000, 60000]),
        "group_similarity -1": lambda c: c.update(group_similarity=-1.0),
        "group_similarity NaN": lambda c: c.update(group_similarity=math.nan),
    }
    for what, change in crafted.items():
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        change(checkpoint)
        path = os.path.join(home, "crafted.ckpt")
        torch.save(checkpoint, path)
        started = time.perf_counter()
        code, output, peak = peak_cli(["predict", *FAST, f"ckpt={path}", f"gallery={gallery}", f"output={home}/crafted", f"hydra.run.dir={work}/h-crafted"],
                                      timeout=600)
        one_line = code == 2 and output.strip().count("\n") == 0
        row("beholder predict", f"a checkpoint with {what} (one line, exit 2; peak RSS {peak:.0f} MB)", code, output, time.perf_counter() - started,
            stopped=int(not one_line))

    big = os.path.join(home, "Big")
    os.makedirs(big)
    for i in range(8):
        Image.open(os.path.join(photos, names[i])).convert("RGB").resize((6000, 4000)).save(os.path.join(big, f"big{i}.jpg"), quality=92)
    with open(f"{home}/big-scores.csv", "w") as f:
        f.write("image,score,band,rank\n" + "".join(f"big{i}.jpg,0.5,review,{i + 1}\n" for i in range(8)))
    port = free_port()
    server = subprocess.Popen([PYTHON, "-m", "beholder", "review", "--scored", f"{home}/big-scores.csv", "--gallery", big, "--db",
                               os.path.join(home, "big.sqlite"), "--port", str(port)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: port_open(port) or server.poll() is not None, timeout=120)
    started = time.perf_counter()
    http_get(f"http://127.0.0.1:{port}/image/1")
    before = rss_mb(server.pid)
    answered = sum(http_get(f"http://127.0.0.1:{port}/image/{i}?size=full")[0] == 200 for i in range(1, 9))
    after_eight = rss_mb(server.pid)
    for _ in range(2):  # again: nothing full-size was kept, so each is decoded again and memory stays where it was
        for i in range(1, 9):
            http_get(f"http://127.0.0.1:{port}/image/{i}?size=full")
    resident = rss_mb(server.pid)
    server.terminate()
    server.communicate()
    row("beholder review", f"24 requests for 8 full-size 24-MP photos ({answered} answered; RSS {before:.0f} MB before, "
        f"{after_eight:.0f} MB after 8, {resident:.0f} MB after 24)", 0, "served", time.perf_counter() - started)

    started = time.perf_counter()
    code, output = beholder_cli(["predict.py", *FAST, f"ckpt={ckpt}", f"gallery={home}/no such folder", f"output={home}/never-made",
                                 f"hydra.run.dir={work}/h-missing"], timeout=600)
    row("predict.py", "a gallery that does not exist (one line, exit 2, output not made)", code, output, time.perf_counter() - started,
        written=int(os.path.exists(f"{home}/never-made")), stopped=int(code != 2 or output.strip().count("\n") > 0))
    return rows


def non_finite_weights(path):
    """Numbers in a trained checkpoint's weights that are not finite (0 when none was written)."""
    if not os.path.exists(path):
        return 0
    weights = torch.load(path, map_location="cpu", weights_only=True)["state_dict"].values()
    return sum(int((~torch.isfinite(t)).sum()) for t in weights if t.is_floating_point())


def nan_scores(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(not math.isfinite(float(r["score"])) for r in csv.DictReader(f))


def magenta(jpeg: bytes) -> bool:
    """A served or embedded picture that is the private photo (all of it one colour)."""
    import io

    import numpy as np
    from PIL import Image

    try:
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB").resize((8, 8)), dtype=int).reshape(-1, 3)
    except OSError:
        return False
    return bool((np.abs(pixels - np.array(SECRET_COLOUR)) < 40).all())


def contains_magenta(page: bytes) -> bool:
    import base64
    import re

    return any(magenta(base64.b64decode(data)) for data in re.findall(rb"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page))


def port_open(port):
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def http_post(url, body: bytes, declared: int | None = None) -> int:
    """POST ``body`` as JSON, announcing ``declared`` bytes (default its length); the status."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    connection.putrequest("POST", where.path)
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(declared if declared is not None else len(body)))
    connection.endheaders()
    try:
        connection.send(body)
    except OSError:
        pass
    status = connection.getresponse().status
    connection.close()
    return status


SURFACE_HEADER = ["surface", "hostile input", "exit: last line", "files written outside", "images served outside",
                  "photographer's fields changed", "runs stopped by one bad input", "NaN or false results", "mixed-model results", "seconds"]


def surface_row(rows, surface, hostile, code, output, seconds, written=0, served=0, fields=0, nan=0, mixed=0, stopped=None):
    """One row of the surfaces table: a refusal (exit 2, one line) stops no run unless ``stopped`` says so."""
    stopped = int(code != 0) if stopped is None else stopped
    rows.append([surface, hostile, f"{code}: {last_line(output)}", written, served, fields, stopped, nan, mixed, f"{seconds:.1f}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--only", choices=["surfaces"], help="run only this experiment (and publish only its section)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="beholder-faults-")
    photos = os.path.join(SHARED, "photos")
    ckpt = os.path.join(work, "lite0.ckpt")
    save_checkpoint(make_module("efficientnet_lite0", [224, 224]), ckpt)

    surfaces = surfaces_experiment(work, ckpt, photos) + library_experiment(work, ckpt, photos)
    publish("faults-surfaces", "Hostile input on ratings, sidecars, review, search, caches (bench/faults.py)",
            "Each hostile input through its command on a folder of 40 real photos (shared/data/photos) with a private "
            "folder and another library beside it; a one-line refusal with exit 2 is the right answer where a row says so:\n\n"
            + markdown_table(SURFACE_HEADER, surfaces), write=not args.no_write)
    if args.only:
        shutil.rmtree(work, ignore_errors=True)
        return
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
        "`kill -9` of `train.py` mid-epoch (efficientnet_lite0 on 120 demo panoramas), then `resume=last`:\n\n"
        + markdown_table(["last.ckpt epoch", "its global step", "resumed", "final epoch", "final global step", "expected final step"], train_rows),
        "A gallery of broken and odd files (truncated, empty, text named .jpg, a PNG declaring 30,000x30,000, CMYK, grayscale, palette):\n\n"
        + markdown_table(["files", "scored", "skipped", "skipped files", "crashes", "peak RSS of a predict process MB"], bad_rows),
        "The labeller's server (`beholder label`, 120 images): one set posted by 10 clients at once, 20 times over:\n\n"
        + markdown_table(["posts", "accepted", "decision rows", "expected rows"], [same_set]),
        "10 raters submitting 15 sets each in parallel:\n\n"
        + markdown_table(["honest submissions", "accepted", "refused", "decision rows", "expected rows"], [parallel]),
        "A page on another origin opened in Chromium (15 cross-site undo forms and 15 no-cors fetches), a request with "
        "`Host: attacker.example`, and 50 `GET /api/state` of a new rater:\n\n"
        + markdown_table(["cross-site page", "rater's judged images before", "after", "status for a foreign Host", "sets created by GETs"], [cross]),
        "10 concurrent requests for two 81-megapixel PNGs (9000x9000) on the labeller:\n\n"
        + markdown_table(["requests", "answered 200", "server peak RSS before MB", "after MB", "seconds"], [memory]),
        "`beholder ingest` of a hostile archive (4 links with encoded `..` or `/`, a 302 to another site, a file "
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
