"""Technical quality (issue 31): what a photographer drops first, on degraded copies of real photos and
on real blurred and mis-exposed frames.

    python bench/technical.py calibrate   # fit beholder/technical/calibration.json (a few minutes)
    python bench/technical.py             # measure it (rows in bench/RESULTS.md, "technical")

The real photos of shared/data/oasis and shared/data/photos are split in two by a hash of their names:
the calibration half trains the head and sets its thresholds, the held-out half is only measured.
Each photo is degraded at three severities of five failures (beholder/technical/degrade.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
from multiprocessing import Pool

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beholder.data.gallery import build_transform  # noqa: E402
from beholder.data.scores import FILE as SCORES  # noqa: E402
from beholder.data.scores import read_scores  # noqa: E402
from beholder.technical import REASONS  # noqa: E402
from beholder.technical.degrade import DEGRADATIONS, SEVERITIES, as_jpeg  # noqa: E402
from beholder.technical.judge import CALIBRATION, CLASSES, FINE, Head, shipped_head, verdicts  # noqa: E402
from beholder.technical.measures import measure  # noqa: E402
from bench.common import REPO, SHARED, commit, markdown_table, publish  # noqa: E402

KINDS = {"focus": "defocus", "shake": "camera shake", "highlights": "over-exposure", "shadows": "under-exposure", "noise": "noise"}
SOURCES = ("oasis/images", "photos")
REJECT_SHARE, REVIEW_SHARE = 0.03, 0.045  # of the calibration half's untouched photos (out of fold): rejected, sent to review


def real_photos() -> list[str]:
    return [os.path.join(SHARED, source, name) for source in SOURCES for name in sorted(os.listdir(os.path.join(SHARED, source)))]


def held_out(path: str) -> bool:
    return hashlib.sha256(os.path.basename(path).encode()).digest()[0] % 2 == 1


def read_rgb(path: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1])


def degraded(path: str):
    """(kind, severity, RGB) of the photo and each of its degraded copies, each saved as a JPEG; the
    randomness is the photo's own."""
    rgb = read_rgb(path)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little"))
    yield FINE, "", as_jpeg(rgb)
    for kind, degrade in DEGRADATIONS.items():
        for severity in SEVERITIES:
            yield kind, severity, as_jpeg(degrade(rgb, severity, rng))


def measured(path: str) -> list[dict]:
    cv2.setNumThreads(1)
    return [{"photo": os.path.basename(path), "kind": kind, "severity": severity, "features": measure(rgb).tolist()}
            for kind, severity, rgb in degraded(path)]


def measure_all(paths: list[str], cache: str) -> list[dict]:
    """Every photo's and copy's measures, kept in ``cache`` (a JSON file keyed by the measures' code)."""
    key = hashlib.sha256(b"".join(open(os.path.join(REPO, "beholder", "technical", name), "rb").read()
                                  for name in ("measures.py", "degrade.py"))).hexdigest()[:16]
    stored = json.load(open(cache)) if os.path.exists(cache) else {}
    if stored.get("key") != key:
        stored = {"key": key, "rows": {}}
    missing = [path for path in paths if os.path.basename(path) not in stored["rows"]]
    with Pool(os.cpu_count()) as pool:
        for path, rows in zip(missing, pool.imap(measured, missing, chunksize=4)):
            stored["rows"][os.path.basename(path)] = rows
    with open(cache, "w") as f:
        json.dump(stored, f)
    return [row for path in paths for row in stored["rows"][os.path.basename(path)]]


def fit_head(rows: list[dict], folds: int = 5) -> Head:
    """The head on all ``rows``; its thresholds from the untouched photos' out-of-fold scores (a head
    scores the photos it was trained on cleaner than new ones: thresholds read off those flagged twice
    the share they were set for on new photos)."""
    photos = sorted({row["photo"] for row in rows})
    fold_of = {photo: i % folds for i, photo in enumerate(photos)}
    bad = []
    for fold in range(folds):
        head = fit_weights([row for row in rows if fold_of[row["photo"]] != fold])
        untouched = np.array([row["features"] for row in rows if row["kind"] == FINE and fold_of[row["photo"]] == fold])
        bad.extend(1 - head.probabilities(untouched)[:, 0])
    head = fit_weights(rows)
    return Head(head.mean, head.scale, head.weights, head.bias, float(np.quantile(bad, 1 - REJECT_SHARE)),
                float(np.quantile(bad, 1 - REVIEW_SHARE)), "")


def fit_weights(rows: list[dict], penalty: float = 1e-3) -> Head:
    """Multinomial logistic regression on the standardised measures: untouched photos against each
    failure at moderate and strong severity (mild copies are left out of training: many are fine);
    the untouched photos weigh as much as each failure's copies together."""
    train = [row for row in rows if row["severity"] != "mild"]
    x = np.array([row["features"] for row in train], np.float64)
    y = np.array([CLASSES.index(row["kind"]) for row in train])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    inputs, targets = torch.tensor((x - mean) / scale), torch.tensor(y)
    weight = torch.tensor(np.where(y == 0, 2.0 * len(SEVERITIES[1:]), 1.0))
    w = torch.zeros(x.shape[1], len(CLASSES), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(CLASSES), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=1000, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = (torch.nn.functional.cross_entropy(inputs @ w + b, targets, reduction="none") * weight).sum() / weight.sum()
        value = value + penalty * (w ** 2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return Head(mean, scale, w.detach().numpy(), b.detach().numpy(), 1.0, 1.0, "")


def calibrate(args) -> None:
    photos = [path for path in real_photos() if not held_out(path)]
    rows = measure_all(photos, os.path.join(args.work, "measures.json"))
    head = fit_head(rows)
    target = os.path.join(REPO, "beholder", "technical", CALIBRATION)
    about = {
        "made_by": "python bench/technical.py calibrate", "commit": commit(),
        "photos": f"{len(photos)} real photos of shared/data/{' and shared/data/'.join(SOURCES)} (the calibration half, by a hash of the name)",
        "copies": {KINDS[kind]: ", ".join(SEVERITIES) for kind in DEGRADATIONS},
        "trained_on": "untouched photos against each failure at moderate and strong severity",
        "thresholds": f"reject: {REJECT_SHARE:.1%} of the calibration half's untouched photos score this high out of fold (5 folds); "
                      f"review: {REVIEW_SHARE:.1%}",
    }
    with open(target, "w") as f:
        json.dump({"about": about, "head": head.state()}, f, indent=1)
        f.write("\n")
    print(f"beholder: calibrated on {len(photos)} photos x {len(rows) // len(photos)} versions: reject >= {head.reject:.3f}, "
          f"review >= {head.review:.3f} -> {target}")


def laplacian_variance(path: str) -> float:
    """The classic blur test: the variance of the Laplacian of the photo's luma, at its own size."""
    return float(cv2.Laplacian(cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.float32), cv2.CV_32F).var())


def write_versions(photos: list[str], folder: str) -> dict[str, tuple[str, str, str]]:
    """Each photo and its degraded copies as JPEG files under ``folder``: {relative path: (photo, kind, severity)}."""
    written = {}
    for path in photos:
        stem = os.path.splitext(os.path.basename(path))[0]
        for kind, severity, rgb in degraded(path):
            name = f"{stem}/{kind}{'-' + severity if severity else ''}.jpg"
            os.makedirs(os.path.join(folder, stem), exist_ok=True)
            cv2.imwrite(os.path.join(folder, name), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
            written[name] = (stem, kind, severity)
    return written


def beholder_predict(gallery: str, output: str, *extra: str) -> dict[str, dict]:
    """``beholder predict`` with the default model, as a user runs it: scores.csv's rows by image."""
    run = subprocess.run([sys.executable, "-m", "beholder", "predict", f"gallery={gallery}", f"output={output}", "feature_cache=null",
                          "trainer.enable_progress_bar=false", f"hydra.run.dir={output}/hydra", *extra],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    path = os.path.join(output, SCORES)
    with open(path, newline="") as f:
        return {row["image"]: row for row in read_scores(f.read(), path)}


def share(values) -> str:
    values = list(values)
    return f"{np.mean(values):.0%}" if values else "-"


def synthetic_rows(args) -> tuple[list[list], list[list]]:
    """On held-out photos: the verdicts from the measures alone (every held-out photo), and, through
    beholder predict, the order and decisions (the first ``args.photos`` of them)."""
    held = [path for path in real_photos() if held_out(path)]
    head = shipped_head()
    rows = measure_all(held, os.path.join(args.work, "measures-held.json"))
    found = verdicts(head.probabilities(np.array([row["features"] for row in rows])), list(REASONS), head.reject, head.review)
    measured = []
    for kind in (FINE, *DEGRADATIONS):
        for severity in ([""] if kind == FINE else SEVERITIES):
            picked = [v for row, v in zip(rows, found) if row["kind"] == kind and row["severity"] == severity]
            right = share(v.band == "reject" and v.failure == kind for v in picked) if kind != FINE else "-"
            measured.append([KINDS.get(kind, "untouched"), severity or "-", len(picked), right, share(v.band == "reject" for v in picked),
                             share(v.band is not None for v in picked)])

    photos = held[: args.photos]
    gallery = os.path.join(args.work, "held-out gallery")
    versions = write_versions(photos, gallery)
    scored = beholder_predict(gallery, os.path.join(args.work, "held-out scored"))
    by_photo = {}
    for name, (stem, kind, severity) in versions.items():
        by_photo.setdefault(stem, {})[(kind, severity)] = name
    laplacian = {name: laplacian_variance(os.path.join(gallery, name)) for name in versions}
    blur_cut = np.quantile([laplacian[v[(FINE, "")]] for v in by_photo.values()], 0.05)
    ordered = []
    for kind in DEGRADATIONS:
        for severity in SEVERITIES:
            pairs = [(v[(FINE, "")], v[(kind, severity)]) for v in by_photo.values()]
            ordered.append([KINDS[kind], severity, len(pairs),
                            share(int(scored[o]["rank"]) < int(scored[c]["rank"]) for o, c in pairs),
                            share(scored[c]["band"] == "reject" and scored[c]["reason"] == REASONS[kind] for _, c in pairs),
                            share(float(scored[o]["score"]) > float(scored[c]["score"]) for o, c in pairs),
                            share(laplacian[o] > laplacian[c] for o, c in pairs), share(laplacian[c] < blur_cut for _, c in pairs)])
    originals = [v[(FINE, "")] for v in by_photo.values()]
    ordered.append(["untouched", "-", len(originals), "-", share(scored[o]["reason"] in REASONS.values() for o in originals), "-", "-",
                    share(laplacian[o] < blur_cut for o in originals)])
    return measured, ordered


def real_rows(args) -> list[list]:
    """The real sets, through beholder predict (one gallery each)."""
    out = []
    blur = os.path.join(SHARED, "technical", "kwentar_blur")
    with open(os.path.join(blur, "labels.csv")) as f:
        labels = list(csv.DictReader(f))
    scored = beholder_predict(os.path.join(blur, "images"), os.path.join(args.work, "kwentar"))
    scenes = {}
    for row in labels:
        scenes.setdefault(row["scene"], {})[row["kind"]] = scored[row["image"]]
    above = [int(s["sharp"]["rank"]) < min(int(s["defocus"]["rank"]), int(s["motion"]["rank"])) for s in scenes.values()]
    taste = [float(s["sharp"]["score"]) > max(float(s["defocus"]["score"]), float(s["motion"]["score"])) for s in scenes.values()]
    flagged = {kind: [scored[row["image"]]["reason"] for row in labels if row["kind"] == kind] for kind in ("sharp", "defocus", "motion")}
    out.append(["kwentar_blur: sharp frame above both blurred frames of its scene", f"{sum(above)} of {len(above)}",
                f"default model alone: {sum(taste)} of {len(taste)}"])
    for kind, want in (("defocus", "out of focus"), ("motion", "camera shake")):
        out.append([f"kwentar_blur: {kind} frames rejected or sent to review, any reason / this reason",
                    f"{sum(r in REASONS.values() for r in flagged[kind])} / {sum(r == want for r in flagged[kind])} of {len(flagged[kind])}", ""])
    sharp = flagged["sharp"]
    out.append(["kwentar_blur: sharp frames given a technical reason", f"{sum(r in REASONS.values() for r in sharp)} of {len(sharp)}", ""])
    exposure = os.path.join(SHARED, "technical", "mefb_exposure")
    with open(os.path.join(exposure, "labels.csv")) as f:
        labels = [row for row in csv.DictReader(f)]
    scored = beholder_predict(os.path.join(exposure, "images"), os.path.join(args.work, "mefb"))
    for kind, want in (("under", "too dark"), ("over", "blown highlights")):
        clean = [scored[row["image"]]["reason"] for row in labels if row["kind"] == kind and not row["doubt"]]
        doubt = [scored[row["image"]]["reason"] for row in labels if row["kind"] == kind and row["doubt"]]
        out.append([f"mefb_exposure: {kind}-exposed frames given \"{want}\" (rows without a doubt; with one)",
                    f"{sum(r == want for r in clean)} of {len(clean)}; {sum(r == want for r in doubt)} of {len(doubt)}",
                    f"other reasons: {sum(r in REASONS.values() and r != want for r in clean)}"])
    return out


def panorama_rows(args) -> list[list]:
    """The original project's example panoramas (tiers 0-3) scored by the default model: tiled, as
    predict now sees them, and squashed into one square, as it saw them before."""
    from beholder import default_model
    from beholder.data.images import decode_image
    from beholder.models.load import load_checkpoint

    folder = os.path.join(SHARED, "needle", "panoramas")
    module = load_checkpoint(default_model.checkpoint_path())
    tiled = build_transform(module.net.data_config, train=False)
    names = [f"{tier}beauty.jpg" for tier in range(4)]
    rows = []
    with torch.no_grad():
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                picture = decode_image(f.read())
            tiles = tiled(picture)
            whole = tiled.per_tile(picture)[None]
            score = lambda images, count: float(module.net.head.score(module.net.head(module.net.standardise(  # noqa: E731
                module.net.photo_features(images, torch.tensor([count]))))))
            rows.append([name, f"{picture.width}x{picture.height}", len(tiles), f"{score(tiles, len(tiles)):.3f}", f"{score(whole, 1):.3f}"])
    scored = beholder_predict(folder, os.path.join(args.work, "needle"))
    for row in rows:
        row.append(scored[row[0]]["rank"] + f" of {len(scored)}")
    return rows


def measure_and_publish(args) -> None:
    measured, ordered = synthetic_rows(args)
    real = real_rows(args)
    panoramas = panorama_rows(args)
    head = shipped_head()
    body = "\n\n".join([
        f"The head shipped in `beholder/technical/calibration.json` (reject at {head.reject:.3f}, review at {head.review:.3f}), "
        "trained on the calibration half of shared/data/oasis and shared/data/photos; every row here is the held-out half "
        "(bench/technical.py, beholder/technical/degrade.py). Verdicts from the measures alone, every held-out photo and copy "
        "(targets: rejected with the right reason >= 90 % strong, >= 70 % moderate; untouched given a reason <= 5 %):",
        markdown_table(["failure", "severity", "photos", "rejected with the right reason", "rejected", "any reason (reject or review)"], measured),
        f"Through `beholder predict` (default model, technical checks on) over {args.photos} held-out photos and their copies "
        "in one gallery; anchors on the same files: the default model's taste score alone, and the variance of the Laplacian "
        "(higher = sharper; 'below the cut': under the 5th percentile of the untouched photos'). Target: original ranked "
        "above its copy >= 95 % at moderate and strong:",
        markdown_table(["failure", "severity", "pairs", "original ranked above its copy", "copy rejected with the right reason",
                        "default model alone: original above", "Laplacian variance: original above", "Laplacian variance below the cut"],
                       ordered),
        "Real photos (shared/data/technical), through `beholder predict`:",
        markdown_table(["check", "found", "beside it"], real),
        "The original project's example panoramas (1820x237) by the default model: its 390 px squares along the long side, "
        "averaged, against the whole panorama squashed into one square; and the rank `beholder predict` gives:",
        markdown_table(["panorama (its tier)", "size", "tiles", "score, tiled", "score, squashed", "rank in predict"], panoramas),
    ])
    publish("technical", "Technical quality (bench/technical.py)", body, write=not args.no_write)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["calibrate", "measure"], default="measure")
    parser.add_argument("--work", default=os.path.join(REPO, "outputs", "bench-technical"), help="a folder for measures and predict runs (kept)")
    parser.add_argument("--photos", type=int, default=60, help="held-out photos scored through beholder predict, with their 15 copies each")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.command == "calibrate":
        calibrate(args)
    else:
        measure_and_publish(args)


if __name__ == "__main__":
    main()
