"""What a photographer checks first, measured on the decoded photo: is the sharpest part in focus,
is it shaken, are the highlights blown or the shadows crushed, is it noisy. Classical measures on
tiles of the photo at ``ANALYSIS_SIDE`` px along its long side (what a full-screen view shows: a
12-45 MP photo is decoded once at a reduced JPEG scale and brought down to it, a smaller one is
measured as it is), each of them relative to the photo's size and brightness, so that a sky, a
night scene or a white studio background is not a failure by its mean. The learned head that turns
these numbers into a verdict is :mod:`beholder.technical.judge`."""

from __future__ import annotations

import functools
import hashlib

import cv2
import numpy as np

ANALYSIS_SIDE = 1024
TILES = 16  # tiles along the long side
# Immerkaer's fast noise estimate: a kernel that cancels an image's first and second derivatives
NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
NOISE_SCALE = float(np.sqrt(np.pi / 2) / 6)

FEATURES = (
    # focus: log ratios of detail at adjacent scales (1, 2, 4 px at 512 px) on the busiest quarter of the tiles
    "focus", "focus_median", "fine",
    # shake: how much the fine detail's gradients share one direction, and the coarse detail's
    "coherence_fine", "coherence_coarse",
    # noise: luma and colour noise in the flattest third of the frame (log1p of 0-255 levels), and how
    # much of it is left at half size: about half of noise (independent pixel to pixel), more of texture
    "noise", "colour_noise", "noise_scaling",
    # exposure
    "clipped", "clipped_centre", "near_clipped", "highlight_saturation", "clipped_colour", "bright", "crushed", "dark_detail", "bright_flat",
    "p01", "p10", "p50", "p90", "p99", *(f"histogram{i}" for i in range(8)),
)


@functools.cache
def measures_version() -> str:
    """This module's code, by digest: measures made by other code are measured again."""
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def analysis_view(picture) -> np.ndarray:
    """The photo (a PIL image or an H x W x 3 uint8 array) as RGB uint8 at most ``ANALYSIS_SIDE`` px along its long side."""
    rgb = np.asarray(picture, dtype=np.uint8)
    height, width = rgb.shape[:2]
    scale = ANALYSIS_SIDE / max(height, width)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def tile_means(values: np.ndarray, tile: int) -> np.ndarray:
    height, width = values.shape[0] // tile * tile, values.shape[1] // tile * tile
    return values[:height, :width].reshape(height // tile, tile, width // tile, tile).mean(axis=(1, 3))


def coherence(detail: np.ndarray) -> float:
    """How much the gradients of ``detail`` share one orientation (0: none, 1: all): camera shake
    smears detail along one direction, so the fine detail left runs across it."""
    gx = cv2.Sobel(detail, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(detail, cv2.CV_32F, 0, 1, ksize=3)
    xx, yy, xy = float(cv2.mean(gx * gx)[0]), float(cv2.mean(gy * gy)[0]), float(cv2.mean(gx * gy)[0])
    return float(np.sqrt((xx - yy) ** 2 + 4 * xy * xy) / (xx + yy + 1e-9))


def quantiles(gray: np.ndarray, shares=(0.01, 0.10, 0.50, 0.90, 0.99)) -> list[float]:
    counts = np.bincount(gray.ravel(), minlength=256)
    cumulative = np.cumsum(counts) / gray.size
    return [float(np.searchsorted(cumulative, share)) / 255 for share in shares]


def measure(picture) -> np.ndarray:
    """The :data:`FEATURES` of one photo, float32. OpenCV works on one thread here: the measures run
    in the loader's workers, beside the network's threads, and more threads only contend."""
    cv2.setNumThreads(1)
    rgb = analysis_view(picture)
    gray8 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray = gray8.astype(np.float32)
    height, width = gray.shape
    unit = max(height, width) / 512
    tile = max(4, max(height, width) // TILES // 2 * 2)
    rows, columns = height // tile, width // tile

    # Detail at three scales: blurs of 1, 2 and 4 units, each from the last (sigmas add in squares);
    # the coarsest at half size, where its detail still has 2 px to live in.
    once = cv2.GaussianBlur(gray, (0, 0), unit)
    twice = cv2.GaussianBlur(once, (0, 0), np.sqrt(3) * unit)
    half = cv2.resize(twice, ((width + 1) // 2, (height + 1) // 2), interpolation=cv2.INTER_AREA)
    fine, middle, coarse = gray - once, once - twice, half - cv2.GaussianBlur(half, (0, 0), np.sqrt(3) * unit)

    residual = np.abs(cv2.filter2D(gray, -1, NOISE_KERNEL, borderType=cv2.BORDER_REFLECT))
    slope = cv2.magnitude(cv2.Sobel(once, cv2.CV_32F, 1, 0), cv2.Sobel(once, cv2.CV_32F, 0, 1))
    flat = slope <= np.percentile(slope[::4, ::4], 30)
    noise = NOISE_SCALE * float(residual[flat].mean()) if flat.any() else 0.0
    half_gray = cv2.resize(gray, ((width + 1) // 2, (height + 1) // 2), interpolation=cv2.INTER_AREA)
    half_flat = cv2.resize(flat.astype(np.uint8), half_gray.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    half_residual = np.abs(cv2.filter2D(half_gray, -1, NOISE_KERNEL, borderType=cv2.BORDER_REFLECT))
    noise_half = NOISE_SCALE * float(half_residual[half_flat].mean()) if half_flat.any() else 0.0
    red, green, blue = (rgb[:, :, i].astype(np.float32) for i in range(3))
    colour = [NOISE_SCALE * float(np.abs(cv2.filter2D(c, -1, NOISE_KERNEL, borderType=cv2.BORDER_REFLECT))[flat].mean()) if flat.any() else 0.0
              for c in (red - green, blue - green)]

    # a band's energy less what white noise of that level puts into it (measured on pure noise)
    energy = [np.maximum(tile_means(band * band, size)[:rows, :columns] - share * noise * noise, 1e-3)
              for band, share, size in ((fine, 0.2, tile), (middle, 0.04, tile), (coarse, 0.005, tile // 2))]
    contrast = energy[1] + energy[2]
    busy = contrast >= np.percentile(contrast, 75)
    mid_to_coarse, fine_to_mid = np.log(energy[1] / energy[2]), np.log(energy[0] / energy[1])

    brightest = cv2.max(cv2.max(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2])
    darkest = cv2.min(cv2.min(rgb[:, :, 0], rgb[:, :, 1]), rgb[:, :, 2])
    clipped = brightest >= 250
    level = tile_means(gray, tile)[:rows, :columns]
    relative = contrast / (level + 8) ** 2  # detail relative to the tile's brightness: texture in the dark counts
    detailed = relative >= np.median(relative)
    clipped_tiles = tile_means(clipped.astype(np.float32), tile)[:rows, :columns]
    bright = gray8 > 200
    saturation = (brightest[bright].astype(np.float32) - darkest[bright]) / np.maximum(brightest[bright], 1) if bright.any() else np.zeros(1)
    top, left = height // 5, width // 5
    histogram = np.bincount(gray8.ravel() // 32, minlength=8) / gray8.size
    return np.array([
        np.percentile(mid_to_coarse[busy], 90), np.median(mid_to_coarse[busy]), np.percentile(fine_to_mid[busy], 90),
        coherence(fine + middle), coherence(coarse),
        np.log1p(noise), np.log1p(float(np.mean(colour))), np.log((noise_half + 0.05) / (noise + 0.05)),
        clipped.mean(), clipped[top:height - top, left:width - left].mean(), ((brightest >= 235) & ~clipped).mean(), saturation.mean(),
        (clipped & (darkest < 200)).mean(), (gray8 >= 240).mean(),
        (gray8 <= 6).mean(), np.mean(level[detailed] < 40), np.mean((level > 215) & (clipped_tiles > 0.5)),
        *quantiles(gray8), *histogram,
    ], dtype=np.float32)
