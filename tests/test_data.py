from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from beholder.core.errors import UserError
from beholder.core.storage import Store, check_uri
from beholder.data.gallery import GalleryDataModule, GalleryDataset, build_transform, collate, tier_weights
from beholder.data.images import UnreadableImage, decode_image
from beholder.data.labels import LabelsError, parse_labels, regression_stats, split_labels, tier_midpoints

from conftest import encode, png_declaring

DATA_CONFIG = {"input_size": (3, 32, 64), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}


# --- labels -------------------------------------------------------------------------------------

def test_labels_missing_column_is_named():
    with pytest.raises(LabelsError, match=r"labels.csv: missing column\(s\) \['tier'\]"):
        parse_labels("image,score\na.jpg,1\n", "labels.csv")
    with pytest.raises(LabelsError, match=r"missing column\(s\) \['beauty_mean'\]"):
        parse_labels("image,tier\na.jpg,1\n", "labels.csv", score_column="beauty_mean")


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,tier\na.jpg,1\nb.jpg,7\n", "labels.csv line 3: tier 7 is outside 0..3"),
        ("image,tier\na.jpg,one\n", "labels.csv line 2: tier 'one' is not an integer"),
        ("image,tier\na.jpg,1\na.jpg,2\n", "line 3: image 'a.jpg' is listed twice"),
        ("image,tier,split\na.jpg,1,holdout\n", "line 2: split 'holdout'"),
        ("image,tier,beauty_mean\na.jpg,1,n/a\n", "line 2: beauty_mean 'n/a' is not a number"),
        ("image,tier\n", "no rows"),
    ],
)
def test_bad_labels_name_the_row(text, message):
    with pytest.raises(LabelsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_labels(text, "labels.csv", score_column="beauty_mean" if "beauty" in text else None)


def test_split_is_stratified_64_16_20_and_reproducible():
    text = "image,tier\n" + "".join(f"{i}.jpg,{0 if i < 500 else 1 if i < 900 else 2 if i < 950 else 3}\n" for i in range(1000))
    labels = parse_labels(text, "x")
    splits = split_labels(labels, seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [640, 160, 200]
    assert Counter(lb.tier for lb in splits["val"]) == {0: 80, 1: 64, 2: 8, 3: 8}
    assert split_labels(labels, seed=3) == splits
    assert split_labels(labels, seed=4)["val"] != splits["val"]


def test_split_column_is_honoured():
    labels = parse_labels("image,tier,split\na,0,test\nb,1,train\nc,3,val\n", "x")
    assert {s: [lb.image for lb in rows] for s, rows in split_labels(labels, 0).items()} == {
        "train": ["b"], "val": ["c"], "test": ["a"]
    }


def test_tier_midpoints_match_the_original_labels():
    tiers = [0] * 576 + [1] * 374 + [2] * 32 + [3] * 18  # the original project's proportions
    labels = parse_labels("image,tier\n" + "".join(f"{i},{t}\n" for i, t in enumerate(tiers)), "x")
    assert tier_midpoints(labels) == pytest.approx([0.288, 0.763, 0.966, 0.991], abs=1e-3)
    stats = regression_stats(labels)
    assert stats["tier_values"] == tier_midpoints(labels)


# --- images -------------------------------------------------------------------------------------

def test_decode_converts_odd_modes_to_rgb():
    rgb = Image.new("RGB", (20, 10), (200, 30, 40))
    for image in (rgb.convert("CMYK"), rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA")):
        fmt = "JPEG" if image.mode == "CMYK" else "PNG"
        out = decode_image(encode(image, fmt))
        assert out.mode == "RGB" and out.size == (20, 10)
    sixteen = Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16))
    pixel = decode_image(encode(sixteen)).getpixel((0, 0))
    assert pixel[0] == pixel[1] == pixel[2] and 150 < pixel[0] < 160  # 40000/65535 of white, not clipped


def test_decode_applies_exif_rotation():
    image = Image.new("RGB", (40, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    assert decode_image(encode(image, "JPEG", exif=exif)).size == (10, 40)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is a text file", "UnidentifiedImageError"),
        (encode(Image.new("RGB", (200, 200)), "JPEG")[:300], "(?i)truncated"),
    ],
)
def test_unreadable_files_say_why(data, reason):
    with pytest.raises(UnreadableImage, match=reason):
        decode_image(data)


def test_decompression_bomb_refused_before_decoding():
    bomb = png_declaring(30000, 30000)
    assert len(bomb) < 200
    with pytest.raises(UnreadableImage, match="pixels"):
        decode_image(bomb)
    with pytest.raises(UnreadableImage, match="5000x5000 pixels is more than the limit of 1000000"):
        decode_image(png_declaring(5000, 5000), max_pixels=1_000_000)


def test_unknown_uri_scheme_is_refused():
    with pytest.raises(UserError, match=r"gallery=.gs://b/x.: unknown URI scheme .gs."):
        check_uri("gs://b/x", "gallery")


# --- datasets -----------------------------------------------------------------------------------

def test_unreadable_images_are_skipped_in_batches(gallery):
    (gallery / "broken.jpg").write_bytes(b"not an image")
    images = ["sub0/img_000.jpg", "broken.jpg", "sub1/img_001.jpg", "gone.jpg"]
    dataset = GalleryDataset(str(gallery), images, Store(), build_transform(DATA_CONFIG, train=False))
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (2, 3, 32, 64)
    assert batch["image_path"] == ["sub0/img_000.jpg", "sub1/img_001.jpg"]
    assert [name for name, _ in batch["skipped"]] == ["broken.jpg", "gone.jpg"]


def test_training_augmentation_keeps_shape_and_evaluation_is_deterministic():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (237, 1820, 3), dtype=np.uint8))
    config = {**DATA_CONFIG, "input_size": (3, 48, 368)}
    train, evaluate = build_transform(config, True), build_transform(config, False)
    assert train(picture).shape == (1, 3, 48, 368)  # a panorama of about the input's shape: one tile
    assert not torch.equal(train(picture), train(picture))
    assert torch.equal(evaluate(picture), evaluate(picture))


def test_oversampling_evens_out_tiers(gallery):
    tiers = [0] * 500 + [1] * 300 + [2] * 30 + [3] * 10
    sampled = torch.multinomial(torch.tensor(tier_weights(tiers, 1.0)), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    shares = Counter(tiers[i] for i in sampled.tolist())
    assert all(abs(shares[t] / 20000 - 0.25) < 0.02 for t in range(4))
    assert tier_weights(tiers, 0.0) == [1.0] * len(tiers)

    datamodule = GalleryDataModule(str(gallery), str(gallery / "labels.csv"), batch_size=4, num_workers=0)
    datamodule.setup()
    datamodule.data_config = DATA_CONFIG
    drawn = Counter(t for batch in datamodule.train_dataloader() for t in batch["tier"].tolist())
    assert drawn[3] > 0.15 * sum(drawn.values())  # 10 % of the labels, about 25 % of the draws


def test_missing_images_stop_setup_or_are_dropped(gallery):
    labels = gallery / "labels.csv"
    labels.write_text(labels.read_text() + "nowhere/a.jpg,1,2.0\nnowhere/b.jpg,0,2.0\n")
    with pytest.raises(LabelsError, match=r"2 of 62 images in the labels are not under .*first: nowhere/a.jpg, nowhere/b.jpg.*on_missing=skip"):
        GalleryDataModule(str(gallery), str(labels)).setup()
    datamodule = GalleryDataModule(str(gallery), str(labels), on_missing="skip")
    datamodule.setup()
    assert sum(len(rows) for rows in datamodule.splits.values()) == 60


def test_missing_labels_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels: no such file"):
        GalleryDataModule(str(tmp_path), str(tmp_path / "nope.csv")).setup()


def test_symlinked_folders_in_a_gallery_are_listed_and_cycles_end(tmp_path):
    from beholder.core.storage import Store
    from beholder.data.gallery import list_gallery

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "linked.jpg")
    gallery = tmp_path / "gallery"
    (gallery / "day1").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(gallery / "day1" / "own.jpg")
    (gallery / "from_card").symlink_to(elsewhere, target_is_directory=True)
    (gallery / "day1" / "loop").symlink_to(gallery, target_is_directory=True)  # a cycle
    assert list(list_gallery(Store(), str(gallery))) == ["day1/own.jpg", "from_card/linked.jpg"]


def test_colour_jitter_is_off_unless_asked_for_in_code_and_config():
    from conftest import compose_train

    config = {"input_size": (3, 32, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert compose_train(["gallery=x", "labels=y"]).data.augment.jitter == 0.0
    assert not any(isinstance(t, T.ColorJitter) for t in build_transform(config, train=True, augment={"min_crop": 0.7}).transforms)
    assert any(isinstance(t, T.ColorJitter) for t in build_transform(config, train=True, augment={"jitter": 0.1}).transforms)


def test_group_by_keeps_each_capture_day_in_one_split_stratified_by_tier():
    rng = np.random.default_rng(0)
    rows = []
    for day in range(120):  # 120 days of 10 frames, 10 minutes apart; good days have several top-tier frames
        good = rng.random() < 0.15
        for frame in range(10):
            tier = int(rng.choice(4, p=[0.2, 0.4, 0.25, 0.15] if good else [0.6, 0.4, 0, 0]))
            rows.append(f"2019/{day:03d}/{frame}.jpg,{tier},2019-06-{day:03d} {8 + frame // 6:02d}:{frame % 6}0:00\n")
    text = "image,tier,date\n" + "".join(rows)
    labels = parse_labels(text, "labels.csv", group_by="date", group_pattern=r"\d{4}-\d{2}-\d{3}")
    assert len({lb.group for lb in labels}) == 120
    splits = split_labels(labels, seed=0)
    days = {name: {lb.group for lb in rows} for name, rows in splits.items()}
    assert not (days["train"] & days["val"] or days["train"] & days["test"] or days["val"] & days["test"])
    for name, share in zip(("train", "val", "test"), (0.64, 0.16, 0.20)):
        assert abs(len(splits[name]) / len(labels) - share) < 0.05
        top = sum(lb.tier >= 2 for lb in splits[name]) / sum(lb.tier >= 2 for lb in labels)
        assert abs(top - share) < 0.08, (name, top)
    assert split_labels(labels, seed=0) == splits and split_labels(labels, seed=1) != splits
    with pytest.raises(LabelsError, match=r"line 2: date '2019-06-000 08:00:00' does not match data.group_pattern="):
        parse_labels(text, "labels.csv", group_by="date", group_pattern=r"\d{8}")
    with pytest.raises(LabelsError, match=r"missing column\(s\) \['day'\]"):
        parse_labels(text, "labels.csv", group_by="day")


def test_group_by_reaches_the_training_split(gallery):
    module = GalleryDataModule(str(gallery), str(gallery / "labels.csv"), group_by="image", group_pattern=r"^sub\d")
    module.setup()
    folders = {name: {lb.image.split("/")[0] for lb in rows} for name, rows in module.splits.items()}
    assert sorted(len(f) for f in folders.values()) == [1, 1, 1] and len(set().union(*folders.values())) == 3


def test_cross_validation_folds_keep_near_copies_together_so_they_cannot_flatter_the_penalty():
    """The one fold splitter (fold_rows): every group in one fold, tiers spread; the probe's ridge
    penalty chosen on it does not reward memorising near-copies of the held-out photos."""
    from beholder.data.labels import fold_rows
    from beholder.train.probe import ridge_cv

    rng = np.random.default_rng(0)
    groups = [f"burst{g}" for g in range(40) for _ in range(5)]
    tiers = [g % 4 for g in range(40) for _ in range(5)]
    folds = fold_rows(tiers, groups, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(200))
    assert all(len({groups[i] for i in part} & {groups[i] for i in other}) == 0 for part in folds for other in folds if part is not other)
    assert all(len({tiers[i] for i in part}) == 4 for part in folds)
    centres, targets = rng.standard_normal((40, 100)), rng.standard_normal(40)  # no signal: each burst's own target
    x = np.repeat(centres, 5, axis=0) + 0.01 * rng.standard_normal((200, 100))
    y = np.repeat(targets, 5)
    alphas = (0.01, 1e5)
    assert ridge_cv(x, y, fold_rows(tiers, None, 5, seed=0), alphas)[2] == 0.01  # copies on both sides: memorising looks best
    assert ridge_cv(x, y, folds, alphas)[2] == 1e5  # whole bursts held out: nothing to memorise
