"""Technical quality: the measures, the calibrated head, and what predict does with them: reasons,
the order, the best frame of a burst, keywords in XMP, panoramas seen whole, one decode per photo."""

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import beholder.data.gallery as gallery_module
from beholder.core.errors import UserError
from beholder.core.storage import Store
from beholder.data.gallery import GalleryDataset, build_transform, collate, tile_boxes
from beholder.models.features import FeatureCache
from beholder.predict.run import predict
from beholder.predict.technical import SHARPNESS_TOLERANCE, burst_preference, final_order
from beholder.ratings.xmp import NAMESPACES, read_rating, xmp_sidecar
from beholder.technical import REASONS
from beholder.technical.degrade import DEGRADATIONS
from beholder.technical.judge import shipped_head, verdicts
from beholder.technical.measures import FEATURES, measure

from conftest import compose_predict, read_scores, sidecar

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


@pytest.fixture
def shoot(tmp_path, acorns):
    """A photographer's card: the photo, a strongly degraded copy for each failure, and a soft one they rated 5 stars."""
    folder = tmp_path / "card"
    folder.mkdir()
    Image.fromarray(acorns).save(folder / "IMG_0001.jpg", quality=95)
    for i, kind in enumerate(DEGRADATIONS, start=2):
        Image.fromarray(degraded(acorns, kind)).save(folder / f"IMG_000{i}.jpg", quality=95)
    Image.fromarray(degraded(acorns, "focus", "moderate")).save(folder / "IMG_0009.jpg", quality=95)
    (folder / "IMG_0009.xmp").write_bytes(sidecar('xmp:Rating="5"'))
    with open(tmp_path / "mine.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "tier", "rating"], ["IMG_0009.jpg", 3, 5]])
    return folder


def test_predict_rejects_the_technical_failures_with_a_reason_and_the_persons_stars_win(trained, shoot, tmp_path, capsys):
    ckpt, _ = trained
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={shoot}", f"output={tmp_path}/out", "technical=default", "threshold=-1",
                                       f"labels={tmp_path}/mine.csv", "xmp=true", "xmp_beside_images=true"]))
    rows = {row["image"]: row for row in read_scores(tmp_path / "out" / "scores.csv")}
    expected = {f"IMG_000{i}.jpg": REASONS[kind] for i, kind in enumerate(DEGRADATIONS, start=2)}
    assert {image: rows[image]["reason"] for image in expected} == expected and all(rows[image]["band"] == "reject" for image in expected)
    assert rows["IMG_0001.jpg"]["band"] == "keep" and rows["IMG_0001.jpg"]["rank"] == "1"  # threshold=-1 keeps by taste; first of the clean
    assert rows["IMG_0009.jpg"]["band"] == "keep" and rows["IMG_0009.jpg"]["reason"] == "rated"  # soft, but theirs
    assert float(rows["IMG_0001.jpg"]["technical"]) > 0.5 > max(float(rows[image]["technical"]) for image in expected)
    assert summary["technical"]["reject"] == {REASONS[kind]: 1 for kind in DEGRADATIONS} and summary["technical"]["rated"] == 1
    printed = capsys.readouterr().out
    assert "technical       5 rejected (" in printed and "; 1 more failed but keep the person's own verdict" in printed
    assert summary["rejected_for"] == {"technical failure": 5, "lesser frame of a burst": 0, "among the person's lowest ratings": 0,
                                       "the person's own verdict": 0, "taste score": 0}
    assert ": technical failure 5)" in printed  # threshold=-1: nothing rejected by taste
    theirs = read_rating((shoot / "IMG_0009.xmp").read_bytes())
    assert (theirs["rating"], theirs["label"], theirs["pick"]) == (5, "", None)  # not marked rejected in their tools
    assert "beholder|out of focus" in (shoot / "IMG_0009.xmp").read_text()  # yet the reason is there to filter on
    blurred = ET.parse(shoot / "IMG_0002.xmp").getroot()
    keywords = {(bag, li.text) for bag in ("hierarchicalSubject", "TagsList", "subject") for element in blurred.iter()
                if element.tag.endswith("}" + bag) for li in element.iter("{%s}li" % NAMESPACES["rdf"])}
    assert keywords == {("hierarchicalSubject", "beholder|out of focus"), ("TagsList", "beholder/out of focus"), ("subject", "beholder: out of focus")}
    assert "beholder|" not in (shoot / "IMG_0001.xmp").read_text()
    page = (tmp_path / "out" / "highlights.html").read_text()
    assert "reject · camera shake" in page

    plain = predict(compose_predict([f"ckpt={ckpt}", f"gallery={shoot}", f"output={tmp_path}/plain", "technical=off", "threshold=-1"]))
    assert plain["technical"] is None and "technical" not in read_scores(tmp_path / "plain" / "scores.csv")[0]
    with pytest.raises(UserError, match=r"technical.review=0.9 is above technical.reject=0.5"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={shoot}", f"output={tmp_path}/x", "technical=default", "technical.reject=0.5",
                                 "technical.review=0.9"]))
    with pytest.raises(UserError, match=r"technical.checks: blur unknown"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={shoot}", f"output={tmp_path}/x", "technical=default", "technical.checks=[blur]"]))


def test_keywords_replace_beholders_own_and_leave_the_photographers():
    theirs = sidecar("", '<dc:subject xmlns:dc="http://purl.org/dc/elements/1.1/"><rdf:Bag><rdf:li>Tom</rdf:li>'
                         '<rdf:li>wedding</rdf:li></rdf:Bag></dc:subject>')
    first = xmp_sidecar(1, "reject", 0.1, theirs, keywords=("camera shake",))
    again = xmp_sidecar(1, "reject", 0.1, first, keywords=("too dark",))
    later = xmp_sidecar(4, "keep", 0.9, again)
    items = lambda packet: sorted(li.text for li in ET.fromstring(packet.split(b"?>", 1)[1].rsplit(b"<?", 1)[0])  # noqa: E731
                                  .iter("{%s}li" % NAMESPACES["rdf"]))
    assert items(again) == ["Tom", "beholder/too dark", "beholder: too dark", "beholder|too dark", "wedding"]
    assert items(later) == ["Tom", "wedding"]


def test_the_order_puts_the_fine_first_and_within_a_tier_weighs_technical_quality_against_taste():
    rows = [{"image": "liked, likely blown", "score": 0.62, "technical": 0.3, "technical_band": None},
            {"image": "clean", "score": 0.60, "technical": 0.95, "technical_band": None},
            {"image": "well liked, rejected", "score": 0.99, "technical": 0.01, "technical_band": "reject"},
            {"image": "borderline", "score": 0.90, "technical": 0.2, "technical_band": "review"},
            {"image": "less liked, clean", "score": 0.1, "technical": 0.99, "technical_band": None}]
    assert [row["image"] for row in final_order(rows)] == ["clean", "liked, likely blown", "less liked, clean", "borderline", "well liked, rejected"]
    assert [row["rank"] for row in rows] == [2, 1, 5, 4, 3]
    untouched = [{"image": name, "score": score} for name, score in (("b", 0.2), ("a", 0.9))]
    assert [row["image"] for row in final_order(untouched)] == ["a", "b"]  # without the checks: taste alone


def test_the_best_frame_of_a_burst_is_the_sharpest_well_exposed_one_then_the_best_liked():
    def frame(name, score, focus, band=None):
        measured = np.zeros(len(FEATURES))
        measured[FEATURES.index("focus")] = focus
        return {"image": name, "score": score, "measured": measured, "technical_band": band}

    burst = [frame("liked but soft", 0.9, 0.2), frame("sharpest", 0.5, 0.9), frame("nearly as sharp", 0.7, 0.9 - SHARPNESS_TOLERANCE / 2),
             frame("shaken", 0.95, 0.1, "reject")]
    assert [row["image"] for row in burst_preference(burst)] == ["nearly as sharp", "sharpest", "liked but soft", "shaken"]


def test_a_panorama_is_seen_as_tiles_at_the_networks_resolution():
    assert tile_boxes(1820, 237, 260, 260) == [(round(i * 1820 / 8), 0, round((i + 1) * 1820 / 8), 237) for i in range(8)]
    assert len(tile_boxes(600, 400, 260, 260)) == 1  # a 3:2 photo: seen whole, as trained
    assert len(tile_boxes(237, 1820, 260, 260)) == 8  # and tall ones upright
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    panorama = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 512, 3), dtype=np.uint8))
    tiles = build_transform(config, train=False)(panorama)
    assert tiles.shape == (8, 3, 32, 32)
    assert torch.allclose(tiles[0], build_transform(config, train=False)(panorama.crop((0, 0, 64, 64)))[0])


def test_a_panorama_scores_from_the_mean_of_its_tiles(trained, tmp_path):
    from beholder.models.load import load_checkpoint

    ckpt, _ = trained
    module = load_checkpoint(str(ckpt))
    _, height, width = module.net.data_config["input_size"]
    folder = tmp_path / "panoramas"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width * 6, 3), dtype=np.uint8)).save(folder / "pano.png")
    dataset = GalleryDataset(str(folder), ["pano.png"], Store(), build_transform(module.net.data_config, train=False))
    batch = collate([dataset[0]])
    assert batch["image"].shape[0] == 6 and batch["tiles"].tolist() == [6]
    with torch.no_grad():
        assert torch.allclose(module.net.photo_features(batch["image"], batch["tiles"])[0], module.net.features(batch["image"]).mean(0), atol=1e-5)


def test_a_photo_is_decoded_once_and_not_at_all_when_its_features_and_measures_are_cached(tmp_path, acorns, monkeypatch):
    Image.fromarray(acorns).save(tmp_path / "a.jpg")
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    decodes = []
    real = gallery_module.decode_image
    monkeypatch.setattr(gallery_module, "decode_image", lambda *args: decodes.append(args[2:]) or real(*args))
    features, measures = FeatureCache(str(tmp_path / "c"), "net", 4), FeatureCache(str(tmp_path / "c"), "technical", len(FEATURES))
    dataset = GalleryDataset(str(tmp_path), ["a.jpg"], Store(), build_transform(config, train=False), cache=features, measures=True,
                             measures_cache=measures)
    first = dataset[0]
    assert len(decodes) == 1 and decodes[0][1] == 1024 and first["image"].shape == (1, 3, 32, 32)  # one decode, for both
    assert np.allclose(first["technical"].numpy(), measure(Image.open(tmp_path / "a.jpg").convert("RGB")), atol=1e-5)
    features.put(first["content"], 0, np.ones(4, np.float32))
    again = dataset[0]
    assert len(decodes) == 1 and "image" not in again and torch.equal(again["technical"], first["technical"])
