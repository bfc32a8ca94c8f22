"""Bytes in, an upright 8-bit RGB picture out — or a reason why not; and when it was taken."""

from __future__ import annotations

import calendar
import io
import re
import time
import warnings

import numpy as np
from PIL import Image, ImageOps

from beholder.core.extras import needs

RAW_SUFFIXES = (".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".dng")
HEIF_SUFFIXES = (".heic", ".heif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff") + RAW_SUFFIXES + HEIF_SUFFIXES
DEFAULT_MAX_PIXELS = 100_000_000
# A RAW file's embedded JPEG preview is used when its longer side has at least this many pixels (or
# the size asked for); else the sensor data is demosaiced at half size.
RAW_PREVIEW_MIN = 1024
# The start of RAW containers: TIFF-based (CR2, NEF, ARW, DNG; plain TIFFs too), Olympus, Panasonic, Fuji, Canon CR3
RAW_MAGIC = (b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00", b"FUJIFILMCCD-RAW")
LIBRAW_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}
# 2016/06/03/2016_0603_125000.jpg, the webcam archive's names
WEBCAM_TIME = re.compile(r"(?<!\d)(\d{4})_(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})(?!\d)")
EXIF_IFD, DATE_TIME_ORIGINAL, DATE_TIME = 0x8769, 36867, 306

HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")  # an ISO media file of still images

class UnreadableImage(Exception):
    """The file is not an image we can use; the message says why."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: tuple[int, int] | None = None,
                 min_long: int = 0) -> Image.Image:
    """Decode ``data`` to an RGB image with its EXIF orientation applied.

    Grayscale, palette, CMYK, RGBA and 16-bit images become RGB. A file declaring more than
    ``max_pixels`` pixels is refused before it is decoded (decompression bombs). ``min_size``
    (width, height) lets JPEG decode at a reduced scale that is still at least that big, and whose
    long side is still at least ``min_long`` (the technical measures' size); a RAW file gives its
    embedded preview when that is as large.
    """
    if not data:
        raise UnreadableImage("empty file")
    if data.startswith(RAW_MAGIC) or data[4:11] == b"ftypcrx":
        needed = max(*(min_size or (0, 0)), min_long)
        picture = raw_picture(data, max_pixels, (needed, needed) if needed else None)
        if picture is not None:
            return to_rgb(picture)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = open_image(data, max_pixels)
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImage(f"{width}x{height} pixels is more than the limit of {max_pixels}")
            if min_size and image.format == "JPEG":
                scale = min(width / min_size[0], height / min_size[1], max(width, height) / max(min_long, 1))
                if scale >= 2:
                    image.draft("RGB", (int(width / scale), int(height / scale)))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy: a huge image is held once
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as error:
        raise UnreadableImage(str(error)) from None
    except Image.UnidentifiedImageError:
        raise UnreadableImage("UnidentifiedImageError: not an image format Pillow reads") from None
    except Exception as error:  # PIL raises many types for broken files; all mean "unreadable"
        raise UnreadableImage(f"{type(error).__name__}: {error}") from None
    return to_rgb(image)


def raw_picture(data: bytes, max_pixels: int, min_size: tuple[int, int] | None) -> Image.Image | None:
    """A camera RAW file through LibRaw: its embedded JPEG preview when that is large enough, else a
    half-size demosaic (camera white balance), upright. None for a plain TIFF (LibRaw does not take it,
    nor is it there to take a TIFF-based RAW without the ``formats`` extra: Pillow reads what it can)."""
    try:
        import rawpy
    except ModuleNotFoundError:
        if data.startswith((b"II*\x00", b"MM\x00*")):
            return None
        raise UnreadableImage(f"a camera RAW file; reading it {needs('rawpy')}") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            width, height = raw.sizes.raw_width, raw.sizes.raw_height
            if width * height > max_pixels:
                raise UnreadableImage(f"{width}x{height} pixels is more than the limit of {max_pixels}")
            needed = max(min_size) if min_size else RAW_PREVIEW_MIN
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                preview = Image.open(io.BytesIO(thumb.data))
                if max(preview.size) >= needed:
                    preview.load()
                    if preview.getexif().get(0x0112, 1) == 1 and raw.sizes.flip in LIBRAW_FLIP:
                        preview = preview.transpose(LIBRAW_FLIP[raw.sizes.flip])
                    return preview
            return Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
    except rawpy.LibRawFileUnsupportedError:
        if data.startswith((b"II*\x00", b"MM\x00*")):
            return None  # a plain TIFF: Pillow reads it
        raise UnreadableImage("a RAW format LibRaw does not read") from None
    except rawpy.LibRawError as error:
        raise UnreadableImage(f"RAW: {type(error).__name__}: {error}") from None


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Pillow's own formats, opened lazily; HEIF/HEIC decoded by pillow_heif directly, upright
    (registering pillow_heif's opener instead would change Pillow for the whole process)."""
    heif = heif_file(data)
    if heif is None:
        return Image.open(io.BytesIO(data))
    width, height = heif.size
    if width * height > max_pixels:
        raise UnreadableImage(f"{width}x{height} pixels is more than the limit of {max_pixels}")
    return heif.to_pillow()


def heif_file(data: bytes):
    """A HEIF/HEIC file opened by pillow_heif, not yet decoded; None for any other format."""
    if data[4:8] != b"ftyp":
        return None
    try:
        import pillow_heif
    except ModuleNotFoundError:
        if data[8:12] in HEIF_BRANDS:
            raise UnreadableImage(f"a HEIF/HEIC file; reading it {needs('pillow_heif')}") from None
        return None
    return pillow_heif.open_heif(io.BytesIO(data)) if pillow_heif.is_supported(data) else None


def exif_of(data: bytes) -> Image.Exif:
    """A file's EXIF, its pixels left undecoded (a HEIC's too: its EXIF is a block of its own)."""
    heif = heif_file(data)
    if heif is None:
        return Image.open(io.BytesIO(data)).getexif()
    exif = Image.Exif()
    if heif.info.get("exif"):
        exif.load(heif.info["exif"])
    return exif


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image if image.mode == "RGB" else image.convert("RGB")


def capture_time(path: str, data: bytes | None = None) -> float | None:
    """Seconds since 1970 (as the camera's clock reads, no time zone) from the file name's
    ``YYYY_MMDD_HHMMSS``, else from EXIF DateTimeOriginal (or DateTime); None if neither."""
    match = WEBCAM_TIME.search(path)
    if match:
        stamp = "{}:{}:{} {}:{}:{}".format(*match.groups())
    elif data:
        try:
            exif = exif_of(data)
        except Exception:  # an unreadable image has no time; its decoding reports why
            return None
        stamp = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME)
        if not isinstance(stamp, str):
            return None
    else:
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")))
    except ValueError:
        return None
