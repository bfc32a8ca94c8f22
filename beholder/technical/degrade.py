"""Degraded copies of a photo, at three severities of each failure the technical checks judge: what
the head is calibrated on (bench/technical.py) and what the tests check it against. Severities are
relative to the photo's size (blur) or in stops of light (exposure), so they mean the same on a
500 px photo and a 24 MP one.

- focus: a Gaussian blur of sigma = long side / 320, 160, 80 (defocus);
- shake: a straight motion blur of long side / 160, 80, 40 at a random angle;
- highlights: +1, +1.5, +2 stops in linear light, clipped as a sensor clips (over-exposure);
- shadows: -1.5, -2, -3 stops (under-exposure);
- noise: sigma 6, 12, 24 of 255, mostly luma, as processed camera noise is.

Each version is then saved as a JPEG (quality 90, chroma subsampled as cameras and exports save):
what the checks see in a photographer's files (JPEG smooths colour noise away, for one).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

SEVERITIES = ("mild", "moderate", "strong")


def defocus(rgb, severity, rng):
    return cv2.GaussianBlur(rgb, (0, 0), max(rgb.shape[:2]) / {"mild": 320, "moderate": 160, "strong": 80}[severity])


def shake(rgb, severity, rng):
    length = max(3, round(max(rgb.shape[:2]) / {"mild": 160, "moderate": 80, "strong": 40}[severity]))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1
    turn = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
    kernel = cv2.warpAffine(kernel, turn, (length, length))
    return cv2.filter2D(rgb, -1, kernel / kernel.sum())


def stops(rgb, ev):
    """Exposure changed by ``ev`` stops in linear light (sRGB decoded, scaled, clipped, encoded)."""
    x = rgb.astype(np.float32) / 255
    linear = np.clip(np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4) * 2.0 ** ev, 0, 1)
    out = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def over(rgb, severity, rng):
    return stops(rgb, {"mild": 1.0, "moderate": 1.5, "strong": 2.0}[severity])


def under(rgb, severity, rng):
    return stops(rgb, {"mild": -1.5, "moderate": -2.0, "strong": -3.0}[severity])


def noise(rgb, severity, rng):
    sigma = {"mild": 6, "moderate": 12, "strong": 24}[severity]
    luma = rng.normal(0, 0.8 * sigma, rgb.shape[:2])[:, :, None]
    return np.clip(rgb.astype(np.float32) + luma + rng.normal(0, 0.6 * sigma, rgb.shape), 0, 255).astype(np.uint8)


DEGRADATIONS = {"focus": defocus, "shake": shake, "highlights": over, "shadows": under, "noise": noise}


def as_jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    """``rgb`` saved as a JPEG and read back."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))
