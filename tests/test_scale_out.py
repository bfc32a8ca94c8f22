"""Two machines simulated on this one: two ``torchrun --nnodes=2`` launches on 127.0.0.1 (gloo), each
with its own HOME and its own copy of the code, sharing only the S3 store (moto) and, for training,
the run folder a cluster would put on a shared filesystem."""

import csv
import io
import os
import shutil
import socket
import subprocess

import lightning_fabric
import pytest
import pytorch_lightning

from conftest import PYTHON, ROOT, TINY, make_gallery, upload_folder

LAUNCH_TIMEOUT = 240
pytestmark = pytest.mark.slow  # every test here launches two torchrun nodes


@pytest.fixture
def nodes(tmp_path, s3_endpoint):
    """``run(script, args)`` launches ``script`` on two simulated nodes; returns both results."""
    for node in range(2):
        work = tmp_path / f"node{node}"
        for name in ("beholder", "conf"):
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("train.py", "predict.py"):
            shutil.copy(ROOT / name, work / name)
        (tmp_path / f"home{node}").mkdir()

    def run(script, args, per_node_args=([], [])):
        # torchrun's agents wait for each other at exit; once in about eight full runs here one
        # agent hung there after its worker had finished. A launch that hangs is tried once more,
        # so a real hang still fails, with both nodes' output.
        for _ in range(2):
            results = launch(script, args, per_node_args)
            if results is not None:
                return results
        tails = "\n".join(f"node {n}: exit {code}\n{err[-2000:]}" for n, (code, err) in enumerate(hung))
        pytest.fail(f"{script} on two nodes did not end within {LAUNCH_TIMEOUT} s, twice\n{tails}")

    hung = []

    def launch(script, args, per_node_args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launches = []
        for node in range(2):
            work = tmp_path / f"node{node}"
            env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / f"home{node}"), "PYTHONPATH": str(work),
                   "GLOO_SOCKET_IFNAME": "lo", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}
            command = [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
                       "--master_addr=127.0.0.1", f"--master_port={port}", script, *args, *per_node_args[node]]
            launches.append(subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for process in launches:
            try:
                out, err = process.communicate(timeout=LAUNCH_TIMEOUT)
            except subprocess.TimeoutExpired:
                for other in launches:
                    other.kill()
                hung[:] = [(other.wait(), other.communicate()[1] or "") for other in launches]
                return None
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
        return results

    return run


def objects(client, bucket, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def rows_of(client, bucket, key):
    return list(csv.DictReader(io.StringIO(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode())))


def test_predict_on_two_nodes_from_and_to_s3_and_resume(nodes, trained, tmp_path, s3_bucket, s3_endpoint):
    ckpt, gallery = trained
    client, bucket = s3_bucket
    photos = make_gallery(tmp_path / "photos", count=120, seed=3)
    (photos / "labels.csv").unlink()
    upload_folder(client, bucket, photos, "archive")
    for node in range(2):
        shutil.copy(ckpt, tmp_path / f"node{node}" / "model.ckpt")
    args = ["ckpt=model.ckpt", f"gallery=s3://{bucket}/archive", f"output=s3://{bucket}/scored", "trainer.num_nodes=2",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "num_workers=0", "batch_size=8"]

    # Cut short (two batches a node): the first node sees both nodes' results under the output.
    first = nodes("predict.py", args + ["+trainer.limit_predict_batches=2"])
    assert first[1].returncode == 0, first[1].stderr[-3000:]
    assert first[0].returncode != 0 and "88 of 120 images are not processed yet; rerun the same command" in first[0].stderr, first[0].stderr[-3000:]
    shards = [key for key in objects(client, bucket, "scored/.beholder-partial/") if "/scores-" in key]
    by_rank = {rank: [row["image"] for key in shards if f"-rank{rank}-" in key for row in rows_of(client, bucket, key)] for rank in (0, 1)}
    assert len(by_rank[0]) == len(by_rank[1]) == 16 and not set(by_rank[0]) & set(by_rank[1])
    assert not list((tmp_path / "home0").rglob("*.csv")) and not list((tmp_path / "home1").rglob("*.csv"))

    second = nodes("predict.py", args)
    assert [r.returncode for r in second] == [0, 0], second[0].stderr[-3000:] + second[1].stderr[-3000:]
    assert "scored          120  (88 in this run" in second[0].stdout and "2 processes)" in second[0].stdout
    assert second[1].stdout.strip() == ""  # the summary is the first node's to print
    scores = rows_of(client, bucket, "scored/scores.csv")
    assert len(scores) == 120 == len({row["image"] for row in scores})
    kept = objects(client, bucket, "scored/.beholder-partial/")  # compacted: one of each kind, for the next run
    assert sorted(key.rsplit("/", 1)[1].split("-")[0] for key in kept) == ["run.json", "scores", "skipped"]

    # Two nodes cut short, then one plain process finishes what they left.
    other = [a.replace("/scored", "/other") for a in args]
    nodes("predict.py", other + ["+trainer.limit_predict_batches=1"])
    alone = subprocess.run([PYTHON, "predict.py", *other, "trainer.num_nodes=1"], cwd=tmp_path / "node1", capture_output=True,
                           text=True, timeout=LAUNCH_TIMEOUT,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "node1"), "HOME": str(tmp_path / "home1"), "AWS_ENDPOINT_URL": s3_endpoint})
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "scored          120  (104 in this run" in alone.stdout and "1 process)" in alone.stdout
    assert len({row["image"] for row in rows_of(client, bucket, "other/scores.csv")}) == 120


def test_train_on_two_nodes_from_s3(nodes, tmp_path, s3_bucket):
    client, bucket = s3_bucket
    upload_folder(client, bucket, make_gallery(tmp_path / "g", count=80, split_column=True), "labelled")
    run = tmp_path / "shared" / "run"
    results = nodes("train.py", TINY + [f"gallery=s3://{bucket}/labelled", f"labels=s3://{bucket}/labelled/labels.csv",
                                        "trainer.num_nodes=2", "trainer.max_epochs=1", f"hydra.run.dir={run}"])
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    assert "processes       2" in results[0].stdout
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "metrics.json").exists()


def test_a_launch_that_disagrees_with_the_options_stops_every_node_in_one_line(nodes, trained, tmp_path):
    ckpt, gallery = trained
    for node in range(2):
        shutil.copy(ckpt, tmp_path / f"node{node}" / "model.ckpt")
    # Where a traceback through beholder or Lightning would point: the nodes' copies of beholder and
    # Lightning's package folders, wherever the clone lives (one named beholder holds torchrun's own
    # files under beholder/.venv/).
    code = [f"{tmp_path}/node{node}/beholder/" for node in range(2)]
    code += [os.path.dirname(module.__file__) + os.sep for module in (pytorch_lightning, lightning_fabric)]
    base = ["ckpt=model.ckpt", f"gallery={gallery}", "trainer.accelerator=cpu", "num_workers=0"]
    cases = {
        "trainer.num_nodes=1, but torchrun started 2 nodes (1 process each): give trainer.num_nodes=2 on every node": [f"output={tmp_path}/o1"],
        "output=scored: not every process sees what the first one writes there": ["output=scored", "trainer.num_nodes=2"],
    }
    for message, args in cases.items():
        results = nodes("predict.py", base + args)
        for result in results:  # torchrun adds its own report of the failed worker; beholder's part is one line
            assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]
            assert not any(f'File "{folder}' in result.stderr for folder in code), result.stderr[-3000:]
    # One node started with other options than the other: both stop, neither waits for the other.
    results = nodes("predict.py", base + [f"output={tmp_path}/o2"], per_node_args=[["trainer.num_nodes=2"], []])
    assert "process 1 stopped: trainer.num_nodes=1, but torchrun started 2 nodes" in results[0].stderr, results[0].stderr[-3000:]
    assert "beholder: error: trainer.num_nodes=1, but torchrun" in results[1].stderr


def test_a_slurm_launch_is_checked_against_the_options(monkeypatch):
    """srun's environment for 2 nodes of 4 tasks (no SLURM here: the variables srun sets)."""
    from omegaconf import OmegaConf

    from beholder.core.errors import UserError
    from beholder.core.launch import check_launch

    monkeypatch.setenv("PATH", "/nonexistent")  # Lightning looks for srun only to warn
    for name, value in {"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_JOB_NAME": "score",
                        "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}.items():
        monkeypatch.setenv(name, value)
    check_launch(OmegaConf.create({"num_nodes": 2, "devices": 4, "accelerator": "cpu", "precision": "bf16-mixed"}))
    with pytest.raises(UserError, match=r"trainer.num_nodes=1, but SLURM started 2 nodes \(4 processes each\): give trainer.num_nodes=2"):
        check_launch(OmegaConf.create({"num_nodes": 1, "devices": 4, "accelerator": "cpu"}))
    with pytest.raises(UserError, match=r"trainer.devices=1 makes 1 process a node, but SLURM started 4: give trainer.devices=4"):
        check_launch(OmegaConf.create({"num_nodes": 2, "devices": 1, "accelerator": "cpu"}))
