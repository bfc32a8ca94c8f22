"""Reliability: S3 faults, crashes (kill -9), bad files, bad options, full disks, unsafe checkpoints."""

import functools
import io
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from beholder.core.errors import UserError
from beholder.data.ingest import main as ingest
from beholder.models.checkpoint import IncompatibleCheckpoint
from beholder.models.load import load_checkpoint
from beholder.predict.run import predict
from beholder.train.run import train

from conftest import CAPTURES, PYTHON, ROOT, TINY, compose_predict, compose_train, encode, free_port, make_gallery, png_declaring, read_scores, upload_folder
from fault_proxy import FaultProxy


@pytest.fixture
def faulty_s3(s3_endpoint):
    proxy = FaultProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


@pytest.mark.slow
def test_training_survives_throttling_dropped_downloads_and_an_outage(s3_bucket, faulty_s3, tmp_path):
    client, bucket = s3_bucket
    upload_folder(client, bucket, make_gallery(tmp_path / "g", count=40), "panocam")
    faulty_s3.throttle_every, faulty_s3.drop_every = 7, 11
    faulty_s3.outage_after = (60, 3.0)  # mid-way through the first epoch, S3 is gone for 3 s
    cfg = compose_train(TINY + [
        f"gallery=s3://{bucket}/panocam", f"labels=s3://{bucket}/panocam/labels.csv",
        f"data.endpoint_url={faulty_s3.url}", f"output_dir={tmp_path}/run", "data.num_workers=2", "probe_init=false",
    ])
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 0  # every fault was retried away
    assert faulty_s3.counts["throttled"] > 3 and faulty_s3.counts["dropped"] > 3 and faulty_s3.counts["refused"] > 0


@pytest.mark.slow
def test_predict_survives_s3_faults(trained, s3_bucket, faulty_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ckpt, gallery = trained
    client, bucket = s3_bucket
    upload_folder(client, bucket, gallery, "photos")
    faulty_s3.throttle_every, faulty_s3.drop_every, faulty_s3.outage_after = 5, 9, (30, 2.0)
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery=s3://{bucket}/photos", f"output=s3://{bucket}/out",
                                       f"endpoint_url={faulty_s3.url}"]))
    assert summary["scored"] == 60 and summary["skipped"] == 0
    assert faulty_s3.counts["throttled"] and faulty_s3.counts["dropped"] and faulty_s3.counts["refused"]


@contextmanager
def serve_folder(folder):
    """A plain autoindex web server for ``folder`` on 127.0.0.1; yields its URL."""
    handler = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


@pytest.mark.slow
def test_ingest_into_faulty_s3(s3_bucket, faulty_s3, tmp_path, capsys):
    site = tmp_path / "site"
    for capture in CAPTURES:
        (site / capture).mkdir(parents=True)
        (site / capture / "thumbnail.jpg").write_bytes(os.urandom(5000))
    client, bucket = s3_bucket
    faulty_s3.throttle_every, faulty_s3.outage_after = 3, (4, 2.0)
    with serve_folder(site) as url:
        code = ingest([url, f"s3://{bucket}/mirror", "--quiet", "--endpoint-url", faulty_s3.url, "--rate", "0"])
    assert code == 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert len(keys) == len(CAPTURES) + 1 and faulty_s3.counts["throttled"] and faulty_s3.counts["refused"]


# --- crashes ------------------------------------------------------------------------------------

def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.1)


@pytest.mark.slow
def test_kill_9_during_training_then_resume_from_last(tmp_path):
    gallery = make_gallery(tmp_path / "g", count=60)
    args = [*TINY, f"gallery={gallery}", f"labels={gallery}/labels.csv", "trainer.max_epochs=30", f"runs_root={tmp_path}/runs"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([PYTHON, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/runs/first"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "runs" / "first" / "checkpoints" / "last.ckpt"
    wait_for(lambda: last.exists() and torch.load(last, weights_only=True)["epoch"] >= 1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(last, weights_only=True)
    resumed = subprocess.run([PYTHON, str(ROOT / "train.py"), *args[:-2], "trainer.max_epochs=%d" % (saved["epoch"] + 3),
                              f"runs_root={tmp_path}/runs", "resume=last", f"hydra.run.dir={tmp_path}/runs/second"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stdout + resumed.stderr
    final = torch.load(tmp_path / "runs" / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    steps_per_epoch = saved["global_step"] // (saved["epoch"] + 1)
    assert final["epoch"] == saved["epoch"] + 2
    assert final["global_step"] == saved["global_step"] + 2 * steps_per_epoch


@pytest.mark.slow
def test_kill_9_during_predict_then_rerun_gives_each_image_once(trained, tmp_path):
    ckpt, gallery = trained
    big = tmp_path / "big"
    for i in range(600):  # enough work to be caught mid-way
        (big / f"{i % 7}").mkdir(parents=True, exist_ok=True)
        os.link(gallery / f"sub{i % 3}" / f"img_{i % 60:03d}.jpg", big / f"{i % 7}" / f"copy_{i:04d}.jpg")
    args = [PYTHON, str(ROOT / "predict.py"), f"ckpt={ckpt}", f"gallery={big}", f"output={tmp_path}/out",
            "batch_size=4", "num_workers=0", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}/h"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = tmp_path / "out" / ".beholder-partial" / "scores-rank0.csv"
    wait_for(lambda: shard.exists() and shard.read_text().count("\n") > 40)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = shard.read_text().count("\n") - 1
    assert done_before < 600 and not (tmp_path / "out" / "scores.csv").exists()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    images = [row["image"] for row in read_scores(tmp_path / "out" / "scores.csv")]
    assert len(images) == len(set(images)) == 600
    assert f"({600 - done_before} in this run" in rerun.stdout or f"({600 - done_before + 1} in this run" in rerun.stdout


@pytest.mark.slow
def test_kill_9_of_the_labeller_keeps_every_submission(tmp_path):
    gallery = make_gallery(tmp_path / "g", count=24)
    port, db = free_port(), tmp_path / "labels.sqlite"
    process = subprocess.Popen([PYTHON, "-m", "beholder.label", "--gallery", str(gallery), "--db", str(db), "--port", str(port)],
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(method, path, body=None):
        request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def up():
        try:
            return call("GET", "/api/state")
        except OSError:
            return None

    wait_for(up, timeout=60)
    state = call("POST", "/api/next", {})
    submitted = []
    for _ in range(3):
        chosen = [state["set"]["images"][0]["id"]]
        submitted.append((state["set"]["id"], chosen))
        state = call("POST", "/api/submit", {"set_id": state["set"]["id"], "advanced": chosen})
    process.send_signal(signal.SIGKILL)
    process.wait()
    rows = sqlite3.connect(db).execute("SELECT set_id, image_id, advanced FROM decisions").fetchall()
    assert len(rows) == 12
    assert {(s, i) for s, i, a in rows if a} == {(s, ids[0]) for s, ids in submitted}


# --- bad files, options, disks, checkpoints ------------------------------------------------------

def test_bad_and_odd_files_in_a_gallery(trained, tmp_path):
    ckpt, _ = trained
    gallery = tmp_path / "odd"
    gallery.mkdir()
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    photo.save(gallery / "plain.jpg")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.rotate(90, expand=True).save(rotated, "JPEG", exif=exif)  # stored sideways, upright on display
    (gallery / "exif_rotated.jpg").write_bytes(rotated.getvalue())
    (gallery / "cmyk.jpg").write_bytes(encode(photo.convert("CMYK"), "JPEG"))
    (gallery / "gray.png").write_bytes(encode(photo.convert("L")))
    (gallery / "palette.png").write_bytes(encode(photo.convert("P")))
    (gallery / "sixteen.tif").write_bytes(encode(Image.fromarray((rng.random((40, 80)) * 65535).astype(np.uint16)), "TIFF"))
    (gallery / "truncated.jpg").write_bytes(encode(photo, "JPEG")[:400])
    (gallery / "empty.jpg").write_bytes(b"")
    (gallery / "text.jpg").write_text("this is not a picture")
    (gallery / "bomb.png").write_bytes(png_declaring(30000, 30000))
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]))
    skipped = {row["image"] for row in read_scores(tmp_path / "out" / "skipped.csv")}
    scores = {row["image"]: float(row["score"]) for row in read_scores(tmp_path / "out" / "scores.csv")}
    assert skipped == {"truncated.jpg", "empty.jpg", "text.jpg", "bomb.png"}
    assert set(scores) == {"plain.jpg", "exif_rotated.jpg", "cmyk.jpg", "gray.png", "palette.png", "sixteen.tif"}
    assert summary["found"] == 10
    # the rotation is applied: the sideways-stored copy scores like the upright original (JPEG noise aside)
    assert abs(scores["exif_rotated.jpg"] - scores["plain.jpg"]) < 0.02


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=abc", "optimizer.lr='abc': expected float"),
    ("+optimizer.weight_dcay=0.1", "optimizer.weight_dcay: unknown option"),
    ("optimizer._target_=shutil.rmtree", "optimizer._target_='shutil.rmtree' is not one of beholder's optimizers"),
    ("backbone.name=no_such_net", "backbone.name='no_such_net' is not a timm model"),
    ("head.num_classes=3", "head.num_classes=3"),
    ("resume=last", "resume=last: no checkpoints/last.ckpt under"),
])
def test_bad_options_fail_before_any_work(tiny_cfg, override, message, tmp_path, monkeypatch):
    import beholder.train.run as training

    monkeypatch.setattr(training, "instantiate", _refuse_datamodule(training.instantiate))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        train(tiny_cfg(override, f"runs_root={tmp_path}/none"))


def _refuse_datamodule(instantiate):
    def guarded(config, *args, **kwargs):
        assert "GalleryDataModule" not in str(config.get("_target_", "")), "work started before the options were checked"
        return instantiate(config, *args, **kwargs)

    return guarded


@pytest.mark.slow
def test_unknown_head_is_refused_by_the_command_line(tmp_path):
    result = subprocess.run([PYTHON, str(ROOT / "train.py"), "head=nope", "gallery=x", "labels=y"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == "beholder: error: head=nope: not one of the choices (ordinal, regression, softmax)"


def test_full_disk_while_writing_results_fails_cleanly(trained, tmp_path, monkeypatch):
    ckpt, gallery = trained
    import beholder.core.storage as storage

    real = storage.write_local_atomically

    def disk_full(path, data, *expect):
        if path.endswith("highlights.html"):
            raise OSError(28, "No space left on device", path)
        return real(path, data, *expect)

    monkeypatch.setattr(storage, "write_local_atomically", disk_full)
    with pytest.raises(UserError, match=r"output=.*/out: writing the results failed .*No space left on device.*rerun to finish"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]))
    assert not (tmp_path / "out" / "scores.csv").exists()  # nothing poses as complete
    assert not list((tmp_path / "out").glob(".beholder-tmp-*"))
    monkeypatch.setattr(storage, "write_local_atomically", real)
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out"]))
    assert summary["newly_scored"] == 0 and summary["scored"] == 60  # the rerun only writes


def test_read_only_output_is_refused_up_front(trained, tmp_path):
    ckpt, gallery = trained
    with pytest.raises(UserError, match="output=/proc/beholder-out: cannot write there"):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", "output=/proc/beholder-out"]))


def test_ingest_full_disk_is_reported(tmp_path, capsys, monkeypatch):
    import beholder.core.storage as storage

    site = tmp_path / "site" / "2016" / "01" / "01" / "2016_0101_090000"
    site.mkdir(parents=True)
    (site / "thumbnail.jpg").write_bytes(b"x" * 100)

    def disk_full(path, fill):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(storage, "write_local_with", disk_full)
    with serve_folder(tmp_path / "site") as url, pytest.raises(SystemExit) as exit_info:
        ingest([url, str(tmp_path / "mirror"), "--quiet", "--rate", "0"])
    out = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "No space left on device" in out.out and "beholder-manifest.csv failed" in out.err
    assert not list((tmp_path / "mirror").rglob("thumbnail.jpg"))


def test_checkpoints_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"beholder_format": 1, "state_dict": {}, "hyper_parameters": Exploit()}, tmp_path / "evil.ckpt")
    with pytest.raises(IncompatibleCheckpoint, match="not a readable checkpoint"):
        load_checkpoint(str(tmp_path / "evil.ckpt"))
    assert not marker.exists()


@pytest.mark.parametrize("part, payload", [
    ("head", {"dropout": {"_target_": "shutil.copyfile", "_args_": ["/dev/null", "VICTIM"]}}),
    ("head", {"_target_": "shutil.copyfile", "src": "/dev/null", "dst": "VICTIM"}),
    ("optimizer", {"_target_": "shutil.copyfile", "_partial_": False, "src": "/dev/null", "dst": "VICTIM"}),
    ("backbone", {"mean": {"_target_": "shutil.copyfile", "_args_": ["/dev/null", "VICTIM"]}}),
])
@pytest.mark.slow
def test_checkpoint_hyperparameters_naming_code_are_refused(trained, tmp_path, part, payload):
    """Plain dicts pass weights_only=True; a nested ``_target_`` must still never be called."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the photographer's notes")
    checkpoint = torch.load(trained[0], map_location="cpu", weights_only=True)
    payload = json.loads(json.dumps(payload).replace("VICTIM", str(victim)))
    checkpoint["hyper_parameters"][part] = {**checkpoint["hyper_parameters"][part], **payload}
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(IncompatibleCheckpoint, match=f"ckpt={tmp_path}/evil.ckpt: refused: {part}"):
        predict(compose_predict([f"ckpt={tmp_path}/evil.ckpt", f"gallery={trained[1]}", f"output={tmp_path}/out"]))
    assert victim.read_text() == "the photographer's notes"


@pytest.mark.slow
def test_no_secrets_in_logs_configs_or_errors(gallery, tmp_path):
    secret, key_id = "FAKEsecretKEY1234567890abcdef", "AKIAFAKEKEYID0000000"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_SECRET_ACCESS_KEY": secret, "AWS_ACCESS_KEY_ID": key_id}
    run = tmp_path / "run"
    result = subprocess.run([PYTHON, str(ROOT / "train.py"), *TINY, f"gallery={gallery}", f"labels={gallery}/labels.csv",
                             f"hydra.run.dir={run}", f"+data.aws_secret_access_key={secret}"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2  # an unknown key is refused: credentials belong to boto3's chain
    assert "data.aws_secret_access_key" in result.stderr and secret not in result.stdout + result.stderr
    result = subprocess.run([PYTHON, str(ROOT / "train.py"), *TINY, f"gallery={gallery}", f"labels={gallery}/labels.csv",
                             f"hydra.run.dir={run}", f"data.endpoint_url=http://{key_id}:{secret}@127.0.0.1:9"],
                            env=env, capture_output=True, text=True, timeout=600)
    found = [str(p) for p in run.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert found == [] and secret not in result.stdout + result.stderr and key_id not in result.stdout + result.stderr


def test_redact_hides_credentials(monkeypatch):
    from beholder.core.redact import redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envSECRETvalue123")
    text = "endpoint_url: http://AKIA123:topsecret@minio:9000\naws_secret_access_key: abc123\nlr: 0.001\nnote: envSECRETvalue123"
    clean = redact(text)
    assert "topsecret" not in clean and "AKIA123" not in clean and "abc123" not in clean and "envSECRETvalue123" not in clean
    assert "http://***@minio:9000" in clean and "lr: 0.001" in clean
