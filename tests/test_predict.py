import csv
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from beholder.core.errors import UserError
from beholder.core.storage import Store
from beholder.data.gallery import GalleryDataModule, GalleryDataset, build_transform
from beholder.models.checkpoint import FORMAT as CHECKPOINT_FORMAT
from beholder.models.load import load_checkpoint
from beholder.models.metrics import spearman
from beholder.predict.run import Incomplete, predict
from beholder.ratings.xmp import star_rating
from beholder.search.embeddings import read_parquet

from conftest import PREDICT_FAST, PYTHON, ROOT, compose_predict, read_scores, sidecar, upload_folder


def copy_gallery(gallery, target):
    shutil.copytree(gallery, target)
    (target / "labels.csv").unlink()
    return target


def test_scores_every_image_and_lists_the_skipped(trained, tmp_path):
    ckpt, gallery = trained
    photos = copy_gallery(gallery, tmp_path / "photos")
    (photos / "broken.JPG").write_bytes(b"not a photo")
    (photos / "notes.txt").write_text("not an image suffix: not even found")
    (photos / "sub0" / "upper.PNG").write_bytes((photos / "sub0" / "img_000.jpg").read_bytes())
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out"]))

    rows = read_scores(tmp_path / "out" / "scores.csv")
    skipped = read_scores(tmp_path / "out" / "skipped.csv")
    assert summary["found"] == 62 == len(rows) + len(skipped)
    assert [row["image"] for row in skipped] == ["broken.JPG"] and skipped[0]["reason"]
    assert "sub0/upper.PNG" in {row["image"] for row in rows}
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert [int(row["rank"]) for row in rows] == list(range(1, 62))
    assert list(rows[0]) == ["image", "score", "tier", "p_tier_below2", "p_tier2_up", "band", "keep", "reason", "rank", "group", "group_rank", "group_size"]
    assert all(abs(float(r["p_tier2_up"]) - float(r["score"])) < 1e-3 for r in rows)
    kept = [row for row in rows if row["keep"] == "true"]
    assert summary["kept"] == len(kept) and rows[: len(kept)] == kept  # kept ones are the best ones

    page = (tmp_path / "out" / "highlights.html").read_text()
    assert page.count("<img src='data:image/jpeg;base64,") >= 6
    for row in rows[:6]:
        assert f"data-image='{row['image']}'" in page or f'data-image="{row["image"]}"' in page
    assert "Highest-scoring rejected" in page and "Lowest-scoring kept" in page
    kept_shards = sorted(p.name.split("-")[0] for p in (tmp_path / "out" / ".beholder-partial").iterdir())
    assert kept_shards == ["lock", "run.json", "scores", "skipped"]  # compacted, for the next run into this output

    # embeddings.parquet: each scored image once, the head's input L2-normalised, float16
    images, vectors, metadata = read_parquet((tmp_path / "out" / "embeddings.parquet").read_bytes())
    module = load_checkpoint(str(ckpt))
    assert images == [row["image"] for row in rows] and vectors.dtype == np.float16
    assert vectors.shape == (61, module.net.head.fc.in_features) and metadata["beholder.dimension"] == str(vectors.shape[1])
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=2e-3)
    picture = GalleryDataset(str(photos), [images[0]], Store(), build_transform(module.net.data_config, train=False))[0]["image"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(module.net.standardise(module.net.features(picture)), dim=-1)[0].numpy()
    assert np.allclose(vectors[0].astype(np.float32), expected, atol=2e-3)
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/plain", "embeddings=false"]))
    assert not (tmp_path / "plain" / "embeddings.parquet").exists() and (tmp_path / "plain" / "scores.csv").exists()


def test_checkpoint_threshold_keeps_every_top_tier_validation_image(trained, tmp_path):
    ckpt, gallery = trained
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]))
    keep = {row["image"]: row["keep"] == "true" for row in read_scores(tmp_path / "out" / "scores.csv")}
    datamodule = GalleryDataModule(str(gallery), str(gallery / "labels.csv"))  # the same seeded split
    datamodule.setup()
    top = [lb.image for lb in datamodule.splits["val"] if lb.tier >= 2]
    assert top and all(keep[image] for image in top)


def test_keep_top_and_threshold_options(trained, tmp_path):
    ckpt, gallery = trained
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/a", "keep_top=0.25"]))
    assert summary["kept"] == 15 and summary["threshold_source"].startswith("keep_top=0.25")
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/b", "threshold=2.0"]))
    assert summary["kept"] == 0
    with pytest.raises(UserError, match="give at most one of keep_recall, threshold, keep_top"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/c", "keep_top=0.2", "threshold=0.5"]))
    with pytest.raises(UserError, match=r"keep_recall=1.5: give a share in \(0, 1\]"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/c", "keep_recall=1.5"]))


def test_resume_after_an_interrupted_run_gives_each_image_once(trained, tmp_path):
    ckpt, gallery = trained
    args = [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]
    with pytest.raises(Incomplete, match="44 of 60 images are not processed yet; rerun"):
        predict(compose_predict(args + ["+trainer.limit_predict_batches=2"]))  # stops after 16 images
    assert not (tmp_path / "out" / "scores.csv").exists()  # nothing posing as complete
    shard = tmp_path / "out" / ".beholder-partial" / "scores-rank0.csv"
    with open(shard, "a") as f:
        f.write("sub1/img_099.jpg,0.5")  # a line cut short by a crash
    summary = predict(compose_predict(args))
    assert summary["newly_scored"] == 44
    images = [row["image"] for row in read_scores(tmp_path / "out" / "scores.csv")]
    assert len(images) == len(set(images)) == 60
    assert read_parquet((tmp_path / "out" / "embeddings.parquet").read_bytes())[0] == images  # each image once, as ranked


def test_a_crash_after_the_embeddings_rebuilds_them_from_the_shards(trained, tmp_path, monkeypatch):
    """Killed between embeddings.parquet and scores.csv: the rerun scores nothing again, rewrites the
    index from the kept shards, and until then beholder similar refuses the unfinished output."""
    from beholder.search.cli import main as similar

    ckpt, gallery = trained
    args = [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]
    write = Store.write

    def dies_at_scores(self, uri, data):
        if uri.endswith("scores.csv"):
            raise OSError("killed")
        write(self, uri, data)

    monkeypatch.setattr(Store, "write", dies_at_scores)
    with pytest.raises(UserError, match="the scores are kept in"):
        predict(compose_predict(args))
    monkeypatch.setattr(Store, "write", write)
    (tmp_path / "out" / "embeddings.parquet").write_bytes((tmp_path / "out" / "embeddings.parquet").read_bytes()[:1000])
    with pytest.raises(SystemExit):
        similar(["--scored", str(tmp_path / "out"), "--query", "sub0/img_000.jpg"])
    summary = predict(compose_predict(args))
    assert summary["newly_scored"] == 0 and summary["scored"] == 60
    images = read_parquet((tmp_path / "out" / "embeddings.parquet").read_bytes())[0]
    assert images == [row["image"] for row in read_scores(tmp_path / "out" / "scores.csv")]


def test_xmp_sidecars_carry_the_rating(trained, tmp_path):
    ckpt, gallery = trained
    photos = copy_gallery(gallery, tmp_path / "photos")
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "xmp=true", "keep_top=0.5", "xmp_stars=true"]))
    rows = read_scores(tmp_path / "out" / "scores.csv")
    ns = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "xmp": "http://ns.adobe.com/xap/1.0/"}
    for row in (rows[0], rows[-1]):
        sidecar = tmp_path / "out" / "xmp" / (os.path.splitext(row["image"])[0] + ".xmp")
        description = ET.parse(sidecar).getroot().find("rdf:RDF/rdf:Description", ns)
        rating = int(description.get(f"{{{ns['xmp']}}}Rating"))
        assert rating == star_rating(int(row["rank"]), 30, row["band"])
    assert star_rating(1, 30, "keep") == 5 and star_rating(40, 30, "review") == 2 and star_rating(60, 30, "reject") == 1
    assert not list(photos.rglob("*.xmp"))
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out2", "xmp=true", "xmp_beside_images=true"]))
    assert len(list(photos.rglob("*.xmp"))) == 60


def test_predict_from_and_to_s3(trained, tmp_path, s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ckpt, gallery = trained
    client, bucket = s3_bucket
    upload_folder(client, bucket, copy_gallery(gallery, tmp_path / "photos"), "panocam/2019")
    summary = predict(compose_predict([
        f"ckpt={ckpt}", f"gallery=s3://{bucket}/panocam/2019/", f"output=s3://{bucket}/scores/2019/",
        f"endpoint_url={s3_endpoint}",
    ]))
    assert summary["scored"] == 60
    body = client.get_object(Bucket=bucket, Key="scores/2019/scores.csv")["Body"].read().decode()
    assert len(body.strip().splitlines()) == 61
    keys = {obj["Key"] for obj in client.list_objects_v2(Bucket=bucket, Prefix="scores/")["Contents"]}
    kept = {key for key in keys if key.startswith("scores/2019/.beholder-partial/")}  # compacted, for the next run
    assert sorted(key.rsplit("/", 1)[1].split("-")[0] for key in kept) == ["run.json", "scores", "skipped"]
    assert keys - kept == {f"scores/2019/{name}" for name in ("scores.csv", "skipped.csv", "highlights.html", "embeddings.parquet", "model.ckpt")}
    parquet = client.get_object(Bucket=bucket, Key="scores/2019/embeddings.parquet")["Body"].read()
    assert len(read_parquet(parquet)[0]) == 60


def test_an_interrupted_s3_run_resumes_from_every_small_shard(trained, tmp_path, s3_bucket, s3_endpoint, monkeypatch):
    """S3 shards are read a few downloads ahead (PREFETCH): a rerun finds every object's rows."""
    from beholder.predict import shards

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(shards, "FLUSH_ROWS", 1)  # an object per batch of 8
    monkeypatch.setattr(shards, "PREFETCH", 2)
    ckpt, gallery = trained
    client, bucket = s3_bucket
    upload_folder(client, bucket, copy_gallery(gallery, tmp_path / "photos"), "day")
    args = [f"ckpt={ckpt}", f"gallery=s3://{bucket}/day/", f"output=s3://{bucket}/out/", f"endpoint_url={s3_endpoint}"]
    with pytest.raises(Incomplete, match="20 of 60 images are not processed yet"):
        predict(compose_predict(args + ["+trainer.limit_predict_batches=5"]))
    objects = [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket, Prefix="out/.beholder-partial/scores-")["Contents"]]
    assert len(objects) == 5
    summary = predict(compose_predict(args))
    assert summary["newly_scored"] == 20 and summary["scored"] == 60


def run_predict(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([PYTHON, str(ROOT / "predict.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_give_the_same_scores_as_one(trained, tmp_path):
    ckpt, gallery = trained
    base = PREDICT_FAST + [f"ckpt={ckpt}", f"gallery={gallery}"]
    one = run_predict(base + [f"output={tmp_path}/one", f"hydra.run.dir={tmp_path}/h1"], tmp_path)
    two = run_predict(base + [f"output={tmp_path}/two", "trainer.strategy=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path}/h2"], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert "images/s, 2 processes)" in two.stdout
    a = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "one" / "scores.csv")}
    b = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "two" / "scores.csv")}
    assert a.keys() == b.keys() and len(a) == 60
    assert max(abs(a[k] - b[k]) for k in a) < 1e-4


@pytest.mark.slow
def test_bad_input_gives_one_line_and_nonzero_exit(trained, tmp_path):
    ckpt, gallery = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_a_checkpoint.ckpt").write_bytes(b"garbage")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    (tmp_path / "a_file").write_text("x")
    cases = {
        "ckpt: no such file": [f"ckpt={tmp_path}/missing.ckpt", f"gallery={gallery}", f"output={tmp_path}/o1"],
        "not a readable checkpoint": [f"ckpt={tmp_path}/not_a_checkpoint.ckpt", f"gallery={gallery}", f"output={tmp_path}/o2"],
        f"checkpoint format None, this beholder reads format {CHECKPOINT_FORMAT}":
            [f"ckpt={tmp_path}/foreign.ckpt", f"gallery={gallery}", f"output={tmp_path}/o3"],
        "no images (jpg, jpeg, png, webp, tif) found": [f"ckpt={ckpt}", f"gallery={tmp_path}/empty", f"output={tmp_path}/o4"],
        "unknown URI scheme 'gs'": [f"ckpt={ckpt}", "gallery=gs://bucket/x", f"output={tmp_path}/o5"],
        "cannot write there": [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/a_file/out"],
        "promise_recall=1.5: give a share in (0, 1)": [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/o6", "promise_recall=1.5"],
        "trainer.precision='fp8': give 32-true, bf16-mixed": [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/o7", "trainer.precision=fp8"],
        "num_workers=-1: give a whole number of loader processes": [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/o8", "num_workers=-1"],
        "trainer.num_nodes=2: start the command on each machine with torchrun or srun":
            [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/o9", "trainer.num_nodes=2"],
    }
    # The command line once: exit code 2 and one line, no traceback; the same checks in-process after.
    message, args = next(iter(cases.items()))
    result = run_predict(args + [f"hydra.run.dir={tmp_path}/h"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("beholder: error: ") and message in last, (message, last)
    for message, args in cases.items():
        with pytest.raises(UserError) as refused:
            predict(compose_predict(args))
        assert message in " ".join(str(refused.value).split()), message
    assert not list(tmp_path.glob("o*/scores.csv"))


@pytest.mark.slow
def test_gpu_options_are_accepted_on_a_cpu_and_keep_the_ranking(trained, tmp_path):
    """bf16 + channels_last + torch.compile: the features in bfloat16, the head in fp32."""
    ckpt, gallery = trained
    plain = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/plain", "precision=fp32"]))
    fast = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/fast",
                                    "precision=bf16", "channels_last=true", "compile=true"]))
    assert plain["scored"] == fast["scored"] == 60
    a = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "plain" / "scores.csv")}
    b = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "fast" / "scores.csv")}
    assert max(abs(a[k] - b[k]) for k in a) < 0.05 and a != b  # bfloat16 features: close, not the same numbers
    assert len(set(b.values())) == 60  # scored in fp32: no ties from 8-bit mantissas
    assert spearman(torch.tensor([a[k] for k in a]), torch.tensor([b[k] for k in a])) > 0.95



@pytest.mark.parametrize("native, precision, expected", [
    ("AVX512-BF16", "auto", "bf16, channels_last  (precision=auto, native on this machine: AVX512-BF16)"),
    (None, "auto", "fp32, channels_last  (precision=auto, no native bf16 on this machine)"),
    ("AVX512-BF16", "fp32", "fp32, channels_last  (precision=fp32)"),
])
def test_precision_follows_the_hardware_unless_given(trained, tmp_path, monkeypatch, capsys, native, precision, expected):
    import beholder.predict.run as run

    monkeypatch.setattr(run, "native_bf16", lambda accelerator: native)
    ckpt, gallery = trained
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}/sub0", f"output={tmp_path}/out", f"precision={precision}"]))
    assert summary["computed_in"]["precision"] == expected.split(",")[0]
    assert f"computed in     {expected}" in capsys.readouterr().out


def other_checkpoint(trained, tmp_path):
    """The trained checkpoint with its head turned around: another model that ranks the other way."""
    checkpoint = torch.load(trained[0], map_location="cpu", weights_only=True)
    for name in [n for n in checkpoint["state_dict"] if n.startswith("net.head.fc.")]:
        checkpoint["state_dict"][name] = -checkpoint["state_dict"][name]
    torch.save(checkpoint, tmp_path / "other.ckpt")
    return tmp_path / "other.ckpt"


def test_a_resume_never_mixes_checkpoints_galleries_or_changed_files(trained, tmp_path, capsys):
    ckpt, gallery = trained
    photos = copy_gallery(gallery, tmp_path / "photos")
    other = other_checkpoint(trained, tmp_path)
    predict(compose_predict([f"ckpt={other}", f"gallery={photos}", f"output={tmp_path}/clean"]))
    clean = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "clean" / "scores.csv")}

    # checkpoint A scores part of the gallery, then checkpoint B runs into the same output
    with pytest.raises(Incomplete):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "+trainer.limit_predict_batches=4"]))
    capsys.readouterr()
    summary = predict(compose_predict([f"ckpt={other}", f"gallery={photos}", f"output={tmp_path}/out"]))
    assert summary["newly_scored"] == 60 and summary["rescored"] == {"checkpoint changed": 60}
    assert "rescored        60  (checkpoint changed)" in capsys.readouterr().out
    scores = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "out" / "scores.csv")}
    assert scores == pytest.approx(clean, abs=1e-4)

    # another gallery reusing the same names
    renamed = copy_gallery(gallery, tmp_path / "card2")
    with pytest.raises(Incomplete):
        predict(compose_predict([f"ckpt={other}", f"gallery={photos}", f"output={tmp_path}/g", "+trainer.limit_predict_batches=4"]))
    summary = predict(compose_predict([f"ckpt={other}", f"gallery={renamed}", f"output={tmp_path}/g"]))
    assert summary["rescored"] == {"gallery changed": 60}

    # files edited after they were scored are scored again, the rest kept
    with pytest.raises(Incomplete):
        predict(compose_predict([f"ckpt={other}", f"gallery={photos}", f"output={tmp_path}/f", "+trainer.limit_predict_batches=4"]))
    done = {row["image"] for row in read_scores(tmp_path / "f" / ".beholder-partial" / "scores-rank0.csv")}
    edited = sorted(done)[:3]
    for name in edited:
        (photos / name).write_bytes((photos / sorted(set(clean) - done)[0]).read_bytes())
    summary = predict(compose_predict([f"ckpt={other}", f"gallery={photos}", f"output={tmp_path}/f"]))
    assert summary["newly_scored"] == 60 - len(done) + 3 and summary["rescored"] == {"changed since scored": 3}
    scores = {r["image"]: float(r["score"]) for r in read_scores(tmp_path / "f" / "scores.csv")}
    replacement = scores[sorted(set(clean) - done)[0]]
    assert all(scores[name] == pytest.approx(replacement, abs=1e-4) for name in edited)


def test_same_stem_images_get_their_own_sidecars_and_existing_ones_are_merged(trained, tmp_path):
    ckpt, gallery = trained
    photos = copy_gallery(gallery, tmp_path / "photos")
    first, second = sorted(p for p in photos.rglob("*.jpg"))[:2]
    from PIL import Image

    Image.open(second).save(first.with_suffix(".png"))  # dup.jpg and dup.png: two images, one stem
    lightroom = first.with_suffix(".xmp")
    lightroom.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        '<xmp:Rating>2</xmp:Rating><dc:subject><rdf:Bag><rdf:li>needle</rdf:li></rdf:Bag></dc:subject>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>')
    broken = second.with_suffix(".xmp")
    broken.write_text("my own notes, not XMP")
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "xmp=true",
                                       "xmp_beside_images=true", "xmp_stars=true"]))
    rows = {r["image"]: r for r in read_scores(tmp_path / "out" / "scores.csv")}
    ns = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "xmp": "http://ns.adobe.com/xap/1.0/", "dc": "http://purl.org/dc/elements/1.1/"}
    for image in (first, first.with_suffix(".png")):
        relative = str(image.relative_to(photos))
        sidecar = photos / (relative + ".xmp")
        description = ET.parse(sidecar).getroot().find(".//rdf:Description", ns)
        row = rows[relative]
        assert int(description.get(f"{{{ns['xmp']}}}Rating")) == star_rating(int(row["rank"]), summary["kept"], row["band"])
    assert lightroom.read_text().count("needle") == 1 and "Rating>2" in lightroom.read_text()  # not this image's sidecar now
    assert broken.read_text() == "my own notes, not XMP" and any(str(broken) in p for p in summary["sidecars"]["left_alone"])

    # an existing sidecar of the usual name is merged into: the photographer's keywords stay
    third = sorted(p for p in photos.rglob("*.jpg"))[2]
    third.with_suffix(".xmp").write_text(lightroom.read_text())
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out2", "xmp=true", "xmp_beside_images=true"]))
    merged = ET.parse(third.with_suffix(".xmp")).getroot().find(".//rdf:Description", ns)
    assert merged.find("dc:subject/rdf:Bag/rdf:li", ns).text == "needle"
    assert merged.find("xmp:Rating", ns).text == "2" and merged.get("{https://github.com/beholder/ns/1.0/}Band")  # the hand rating stays
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out3", "xmp=true", "xmp_beside_images=true",
                             "xmp_overwrite_ratings=true", "xmp_stars=true"]))
    merged = ET.parse(third.with_suffix(".xmp")).getroot().find(".//rdf:Description", ns)
    assert merged.find("dc:subject/rdf:Bag/rdf:li", ns).text == "needle"
    assert merged.find("xmp:Rating", ns) is None and merged.get(f"{{{ns['xmp']}}}Rating") in {"1", "2", "3", "4", "5"}


def test_review_band_between_the_promised_and_the_plain_threshold(trained, tmp_path):
    ckpt, gallery = trained
    photos = copy_gallery(gallery, tmp_path / "photos")
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/plain", "threshold=-100"]))
    scores = sorted(float(r["score"]) for r in read_scores(tmp_path / "plain" / "scores.csv"))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["val_positive_scores"] = sorted(scores * 5, reverse=True)  # 300 calibration photos: enough for the promise
    torch.save(checkpoint, tmp_path / "calibrated.ckpt")
    summary = predict(compose_predict([f"ckpt={tmp_path}/calibrated.ckpt", f"gallery={photos}", f"output={tmp_path}/out",
                                       "keep_recall=0.5", "xmp=true"]))
    rows = read_scores(tmp_path / "out" / "scores.csv")
    bands = {band: [float(r["score"]) for r in rows if r["band"] == band] for band in ("keep", "review", "reject")}
    assert summary["review"] == len(bands["review"]) > 0 and summary["kept"] + summary["review"] + summary["rejected"] == 60
    assert min(bands["keep"]) >= summary["threshold"] - 1e-6 > max(bands["review"])
    assert min(bands["review"]) >= summary["reject_below"] - 1e-6 > max(bands["reject"], default=-1e9)
    assert summary["gallery_reduction"] == len(bands["reject"]) / 60
    assert "of the 300 calibration photos (tier >= 2, scored out of training)" in summary["threshold_source"]
    assert summary["threshold_source"].endswith("keeps >= 95% of new photos (tier >= 2) with 90% confidence")
    review = next(r for r in rows if r["band"] == "review")
    packet = (tmp_path / "out" / "xmp" / (os.path.splitext(review["image"])[0] + ".xmp")).read_text()
    assert 'xmp:Label="Yellow"' in packet and "xmp:Rating" not in packet  # stars only with xmp_stars=true
    page = (tmp_path / "out" / "highlights.html").read_text()
    assert page.index("<svg") < page.index("<h2>") and f"To review: {summary['review']} between the thresholds" in page


def test_a_growing_library_scores_only_what_was_added_or_changed(trained, tmp_path, capsys):
    ckpt, gallery = trained
    photos = copy_gallery(gallery, tmp_path / "photos")
    args = [f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out"]
    first = predict(compose_predict(args))
    before = {row["image"]: row["score"] for row in read_scores(tmp_path / "out" / "scores.csv")}
    for i in range(3):  # a new shoot
        shutil.copy(photos / "sub0" / f"img_{3 * i:03d}.jpg", photos / f"new_{i}.jpg")
    (photos / "sub1" / "img_001.jpg").write_bytes((photos / "sub2" / "img_002.jpg").read_bytes())  # edited
    (photos / "sub2" / "img_005.jpg").unlink()  # deleted
    capsys.readouterr()
    second = predict(compose_predict(args))
    assert first["newly_scored"] == 60 and second["newly_scored"] == 4
    assert second["since_last_run"] == {"new": 3, "changed": 1, "gone": 1}
    assert "since last run  3 new, 1 changed, 1 gone" in capsys.readouterr().out
    after = {row["image"]: row["score"] for row in read_scores(tmp_path / "out" / "scores.csv")}
    assert set(after) == set(before) - {"sub2/img_005.jpg"} | {"new_0.jpg", "new_1.jpg", "new_2.jpg"}
    assert after["new_1.jpg"] == before["sub0/img_003.jpg"] and after["sub1/img_001.jpg"] == before["sub2/img_002.jpg"]
    unchanged = set(before) & set(after) - {"sub1/img_001.jpg"}
    assert all(after[image] == before[image] for image in unchanged)
    images = read_parquet((tmp_path / "out" / "embeddings.parquet").read_bytes())[0]
    assert sorted(images) == sorted(after)  # the embeddings of the whole gallery, each once
    assert predict(compose_predict(args))["newly_scored"] == 0


def test_rated_photos_keep_their_verdict_and_a_small_cut_says_why(trained, photos, tmp_path, capsys):
    ckpt, _ = trained
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["val_positive_scores"] = [-1.0] * 30  # calibration photos that score below everything: nothing is culled
    torch.save(checkpoint, tmp_path / "generous.ckpt")
    (tmp_path / "mine.csv").write_text("image,tier,rating,source\nsub0/img_000.jpg,0,1,photographer\nsub1/img_001.jpg,3,5,photographer\n"
                                      "elsewhere/gone.jpg,2,4,photographer\n")
    summary = predict(compose_predict([f"ckpt={tmp_path}/generous.ckpt", f"gallery={photos}", f"output={tmp_path}/out",
                                       f"labels={tmp_path}/mine.csv"]))
    rows = {row["image"]: row for row in read_scores(tmp_path / "out" / "scores.csv")}
    assert (rows["sub0/img_000.jpg"]["band"], rows["sub0/img_000.jpg"]["reason"]) == ("reject", "rated")
    assert (rows["sub1/img_001.jpg"]["band"], rows["sub1/img_001.jpg"]["reason"]) == ("keep", "rated")
    assert summary["rated"] == {"keep": 1, "reject": 1} and summary["rejected"] == 1
    printed = capsys.readouterr().out
    assert "rated           2 keep the person's own verdict (1 keep, 1 reject)" in printed
    assert "warning         only 2% of the gallery is culled" in printed and "cull=hard (a personal model" in printed and "keep_top=0.3" in printed
    with pytest.raises(UserError, match="labels=.*no such file"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/o2", f"labels={tmp_path}/none.csv"]))


def test_the_summarys_counts_add_up_and_match_the_files_on_disk(trained, photos, tmp_path, capsys):
    ckpt, _ = trained
    (photos / "sub0" / "broken.jpg").write_bytes(b"not a photo")
    (photos / "notes.txt").write_text("the photographer's notes")
    (photos / "sub1" / "img_001.xmp").write_bytes(sidecar('xmp:Rating="4"'))  # the photographer's, merged into
    args = [f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "xmp=true", "xmp_beside_images=true", "keep_top=0.3",
            f"labels={tmp_path}/mine.csv"]
    with open(tmp_path / "mine.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "tier", "rating"], ["sub1/img_001.jpg", 2, 4], ["sub2/img_002.jpg", 0, -1]])
    summary = predict(compose_predict(args))
    scores, skipped = read_scores(tmp_path / "out" / "scores.csv"), read_scores(tmp_path / "out" / "skipped.csv")
    assert summary["found"] == summary["scored"] + summary["skipped"] == 61 and summary["ignored"] == {"other file types": 1}
    assert (summary["scored"], summary["skipped"]) == (len(scores), len(skipped)) == (60, 1)
    bands = {band: sum(row["band"] == band for row in scores) for band in ("keep", "review", "reject")}
    assert (summary["kept"], summary["review"], summary["rejected"]) == (bands["keep"], bands["review"], bands["reject"])
    assert sum(summary["rejected_for"].values()) == summary["rejected"] and summary["rejected_for"]["the person's own verdict"] == 1
    assert summary["rated"] == {"keep": 1, "reject": 1} == {band: sum(r["reason"] == "rated" and r["band"] == band for r in scores)
                                                              for band in ("keep", "reject")}
    sidecars = summary["sidecars"]
    assert (sidecars["created"], sidecars["merged"], sidecars["unchanged"], len(sidecars["left_alone"])) == (59, 1, 0, 0)
    assert len(list(photos.rglob("*.xmp"))) == 60  # one per scored photo, the photographer's among them
    printed = capsys.readouterr().out
    assert "images found    61" in printed and "scored          60" in printed and "skipped         1" in printed
    again = predict(compose_predict(args))["sidecars"]
    assert (again["created"], again["merged"], again["unchanged"]) == (0, 0, 60) and len(list(photos.rglob("*.xmp"))) == 60


def test_the_shards_of_a_large_gallery_are_read_a_line_at_a_time(tmp_path):
    """The shards' text and the embeddings are never held whole: memory stays a small share of a
    shard's size (the embeddings wait in a temporary file), and each vector comes back as written."""
    import tracemalloc

    from beholder.predict.shards import FIELDS, RowCheck, append_rows, read_shards, score_row
    from beholder.search.embeddings import encode

    count, dimension = 1500, 5424  # the default model's embedding width
    vectors = np.random.default_rng(0).standard_normal((count, dimension)).astype(np.float16)
    rows = [score_row(f"day/{i:05d}.jpg", "v1", "m", 5.0, 1, [], None, encode(vectors[i]), None) for i in range(count)]
    shard = tmp_path / "scores-rank0.csv"
    append_rows(str(shard), FIELDS["scores"], rows)
    del rows
    versions = {f"day/{i:05d}.jpg": "v1" for i in range(count)}
    tracemalloc.start()
    found = read_shards(Store(), str(tmp_path), versions, "m", RowCheck(0, 10, dimension), embeddings=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(found.scored) == count and peak < shard.stat().st_size / 10
    order = [found.scored[f"day/{i:05d}.jpg"]["embedding"] for i in range(count)]
    assert np.array_equal(found.embeddings[order], vectors)


def test_a_complete_run_keeps_its_rows_in_pieces_that_a_rerun_reads_whole(trained, tmp_path, monkeypatch):
    from beholder.predict import shards

    monkeypatch.setattr(shards, "COMPACT_ROWS", 16)
    ckpt, gallery = trained
    args = [f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]
    predict(compose_predict(args))
    first = read_parquet((tmp_path / "out" / "embeddings.parquet").read_bytes())
    kept = sorted(path.name.split("-")[0] for path in (tmp_path / "out" / ".beholder-partial").glob("*.csv"))
    assert kept == ["scores"] * 4 + ["skipped"]  # 60 rows in pieces of 16
    assert predict(compose_predict(args))["newly_scored"] == 0
    again = read_parquet((tmp_path / "out" / "embeddings.parquet").read_bytes())
    assert again[0] == first[0] and np.array_equal(again[1], first[1])
