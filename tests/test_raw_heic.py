"""Camera RAW (through LibRaw) and HEIC read wherever images are read; real files, written here."""

import calendar
import io

import numpy as np
import pytest
from PIL import Image

from beholder.core.storage import Store
from beholder.data.gallery import build_transform, list_gallery
from beholder.data.images import DATE_TIME_ORIGINAL, EXIF_IFD, UnreadableImage, capture_time, decode_image

from raw_files import dng_bytes


def two_halves(width=256, height=128) -> np.ndarray:
    """Red on the left, blue on the right (linear RGB, 0-1)."""
    rgb = np.zeros((height, width, 3))
    rgb[:, : width // 2, 0] = 0.8
    rgb[:, width // 2:, 2] = 0.8
    return rgb


def test_a_dng_is_demosaiced_upright_with_its_colours(tmp_path):
    picture = decode_image(dng_bytes(tmp_path, two_halves()))
    assert picture.mode == "RGB" and picture.size == (128, 64)  # no preview in it: a half-size demosaic
    pixels = np.asarray(picture, dtype=float)
    left, right = pixels[:, 10:50].mean((0, 1)), pixels[:, 80:120].mean((0, 1))
    assert left[0] > left[2] + 40 and right[2] > right[0] + 40  # red left, blue right


def test_a_raw_files_orientation_is_honoured(tmp_path):
    picture = decode_image(dng_bytes(tmp_path, two_halves(), orientation=6))  # the camera was turned 90 degrees clockwise
    pixels = np.asarray(picture, dtype=float)
    assert picture.size == (64, 128)
    top, bottom = pixels[10:50].mean((0, 1)), pixels[80:120].mean((0, 1))
    assert top[0] > top[2] + 40 and bottom[2] > bottom[0] + 40  # the left (red) half is now on top


def test_a_corrupt_raw_is_unreadable_with_its_reason(tmp_path):
    good = dng_bytes(tmp_path, two_halves())
    with pytest.raises(UnreadableImage, match="RAW|LibRaw|TIFF|image"):
        decode_image(good[:400])
    with pytest.raises(UnreadableImage):
        decode_image(b"FUJIFILMCCD-RAW 0201FF129502" + bytes(200))


def test_heic_is_read_and_raw_and_heic_are_found_in_a_gallery(tmp_path):
    import pillow_heif

    rgb = (two_halves(96, 64) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(rgb)).save(buffer, quality=90)
    picture = decode_image(buffer.getvalue())
    pixels = np.asarray(picture, dtype=float)
    assert picture.size == (96, 64) and pixels[:, :40, 0].mean() > pixels[:, :40, 2].mean() + 80
    assert ".heic" not in Image.registered_extensions()  # read without changing Pillow for the whole process
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "IMG_1.HEIC").write_bytes(buffer.getvalue())
    (tmp_path / "g" / "IMG_2.dng").write_bytes(dng_bytes(tmp_path, two_halves()))
    (tmp_path / "g" / "IMG_3.NEF").write_bytes(b"II*\x00 not really a NEF")
    assert sorted(list_gallery(Store(), str(tmp_path / "g"))) == ["IMG_1.HEIC", "IMG_2.dng", "IMG_3.NEF"]
    with pytest.raises(UnreadableImage):
        decode_image((tmp_path / "g" / "IMG_3.NEF").read_bytes())


def test_a_heics_capture_time_is_read_without_decoding_it(monkeypatch):
    """The loader decodes each photo once: its capture time comes from the HEIC's EXIF block alone."""
    import pillow_heif

    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[DATE_TIME_ORIGINAL] = "2024:06:01 12:30:05"
    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray((two_halves(96, 64) * 255).astype(np.uint8))).save(buffer, quality=90, exif=exif.tobytes())
    monkeypatch.setattr(pillow_heif.HeifImage, "load", lambda self: pytest.fail("decoded"))
    assert capture_time("IMG_1.HEIC", buffer.getvalue()) == calendar.timegm((2024, 6, 1, 12, 30, 5))


@pytest.mark.slow
def test_raw_files_are_decoded_by_workers_that_were_not_forked(tmp_path, capfd):
    """LibRaw's OpenMP threads can deadlock in a forked worker (rawpy warns): with RAW files among
    the images, loader workers come from a fork server."""
    from torch.utils.data import DataLoader

    from beholder.data.gallery import GalleryDataset, collate, raw_safe_workers

    (tmp_path / "g").mkdir()
    for i in range(2):
        (tmp_path / "g" / f"IMG_{i}.dng").write_bytes(dng_bytes(tmp_path, two_halves()))
    images = ["IMG_0.dng", "IMG_1.dng"]
    assert raw_safe_workers(["a.jpg"], 2) == {} and raw_safe_workers(images, 0) == {}
    config = {"input_size": (3, 32, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    dataset = GalleryDataset(str(tmp_path / "g"), images, Store(), build_transform(config, train=False))
    batches = list(DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate, **raw_safe_workers(images, 2)))
    assert batches[0]["image"].shape == (2, 3, 32, 64) and not batches[0]["skipped"]
    assert "fork" not in capfd.readouterr().err
