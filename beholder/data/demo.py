"""A synthetic demo gallery: Space-Needle-style webcam panoramas with tiers from how they were drawn.

Each panorama is a sky (day, golden hour, dusk or night), clouds, the Olympic mountains, Puget
Sound and a city skyline. Golden light on scattered clouds over clear mountains is what earns the
top tiers; fog, night, glare, a tilted camera or a frozen (corrupted) frame make junk.

    beholder demo demo/gallery --count 400
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFilter

from beholder.core.tables import csv_text
from beholder.core.vocabulary import CommandParser

HEIGHT, WIDTH = 237, 1820
JUNK = ("fog", "night", "glare", "tilted", "frozen")


def _smooth_noise(rng, length, scale):
    """1-D noise with features about ``length / scale`` wide."""
    knots = rng.standard_normal(scale + 2)
    return np.interp(np.linspace(0, scale + 1, length), np.arange(scale + 2), knots)


def render(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> tuple[Image.Image, float, str]:
    """One panorama, its beauty (higher is better) and its junk kind ('' if none)."""
    junk = rng.choice(JUNK) if rng.random() < 0.3 else ""
    glow = float(rng.beta(1.2, 2.5)) if junk != "night" else 0.0  # golden-hour light
    clouds = float(rng.random())
    haze = float(rng.random() * 0.5) if junk != "fog" else 0.9
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]

    day_top, day_horizon = np.array([0.25, 0.45, 0.85]), np.array([0.7, 0.82, 0.95])
    gold_top, gold_horizon = np.array([0.35, 0.25, 0.55]), np.array([1.0, 0.55, 0.2])
    top = (1 - glow) * day_top + glow * gold_top
    horizon = (1 - glow) * day_horizon + glow * gold_horizon
    if junk == "night":
        top, horizon = np.array([0.02, 0.02, 0.06]), np.array([0.08, 0.07, 0.12])
    sky = top + (horizon - top) * (y / 0.6).clip(0, 1) ** 1.5 + 0 * x
    sun_x = rng.random()
    sun = np.exp(-(((x - sun_x) * 6) ** 2 + ((y - 0.55) * 8) ** 2)) * glow
    sky = sky + sun * np.array([1.0, 0.7, 0.3])

    band = np.exp(-((y - rng.uniform(0.1, 0.4)) / 0.12) ** 2)
    texture = np.abs(_smooth_noise(rng, width, 40))[None, :, None] * band
    lit = np.array([1.0, 0.6, 0.45]) * glow + np.array([0.95, 0.95, 0.97]) * (1 - glow)
    cover = (clouds * texture).clip(0, 1)
    sky = sky * (1 - cover) + lit * cover

    picture = sky.copy()
    rows = y[:, :, 0]
    ridge = 0.58 - 0.08 * np.abs(_smooth_noise(rng, width, 12)) - 0.05 * np.exp(-((np.linspace(0, 1, width) - 0.8) / 0.03) ** 2)
    mountains = (rows > ridge[None, :]) & (rows < 0.62)
    mountain_colour = np.array([0.45, 0.5, 0.62]) * (1 - glow * 0.3) + haze * 0.3
    picture[mountains] = mountain_colour
    water = np.broadcast_to((rows >= 0.62) & (rows < 0.8), (height, width))
    picture[water] = horizon * 0.6 + np.array([0.05, 0.1, 0.15])
    skyline = 0.8 - 0.15 * (rng.random(width // 20).repeat(20)[:width] ** 3)
    buildings = rows > skyline[None, :]
    picture[buildings] = np.array([0.12, 0.12, 0.14]) * (1.2 - glow)

    picture = picture * (1 - haze * 0.6) + haze * 0.6 * np.array([0.75, 0.75, 0.78])
    if junk == "glare":
        picture = picture + 0.8 * np.exp(-(((x - rng.random()) * 3) ** 2 + ((y - 0.3) * 3) ** 2))
    picture = picture + rng.normal(0, 0.015, picture.shape)
    image = Image.fromarray((picture.clip(0, 1) * 255).astype(np.uint8))
    if junk == "tilted":
        image = image.rotate(float(rng.uniform(4, 10)) * rng.choice([-1, 1]), resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    if junk == "frozen":
        rows = np.asarray(image).copy()
        cut = int(rng.uniform(0.2, 0.7) * height)
        rows[cut:] = rows[cut]  # the frame froze part-way through
        image = Image.fromarray(rows)
    image = image.filter(ImageFilter.GaussianBlur(0.6))

    beauty = 2.5 * glow + 1.2 * clouds * (0.3 + glow) - 1.5 * haze + rng.normal(0, 0.15)
    return image, (beauty if not junk else -5.0 + beauty * 0.1), junk


def tiers_from_beauty(beauty: np.ndarray) -> np.ndarray:
    """Tiers cut like the original labels: bottom 50 % / to 95 % / to 98 % / top 2 %."""
    cuts = np.quantile(beauty, [0.5, 0.95, 0.98])
    return np.searchsorted(cuts, beauty, side="right")


def make_gallery(folder: str, count: int = 400, seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> str:
    """Write ``count`` panoramas as JPEGs under ``folder/YYYY/MM/DD/`` and ``folder/labels.csv``."""
    rng = np.random.default_rng(seed)
    rows, beauties = [], []
    for i in range(count):
        image, beauty, junk = render(rng, height, width)
        day, minute = divmod(i * 10, 14 * 60)
        name = f"2016/06/{1 + day % 28:02d}/2016_06{1 + day % 28:02d}_{5 + minute // 60:02d}{minute % 60:02d}00.jpg"
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, quality=90)
        rows.append({"image": name, "junk": junk})
        beauties.append(beauty)
    tiers = tiers_from_beauty(np.array(beauties))
    labels = os.path.join(folder, "labels.csv")
    with open(labels, "w") as f:
        f.write(csv_text(["image", "tier", "beauty", "junk"],
                         ({**row, "tier": int(tier), "beauty": round(float(beauty), 4)} for row, tier, beauty in zip(rows, tiers, beauties))))
    return labels


def main(argv: list[str] | None = None, prog: str = "beholder demo") -> None:
    parser = CommandParser(prog=prog, description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("folder", help="where to draw the panoramas and their labels.csv (created)")
    parser.add_argument("--count", type=int, default=400, help="how many panoramas (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed draws the same gallery (default 0)")
    args = parser.parse_args(argv)
    labels = make_gallery(args.folder, args.count, args.seed)
    print(f"wrote {args.count} panoramas and {labels}")


if __name__ == "__main__":
    main()
