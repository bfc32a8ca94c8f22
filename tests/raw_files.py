"""Real camera RAW files for tests and benches: a DNG written by PiDNG, which LibRaw reads as it reads
a camera's."""

import numpy as np


def dng_bytes(tmp_path, rgb: np.ndarray, orientation: int = 1) -> bytes:
    """A real DNG (PiDNG) of an RGGB Bayer mosaic of ``rgb``: LibRaw demosaics it."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation

    height, width, _ = rgb.shape
    mosaic = np.zeros((height, width), dtype=np.uint16)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0] * 4095  # R
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1] * 4095  # G
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1] * 4095  # G
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2] * 4095  # B
    tags = DNGTags()
    for tag, value in [(Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width), (Tag.TileLength, height),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array), (Tag.SamplesPerPixel, 1),
                       (Tag.BitsPerSample, 12), (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
                       (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095),
                       (Tag.ColorMatrix1, [[10000, 10000], [0, 10000], [0, 10000], [0, 10000], [10000, 10000], [0, 10000],
                                           [0, 10000], [0, 10000], [10000, 10000]]),
                       (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
                       (Tag.Make, "beholder"), (Tag.Model, "test"), (Tag.DNGVersion, DNGVersion.V1_4),
                       (Tag.DNGBackwardVersion, DNGVersion.V1_2), (Tag.Orientation, orientation)]:
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path=str(tmp_path) + "/", compress=False)
    writer.convert(mosaic, filename="mosaic")
    return (tmp_path / "mosaic.dng").read_bytes()
