"""Technical quality: the measures, the calibrated head, and what predict does with them: reasons,
the order, the best frame of a burst, keywords in XMP, panoramas seen whole, one decode per photo."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beholder.technical import REASONS
from beholder.technical.degrade import DEGRADATIONS
from beholder.technical.judge import shipped_head, verdicts
from beholder.technical.measures import FEATURES, measure

ACORNS = Path(__file__).parent / "data" / "acorns.jpg"


@pytest.fixture(scope="module")
def acorns():
    return np.asarray(Image.open(ACORNS).convert("RGB"))


def degraded(rgb, kind, severity="strong"):
    return DEGRADATIONS[kind](rgb, severity, np.random.default_rng(0))


def test_each_measure_moves_with_its_failure(acorns):
    plain = dict(zip(FEATURES, measure(acorns)))
    moved = {kind: dict(zip(FEATURES, measure(degraded(acorns, kind, "moderate")))) for kind in DEGRADATIONS}
    assert moved["focus"]["focus"] < plain["focus"] - 1  # the detail of the sharpest tiles is gone
    assert moved["shake"]["coherence_fine"] > plain["coherence_fine"] + 0.2  # what detail is left runs one way
    assert moved["noise"]["noise"] > plain["noise"] + 0.3 and moved["noise"]["colour_noise"] > plain["colour_noise"]
    assert moved["highlights"]["clipped"] > plain["clipped"] + 0.1
    assert moved["shadows"]["p50"] < plain["p50"] * 0.6  # two stops down: about half the sRGB level


def test_a_sharp_subject_on_a_soft_background_is_in_focus(acorns):
    """Bokeh: the background blurred, the middle of the frame left sharp; judged on the sharpest part."""
    height, width = acorns.shape[:2]
    bokeh = degraded(acorns, "focus").copy()
    bokeh[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = acorns[height // 4: 3 * height // 4, width // 4: 3 * width // 4]
    head = shipped_head()
    sharp_middle, soft = verdicts(head.probabilities(np.array([measure(bokeh), measure(degraded(acorns, "focus"))])), list(REASONS),
                                  head.reject, head.review)
    assert sharp_middle.band is None and soft.band == "reject" and soft.failure == "focus"


def test_the_shipped_head_names_each_failure_and_passes_the_photo(acorns):
    head = shipped_head()
    photos = [acorns, *(degraded(acorns, kind) for kind in DEGRADATIONS)]
    found = verdicts(head.probabilities(np.array([measure(p) for p in photos])), list(REASONS), head.reject, head.review)
    assert found[0].band is None and found[0].quality > 0.5
    assert [(v.band, v.failure) for v in found[1:]] == [("reject", kind) for kind in DEGRADATIONS]
    only_focus = verdicts(head.probabilities(np.array([measure(degraded(acorns, "noise"))])), ["focus"], head.reject, head.review)
    assert only_focus[0].band is None  # a check that is off flags nothing
