"""Shared fixtures: small generated galleries, composed configs and a real S3 endpoint (moto)."""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import socket
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from beholder.core.entry import compose_config
from beholder.label import cli as label_cli
from beholder.models.scorenet import ScoreNet
from beholder.train.run import train

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "backbone.name=test_efficientnet",
    "backbone.pretrained=false",
    "data.image_size=[32,64]",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


CAPTURES = ["2015/12/31/2015_1231_120000", "2016/01/01/2016_0101_090000", "2016/01/01/2016_0101_091000",
            "2016/01/02/2016_0102_170000", "2016/02/10/2016_0210_080000"]

CHROMIUM = "/usr/bin/chromium"  # Debian's; .ci/run installs it


def pytest_collection_modifyitems(config, items):
    """Tests marked ``browser`` drive Debian's chromium: skipped where it is missing, except in CI
    (where a missing browser is a failure). Tests marked ``gpu`` are skipped without CUDA."""
    import torch

    missing = {"browser": None if os.path.exists(CHROMIUM) or os.environ.get("CI") else "needs Debian's chromium (.ci/run installs it)",
               "gpu": None if torch.cuda.is_available() else "needs a CUDA device"}
    for item in items:
        for marker, reason in missing.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True, scope="session")
def own_cache_folder(tmp_path_factory):
    """The user's cache (the default feature_cache) is the session's own, not the machine's ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


def make_gallery(folder: Path, count: int = 60, size=(64, 32), seed: int = 0, split_column=False) -> Path:
    """``count`` small images whose brightness grows with their tier; ``labels.csv`` beside them.

    Tiers roughly 50/30/10/10 % so that every split holds top-tier images.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tiers = np.array([0] * (count // 2) + [1] * (count * 3 // 10) + [2] * (count // 10))
    tiers = np.concatenate([tiers, [3] * (count - len(tiers))])
    rows = []
    for i, tier in enumerate(rng.permutation(tiers)):
        level = 40 + 60 * int(tier) + rng.integers(0, 20)
        pixels = np.clip(rng.normal(level, 10, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        name = f"sub{i % 3}/img_{i:03d}.jpg"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
        row = {"image": name, "tier": int(tier), "beauty_mean": round(1 + level / 50, 3)}
        if split_column:
            row["split"] = ("train", "train", "train", "val", "test")[i % 5]
        rows.append(row)
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def compose_train(overrides: list[str]):
    return compose_config("train", overrides)


@pytest.fixture
def gallery(tmp_path) -> Path:
    return make_gallery(tmp_path / "gallery")


@pytest.fixture
def tiny_cfg(gallery, tmp_path):
    def build(*overrides):
        return compose_train(
            TINY + [f"gallery={gallery}", f"labels={gallery}/labels.csv", f"output_dir={tmp_path}/run", *overrides]
        )

    return build


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, reached by boto3 over HTTP like any S3-compatible store."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket; returns (client, bucket name)."""
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = "beholder-" + request.node.name.lower().replace("_", "-")[:40]
    client.create_bucket(Bucket=name)
    return client, name


def upload_folder(client, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


PYTHON = sys.executable


PREDICT_FAST = ["num_workers=0", "batch_size=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "highlights=6",
                "feature_cache=null", "technical=off",  # the fixtures are noise: the technical tests use photos of their own
                "precision=fp32", "fold_norms=false"]  # scores to the bit, as the checkpoint's thresholds were drawn; bf16's:
# test_precision_follows_the_hardware, folded norms': test_folded_norms_give_the_same_scores_and_share_the_feature_cache


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model trained once for the session: (checkpoint path, gallery folder)."""
    root = tmp_path_factory.mktemp("trained")
    gallery = make_gallery(root / "gallery", count=60)
    cfg = compose_train(TINY + [f"gallery={gallery}", f"labels={gallery}/labels.csv", f"output_dir={root}/run"])
    train(cfg)
    return root / "run" / "checkpoints" / "best.ckpt", gallery


@pytest.fixture
def photos(trained, tmp_path):
    """A copy of the trained model's gallery, without its labels: a photographer's folder."""
    _, gallery = trained
    folder = tmp_path / "photos"
    shutil.copytree(gallery, folder)
    (folder / "labels.csv").unlink()
    return folder


@pytest.fixture
def served(monkeypatch):
    """Runs ``python -m beholder.label review ...`` up to the point of listening; yields the app it would serve."""
    started = {}

    def listen(args, review, app_with, what):
        started["app"], started["review"], started["what"] = app_with(None), review, what

    monkeypatch.setattr(label_cli, "listen", listen)
    return started


XMP_RATED = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"'
             ' xmlns:digiKam="http://www.digikam.org/ns/1.0/" {attributes}>{elements}'
             '</rdf:Description></rdf:RDF></x:xmpmeta>')


def sidecar(attributes="", elements=""):
    return XMP_RATED.format(attributes=attributes, elements=elements).encode()


def photo(path, seed=0, xmp=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **({"xmp": xmp} if xmp else {}))


def rated_photos(root: Path, sidecars: dict[str, bytes | None]) -> Path:
    """A photo ``NAME.jpg`` under ``root`` for each name, with ``sidecars[NAME]`` as its Lightroom-style
    ``NAME.xmp`` (None: no sidecar)."""
    for i, (name, packet) in enumerate(sidecars.items()):
        photo(root / f"{name}.jpg", i)
        if packet is not None:
            (root / f"{name}.xmp").write_bytes(packet)
    return root


def labels(path):
    with open(path) as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def compose_predict(overrides):
    return compose_config("predict", PREDICT_FAST + overrides)


def read_scores(path):
    """The rows of a CSV written by predict (scores.csv, skipped.csv)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- small shared helpers -----------------------------------------------------------------------

def encode(image: Image.Image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def tiny_net(**backbone):
    return ScoreNet({"name": "test_efficientnet", "pretrained": False, "trainable_blocks": 0, **backbone},
                    {"_target_": "beholder.models.heads.RegressionHead"}, [32, 64])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """The app on a real uvicorn server on 127.0.0.1 (threads: requests really run at once)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
