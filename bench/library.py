"""The personal loop on photographers' libraries, through the commands the README gives.

For each of --raters OASIS raters (those with the most ratings of the library's photos), a library:
the photos the crowd model never saw (a 60/40 split of OASIS, fixed seed) in dated folders, 10 of
them as HEIC and 5 as DNG; 60 % of the rater's ratings of them (1-7, as 1-5 stars, 6 and 7 apart) in sidecars,
half Lightroom's form (IMG.xmp, with develop settings and keywords), half darktable's (IMG.jpg.xmp),
the other 40 % held out ("their unrated photos"). Then, each step timed:

  import     beholder ratings import LIB --gallery LIB --out my_labels.csv
  personal   python train.py experiment=personal base_ckpt=CROWD labels=my_labels.csv ...
  predict    python predict.py ckpt=PERSONAL gallery=LIB output=OUT xmp=true xmp_beside_images=true ratings=my_labels.csv
  rerun      the same predict again (nothing new in the library)
  re-import  the import again, after beholder wrote its sidecars

CROWD is the default model's recipe (experiment=best head=regression) trained on the other 60 %
of the photos, so that no library photo was seen by it; the crowd policy is predict.py with CROWD.
Measured: sidecars created beside an existing one, photographer's ratings / keywords / develop
settings changed, re-import equal to the import, Spearman of crowd and personal scores with the
held-out ratings, recall of the held-out photos the rater rated highest against gallery reduction
(personal vs crowd policy, both promising 95 % recall), seconds per step, checkpoint sizes.
Results replace the "library" section of bench/RESULTS.md.

    python bench/library.py [--raters 3] [--work DIR] [--no-write]     # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beholder import default_model  # noqa: E402
from beholder.data.labels import top_rating  # noqa: E402
from beholder.models.metrics import spearman  # noqa: E402
from beholder.ratings.xmp import KEYWORD_BAGS, NAMESPACES  # noqa: E402
from bench.common import REPO, SHARED, markdown_table, publish  # noqa: E402
from bench.personal import crowd_checkpoint  # noqa: E402

PYTHON = sys.executable
QUIET = ["trainer.enable_progress_bar=false"]
SIDECAR = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
           '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
           'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/" '
           'xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="{stars}" crs:Exposure2012="{exposure}" crs:Temperature="5200">'
           '<dc:subject><rdf:Bag><rdf:li>{keyword}</rdf:li><rdf:li>oasis</rdf:li></rdf:Bag></dc:subject>'
           '</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>\n')


def run(args: list[str]) -> tuple[float, str]:
    """A command as a user runs it, from the repository; (seconds, its output); a failure stops the bench."""
    started = time.perf_counter()
    done = subprocess.run([PYTHON, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def base_library(oasis: str, photos: list[str], folder: Path) -> dict[str, str]:
    """The library's photos in dated folders; 10 as HEIC, 5 as DNG. Returns OASIS name -> library path."""
    from tests.test_raw_heic import dng_bytes  # the tests' real DNG writer (PiDNG)

    paths = {}
    for i, name in enumerate(photos):
        stem = f"{2020 + i % 4}/{1 + i % 12:02d}/{1 + i % 28:02d}/IMG_{i:04d}"
        kind = ".heic" if i % 18 == 5 and i < 180 else ".dng" if i % 36 == 11 and i < 180 else ".jpg"
        target = folder / (stem + kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == ".jpg":
            shutil.copyfile(os.path.join(oasis, "images", name), target)
        elif kind == ".heic":
            import pillow_heif

            pillow_heif.register_heif_opener()
            Image.open(os.path.join(oasis, "images", name)).convert("RGB").save(target, format="HEIF", quality=90)
        else:
            rgb = np.asarray(Image.open(os.path.join(oasis, "images", name)).convert("RGB").resize((384, 288)), dtype=float) / 255
            with tempfile.TemporaryDirectory() as scratch:
                target.write_bytes(dng_bytes(Path(scratch), rgb))
        paths[name] = str(target.relative_to(folder))
    return paths


STARS = {1: 1, 2: 1, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5}  # the top levels kept apart: they are the ones culling must keep


def stars_of(rating: float) -> int:
    """OASIS's 1-7 beauty as 1-5 stars."""
    return STARS[int(rating)]


def sidecar_path(folder: Path, image: str, lightroom: bool) -> Path:
    return folder / (os.path.splitext(image)[0] + ".xmp" if lightroom else image + ".xmp")


def photographers_fields(path: Path) -> tuple:
    """What must never change in a photographer's sidecar: rating, keywords, develop settings."""
    description = ET.parse(path).getroot().find(f".//{{{NAMESPACES['rdf']}}}Description")
    crs = "http://ns.adobe.com/camera-raw-settings/1.0/"
    ours = tuple(form.format("") for _, form in KEYWORD_BAGS)  # beholder's reasons are its own, not the photographer's
    keywords = [li.text for li in description.iter(f"{{{NAMESPACES['rdf']}}}li") if not (li.text or "").startswith(ours)]
    develop = sorted((k, v) for k, v in description.attrib.items() if k.startswith(f"{{{crs}}}"))
    return description.get(f"{{{NAMESPACES['xmp']}}}Rating"), keywords, develop


def scores_of(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def policy_row(scores: dict[str, dict], top_photos: list[str]) -> tuple[float, float]:
    """(recall of ``top_photos``: not rejected, gallery reduction: the rejected share)."""
    recall = np.mean([scores[p]["band"] != "reject" for p in top_photos]) if top_photos else float("nan")
    return float(recall), float(np.mean([row["band"] == "reject" for row in scores.values()]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "oasis"))
    parser.add_argument("--raters", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="a folder for the libraries, models and caches (default: a new temporary one)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="beholder-library-"))
    work.mkdir(parents=True, exist_ok=True)

    photos = sorted(row["image"] for row in csv.DictReader(open(os.path.join(args.data, "labels.csv"))))
    rng = np.random.default_rng(args.seed)
    train_photos = set(rng.choice(photos, int(0.6 * len(photos)), replace=False).tolist())  # bench/personal.py's split
    library_photos = [p for p in photos if p not in train_photos]
    started = time.perf_counter()
    crowd = crowd_checkpoint(args.data, train_photos, str(work), args.seed)
    crowd_seconds = time.perf_counter() - started
    ratings: dict[str, dict[str, float]] = defaultdict(dict)
    in_library = set(library_photos)
    for row in csv.DictReader(open(os.path.join(args.data, "ratings.csv"))):
        if row["image"] in in_library:
            ratings[row["rater"]][row["image"]] = float(row["beauty"])
    raters = sorted(ratings, key=lambda r: (-len(ratings[r]), int(r)))[: args.raters]

    base = work / "base"
    if not base.exists():
        paths = base_library(args.data, library_photos, base / "lib")
        (base / "paths.csv").write_text("".join(f"{k},{v}\n" for k, v in paths.items()))
    paths = dict(line.split(",") for line in (base / "paths.csv").read_text().splitlines())
    cache = work / "cache"

    crowd_first, _ = run(["predict.py", f"ckpt={crowd}", f"gallery={base}/lib", f"output={work}/crowd-out", f"feature_cache={cache}", *QUIET])
    crowd_scores = scores_of(work / "crowd-out" / "scores.csv")
    safety, quality, policy, seconds = [], [], [], []
    for rater in raters:
        rated = ratings[rater]
        names = sorted(rated)
        shown = set(np.random.default_rng(int(rater)).choice(names, int(round(0.6 * len(names))), replace=False).tolist())
        hidden = [n for n in names if n not in shown]
        lib = work / f"rater-{rater}"
        shutil.rmtree(lib, ignore_errors=True)
        shutil.copytree(base / "lib", lib, copy_function=os.link)
        before = {}
        for i, name in enumerate(sorted(shown)):
            path = sidecar_path(lib, paths[name], lightroom=i % 2 == 0)
            path.write_text(SIDECAR.format(stars=stars_of(rated[name]), exposure=f"+{i % 7 / 10:.2f}", keyword=f"kw{i}"))
            before[path] = photographers_fields(path)

        steps = {}
        steps["import"], _ = run(["-m", "beholder", "ratings", "import", str(lib), "--gallery", str(lib), "--out", str(lib / "my_labels.csv")])
        steps["personal"], _ = run(["train.py", "experiment=personal", f"base_ckpt={crowd}", f"gallery={lib}",
                                    f"labels={lib / 'my_labels.csv'}", "data.score_column=rating", f"feature_cache={cache}",
                                    f"output_dir={work}/personal-{rater}", *QUIET])
        personal = work / f"personal-{rater}" / "checkpoints" / "best.ckpt"
        loop = [f"ckpt={personal}", f"gallery={lib}", f"output={work}/out-{rater}", "xmp=true", "xmp_beside_images=true",
                f"ratings={lib / 'my_labels.csv'}", f"feature_cache={cache}", *QUIET]
        steps["predict"], _ = run(["predict.py", *loop])
        steps["rerun"], _ = run(["predict.py", *loop])
        steps["re-import"], _ = run(["-m", "beholder", "ratings", "import", str(lib), "--gallery", str(lib), "--out", str(lib / "again.csv")])
        seconds.append([rater, *(f"{steps[s]:.1f}" for s in ("import", "personal", "predict", "rerun", "re-import"))])

        sidecars = {str(p.relative_to(lib)) for p in lib.rglob("*.xmp")}
        doubled = sum(1 for image in paths.values() if image + ".xmp" in sidecars and os.path.splitext(image)[0] + ".xmp" in sidecars)
        changed = sum(photographers_fields(path) != fields for path, fields in before.items())
        same = (lib / "my_labels.csv").read_text() == (lib / "again.csv").read_text()
        safety.append([rater, len(paths), len(before), len(sidecars), doubled, changed, "yes" if same else "no"])

        personal_scores = scores_of(work / f"out-{rater}" / "scores.csv")
        y = np.array([rated[n] for n in hidden])
        crowd_rho = float(spearman(np.array([float(crowd_scores[paths[n]]["score"]) for n in hidden]), y))
        personal_rho = float(spearman(np.array([float(personal_scores[paths[n]]["score"]) for n in hidden]), y))
        quality.append([rater, len(shown), len(hidden), f"{crowd_rho:.3f}", f"{personal_rho:.3f}", f"{personal_rho - crowd_rho:+.3f}"])

        top = top_rating([rated[n] for n in names])
        top_hidden = [paths[n] for n in hidden if rated[n] >= top]
        unrated_only = {k: v for k, v in personal_scores.items() if v["reason"] != "rated"}
        p_recall, p_reduction = policy_row(unrated_only, top_hidden)
        c_recall, c_reduction = policy_row({k: crowd_scores[k] for k in unrated_only}, top_hidden)
        policy.append([rater, f"{len(top_hidden)} (rated >= {top:g})", f"{p_recall:.0%}", f"{p_reduction:.1%}", f"{c_recall:.0%}",
                       f"{c_reduction:.1%}"])

    sizes = [["default model (shipped)", f"{os.path.getsize(default_model.checkpoint_path()) / 1024:.0f}"],
             ["crowd model of this bench", f"{os.path.getsize(crowd) / 1024:.0f}"]]
    sizes += [[f"personal model, rater {r}", f"{os.path.getsize(work / f'personal-{r}' / 'checkpoints' / 'best.ckpt') / 1024:.0f}"] for r in raters]
    body = "\n\n".join([
        f"{len(library_photos)} library photos in dated folders (10 HEIC, 5 DNG), none seen by the crowd model (trained on the other "
        f"{len(train_photos)} in {crowd_seconds:.0f} s); per rater, 60 % of their ratings of the library as sidecar stars (half "
        "`IMG.xmp` with develop settings and keywords, half `IMG.jpg.xmp`), the other 40 % held out. Every step is the README's command.",
        "Safety of the photographer's files after predict.py wrote its sidecars beside the images:\n\n"
        + markdown_table(["rater", "photos", "photographer's sidecars", "sidecars after", "images with two sidecars",
                          "photographer's ratings, keywords or develop settings changed", "re-import equal to the import"], safety),
        "Taste on the held-out photos (Spearman with the rater's 1-7 ratings):\n\n"
        + markdown_table(["rater", "ratings in sidecars", "held out", "crowd model", "personal model", "gain"], quality),
        "Keep / review / reject on the photos the rater did not rate (both policies promise 95 % recall of new top-tier photos; "
        "the personal one's top tier is the rater's own top 5 %): recall of the held-out photos they rated highest, and the gallery reduction:\n\n"
        + markdown_table(["rater", "their held-out top photos", "personal: recall", "personal: reduction", "crowd: recall",
                          "crowd: reduction"], policy),
        f"Seconds per step (the crowd model's first predict pass over the library, features computed: {crowd_first:.1f} s; later "
        "passes read the feature cache):\n\n"
        + markdown_table(["rater", "import", "experiment=personal", "predict (first)", "predict again (nothing new)", "re-import"], seconds),
        "Checkpoint sizes (want < 1 MB for the default and personal models):\n\n" + markdown_table(["checkpoint", "KB"], sizes),
    ])
    publish("library", "The personal loop on photographers' libraries (bench/library.py)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
