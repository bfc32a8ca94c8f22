"""Hostile and careless input on ratings, sidecars, review, search, caches and checkpoints: nothing is
written or served outside the folder named, one bad file is named and skipped while the rest goes on,
and no result is silently wrong."""

import csv
import http.client
import os
import signal
import sqlite3
import stat
import subprocess

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from beholder.core.errors import UserError, exit_on_user_error
from beholder.core.storage import Store
from beholder.data.scores import read_scored
from beholder.label import cli as label_cli
from beholder.models.checkpoint import IncompatibleCheckpoint
from beholder.models.features import cached_features
from beholder.models.load import load_checkpoint
from beholder.predict.run import predict
from beholder.ratings.cli import main as ratings
from beholder.search.cli import main as similar
from beholder.search.embeddings import FILE as EMBEDDINGS
from beholder.search.embeddings import read_parquet, write_parquet
from beholder.search.vector_index import FAISS_FILE
from beholder.train.run import train

from conftest import PYTHON, ROOT, TINY, compose_predict, compose_train, labels, photo, rated_photos, read_scores, running, sidecar, tiny_net


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def scores_file(path, images, band="keep"):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "score", "band", "rank"])
        writer.writerows([image, f"{0.9 - i / 100:.3f}", band, i + 1] for i, image in enumerate(images))
    return path


# --- 1-3: nothing written or served outside what the user named -----------------------------------------

def test_ratings_write_creates_and_merges_nothing_outside_root(tmp_path, capsys):
    root, elsewhere = tmp_path / "Pictures", tmp_path / "out"
    photo(root / "a.jpg")
    photo(elsewhere / "v.jpg", 1)
    (elsewhere / "w.xmp").write_bytes(sidecar('xmp:Rating="2"'))
    before = {p: p.read_bytes() for p in elsewhere.iterdir()}
    scores = scores_file(tmp_path / "scores.csv", ["a.jpg", "../out/v.jpg", str(elsewhere / "w.jpg"), "sub/../../out/v.jpg"])
    ratings(["write", "--scored", str(scores), "--gallery", str(root)])
    assert {p: p.read_bytes() for p in elsewhere.iterdir()} == before  # nothing created, nothing merged
    assert files_under(root) == ["a.jpg", "a.xmp"]
    assert "outside --gallery 3" in capsys.readouterr().out


def test_review_serves_only_gallery_images(photos, tmp_path, served, capsys):
    private = tmp_path / "private"
    photo(private / "secret.jpg", 7)
    gallery_images = [p.relative_to(photos).as_posix() for p in sorted(photos.rglob("*.jpg"))][:5]
    scores = scores_file(tmp_path / "scores.csv", gallery_images + ["../private/secret.jpg", str(private / "secret.jpg")])
    label_cli.review(["--scored", str(scores), "--gallery", str(photos), "--db", str(tmp_path / "review.sqlite")])
    assert "2 rows of" in capsys.readouterr().out
    keys = served["review"].keys()
    assert sorted(keys.values()) == sorted(gallery_images)
    client = TestClient(served["app"], base_url="http://127.0.0.1:8000")
    answered = [i for i in range(1, len(keys) + 10) if client.get(f"/image/{i}").status_code == 200]
    assert sorted(answered) == sorted(keys)


def rewrite_embeddings(output, rename=None, vector=None):
    """embeddings.parquet rewritten as a hostile or damaged file would be: images renamed, one vector replaced."""
    images, vectors, metadata = read_parquet(str(output / EMBEDDINGS))
    images, vectors = [(rename or {}).get(image, image) for image in images], vectors.copy()
    if vector is not None:
        vectors[vector[0]] = vector[1]
    with open(output / EMBEDDINGS, "wb") as f:
        write_parquet(f, images, vectors, metadata["beholder.checkpoint_sha256"], metadata["beholder.gallery"])
    return images


@pytest.fixture
def scored(trained, photos, tmp_path):
    ckpt, _ = trained
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/scored"]))
    return tmp_path / "scored"


def test_similar_shows_no_image_outside_the_gallery_and_survives_a_deleted_one(scored, photos, tmp_path, capsys):
    secret = tmp_path / "private" / "secret.jpg"
    photo(secret, 7)
    images = read_scores(scored / "scores.csv")
    query, gone = images[0]["image"], images[1]["image"]
    (scored / "scores.csv").unlink()  # a parquet alone, naming files outside the gallery
    rewrite_embeddings(scored, {images[2]["image"]: "../private/secret.jpg", images[3]["image"]: str(secret)})
    (photos / gone).unlink()
    similar(["--scored", str(scored), "--query", query, "--count", "59", "--out", str(tmp_path / "like")])
    printed = capsys.readouterr().out
    page = (tmp_path / "like" / "similar.html").read_text()
    assert "secret.jpg" in (tmp_path / "like" / "similar.csv").read_text()  # listed by name ...
    assert "secret.jpg" not in page and gone not in page  # ... but never read into the page
    assert page.count("<figure") == 1 + 59 - 3 and "not shown       3" in printed  # the query, and its neighbours but 3


# --- 4-10: one bad file is named and skipped; the rest goes on ----------------------------------------------

DEEP = (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
        + b"<a>" * 5000 + b"</a>" * 5000 + b"</rdf:RDF></x:xmpmeta>")


def test_a_sidecar_nested_5000_deep_is_named_and_everything_else_is_written(trained, photos, tmp_path, capsys):
    ckpt, _ = trained
    deep = photos / "sub0" / "img_000.xmp"
    deep.write_bytes(DEEP)
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "xmp=true",
                                       "xmp_beside_images=true"]))
    assert len(read_scores(tmp_path / "out" / "scores.csv")) == 60 and (tmp_path / "out" / EMBEDDINGS).exists()
    assert [str(deep) in p and "nested" in p for p in summary["sidecars"]["left_alone"]] == [True]
    assert deep.read_bytes() == DEEP and len(list(photos.rglob("*.xmp"))) == 60
    ratings(["write", "--scored", str(tmp_path / "out"), "--gallery", str(photos)])
    assert "59 unchanged (already held this decision), 1 left alone" in capsys.readouterr().out and deep.read_bytes() == DEEP


def test_odd_values_in_sidecars_and_catalogues_are_named_and_skipped(tmp_path, capsys):
    root = rated_photos(tmp_path / "Pictures", {"good": sidecar('xmp:Rating="4"'), "huge": sidecar('xmp:Rating="1e400"'),
                                                "pick": sidecar('xmp:Rating="3" digiKam:PickLabel="²"'), "deep": DEEP})
    ratings(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])
    assert list(labels(tmp_path / "labels.csv")) == ["good.jpg"]
    printed = capsys.readouterr().out
    assert all(f"{name}.xmp" in printed for name in ("huge", "pick", "deep")) and "'1e400'" in printed and "'²'" in printed

    catalogue = sqlite_file(tmp_path / "Catalog.lrcat", f"""
        CREATE TABLE AgLibraryRootFolder (id_local INTEGER PRIMARY KEY, absolutePath TEXT);
        CREATE TABLE AgLibraryFolder (id_local INTEGER PRIMARY KEY, pathFromRoot TEXT, rootFolder INTEGER);
        CREATE TABLE AgLibraryFile (id_local INTEGER PRIMARY KEY, folder INTEGER, idx_filename TEXT);
        CREATE TABLE Adobe_images (id_local INTEGER PRIMARY KEY, rootFile INTEGER, rating REAL, pick REAL, colorLabels TEXT);
        INSERT INTO AgLibraryRootFolder VALUES (1, '{root}/');
        INSERT INTO AgLibraryFolder VALUES (1, '', 1), (2, NULL, 1);
        INSERT INTO AgLibraryFile VALUES (1, 1, 'good.jpg'), (2, 1, NULL), (3, 2, 'huge.jpg'), (4, 1, 'pick.jpg');
        INSERT INTO Adobe_images VALUES (10, 1, 5, 0, NULL), (11, 2, 3, 0, ''), (12, 3, 3, 0, ''), (13, 4, 'lots', 0, '');
    """)
    ratings(["import", str(catalogue), "--gallery", str(root), "--out", str(tmp_path / "lr.csv")])
    assert {image: row["rating"] for image, row in labels(tmp_path / "lr.csv").items()} == {"good.jpg": "5"}
    printed = capsys.readouterr().out
    assert "row 11: no file path" in printed and "row 12: no file path" in printed and "row 13: rating 'lots'" in printed

    library = sqlite_file(tmp_path / "library.db", f"""
        CREATE TABLE film_rolls (id INTEGER PRIMARY KEY, folder TEXT);
        CREATE TABLE images (id INTEGER PRIMARY KEY, film_id INTEGER, filename TEXT, flags INTEGER);
        INSERT INTO film_rolls VALUES (1, '{root}'), (2, NULL);
        INSERT INTO images VALUES (1, 1, 'good.jpg', 3), (2, 1, 'huge.jpg', NULL), (3, 2, 'pick.jpg', 2), (4, 1, NULL, 1);
    """)
    ratings(["import", str(library), "--gallery", str(root), "--out", str(tmp_path / "dt.csv")])
    assert {image: row["rating"] for image, row in labels(tmp_path / "dt.csv").items()} == {"good.jpg": "3"}
    printed = capsys.readouterr().out
    assert "row 2: flags None" in printed and "row 3: no file path" in printed and "row 4: no file path" in printed


def sqlite_file(path, script):
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()
    return path


@pytest.mark.timeout(60)  # a hang guard: the quadratic search ran for minutes on this file, a FIFO forever
def test_the_packet_search_is_linear_and_only_regular_files_are_read(tmp_path, capsys):
    root = tmp_path / "Pictures"
    photo(root / "a.jpg")
    (root / "z.jpg").write_bytes(b"\xff\xd8" + b"<x:xmpmeta " * 100_000)  # 1 MB of openings, no packet
    os.mkfifo(root / "a.xmp")
    os.symlink("/dev/zero", root / "y.jpg")
    photo(root / "b.jpg", 1, xmp=sidecar('xmp:Rating="5"'))
    ratings(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])
    assert list(labels(tmp_path / "labels.csv")) == ["b.jpg"]
    printed = capsys.readouterr().out
    assert "a.xmp: not a regular file; skipped" in printed and "y.jpg: embedded XMP not a regular file" in printed


def test_damaged_feature_cache_entries_are_computed_again(gallery, tmp_path, capsys):
    torch.manual_seed(0)
    net = tiny_net()
    images = [p.relative_to(gallery).as_posix() for p in sorted(gallery.rglob("*.jpg"))][:6]
    first, _ = cached_features(net, str(gallery), images, Store(), {}, 1, str(tmp_path / "cache"), 10**8, num_workers=0)
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    np.save(entries[0], np.full(first[images[0]].shape[1], np.nan, dtype=np.float32))
    np.save(entries[1], np.zeros(3, dtype=np.float32))
    with open(entries[2], "wb") as f:  # a header that declares 2^40 floats
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
        f.write(b"\0" * 64)
    again, skipped = cached_features(net, str(gallery), images, Store(), {}, 1, str(tmp_path / "cache"), 10**8, num_workers=0)
    assert not skipped and all(torch.allclose(again[i], first[i]) for i in images)
    assert "3 damaged entries" in capsys.readouterr().out
    cached_features(net, str(gallery), images, Store(), {}, 1, str(tmp_path / "cache"), 10**8, num_workers=0)
    assert "damaged" not in capsys.readouterr().out  # replaced by good ones


def test_non_finite_or_empty_embeddings_and_a_damaged_faiss_index(scored, tmp_path, capsys):
    images = read_scores(scored / "scores.csv")
    query, broken = images[0]["image"], images[1]["image"]
    rewrite_embeddings(scored, vector=(1, np.nan))
    similar(["--scored", str(scored), "--query", query, "--count", "10", "--out", str(tmp_path / "like")])
    found = read_scores(tmp_path / "like" / "similar.csv")
    similarities = [float(row["similarity"]) for row in found]
    assert len(found) == 10 and all(np.isfinite(similarities)) and similarities == sorted(similarities, reverse=True)
    assert broken not in {row["image"] for row in found} and broken in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        similar(["--scored", str(scored), "--query", broken])
    assert stop.value.code == 2 and "not finite" in capsys.readouterr().err

    (scored / FAISS_FILE).write_bytes(b"PK\x03\x04 not really an index")
    similar(["--scored", str(scored), "--query", query, "--count", "10", "--method", "faiss", "--out", str(tmp_path / "faiss")])
    approximate = read_scores(tmp_path / "faiss" / "similar.csv")
    assert {row["image"] for row in approximate[:4]} == {row["image"] for row in found[:4]}  # the query's near-copies
    assert (scored / FAISS_FILE).read_bytes()[:2] == b"PK" and (scored / FAISS_FILE).stat().st_size > 1000  # rebuilt

    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = pa.table({"image": pa.array([], pa.string()), "vector": pa.FixedSizeListArray.from_arrays(pa.array([], pa.float16()), 4)})
    pq.write_table(empty.replace_schema_metadata({"beholder.dimension": "4"}), scored / EMBEDDINGS)
    (scored / "scores.csv").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        similar(["--scored", str(scored), "--query", query])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and f"{EMBEDDINGS} holds no images" in error and error.count("\n") == 1


def damaged_checkpoint(ckpt, target, change):
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


def head_weight(checkpoint):
    return next(k for k in checkpoint["state_dict"] if k.startswith("net.head") and k.endswith("weight"))


def test_a_checkpoint_with_numbers_that_are_not_finite_is_refused_wherever_it_is_loaded(trained, tmp_path, capsys):
    ckpt, gallery = trained
    name = head_weight(torch.load(ckpt, map_location="cpu", weights_only=True))
    nan = damaged_checkpoint(ckpt, tmp_path / "nan.ckpt", lambda c: c["state_dict"][name].view(-1)[0].fill_(float("nan")))
    flat = damaged_checkpoint(ckpt, tmp_path / "flat.ckpt", lambda c: c["state_dict"]["net.feature_std"].zero_())
    for path, message in ((nan, f"{name} holds numbers that are not finite (1 NaN"), (flat, "feature_std holds")):
        with pytest.raises(SystemExit) as stop, exit_on_user_error():
            load_checkpoint(str(path))
        error = capsys.readouterr().err
        assert stop.value.code == 2 and message in error and error.count("\n") == 1 and str(path) in error
    with pytest.raises(IncompatibleCheckpoint, match="not finite"):
        predict(compose_predict([f"ckpt={nan}", f"gallery={gallery}", f"output={tmp_path}/out"]))
    with pytest.raises(IncompatibleCheckpoint, match="not finite"):
        train(compose_train(TINY + ["experiment=personal", f"base_ckpt={nan}", f"gallery={gallery}", f"labels={gallery}/labels.csv",
                                    f"feature_cache={tmp_path}/cache", f"output_dir={tmp_path}/me"]))
    assert not (tmp_path / "out" / "scores.csv").exists() and not (tmp_path / "me" / "checkpoints").exists()


def test_review_refuses_duplicates_huge_ids_and_huge_bodies(photos, tmp_path, served, capsys):
    images = [p.relative_to(photos).as_posix() for p in sorted(photos.rglob("*.jpg"))][:4]
    twice = scores_file(tmp_path / "twice.csv", images + images[1:2])
    with pytest.raises(SystemExit) as stop:
        label_cli.review(["--scored", str(twice), "--gallery", str(photos), "--db", str(tmp_path / "r.sqlite")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "line 6" in error and images[1] in error and error.count("\n") == 1

    label_cli.review(["--scored", str(scores_file(tmp_path / "s.csv", images)), "--gallery", str(photos),
                    "--db", str(tmp_path / "r.sqlite")])
    client = TestClient(served["app"], base_url="http://127.0.0.1:8000")
    for image_id in (2**70, -1):
        answer = client.post("/api/review/decide", json={"image_id": image_id, "keep": True})
        assert answer.status_code == 422
    assert client.post("/api/review/decide", json={"image_id": 1, "keep": True}).status_code == 200

    with running(served["app"]) as base:  # 200 MB announced: refused before a byte of it is read
        port = int(base.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/api/review/decide")
        for header, value in (("Content-Type", "application/json"), ("Content-Length", str(200 << 20))):
            connection.putheader(header, value)
        connection.endheaders()
        try:
            connection.send(b"{" + b" " * (1 << 20))
        except OSError:  # the server may already have answered and closed
            pass
        answer = connection.getresponse()
        assert answer.status == 413 and b"at most" in answer.read()
        connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # no length at all: chunked
        connection.request("POST", "/api/review/decide", body=iter([b'{"image_id": 2, "keep": true}']),
                           headers={"Content-Type": "application/json"}, encode_chunked=True)
        assert connection.getresponse().status == 411


# --- 11-12: no silent wrong results, no lost properties ----------------------------------------------------------

def test_a_catalogue_with_changes_in_its_write_ahead_log_is_read_as_the_application_sees_it(tmp_path, capsys):
    root = tmp_path / "Pictures"
    photo(root / "a.jpg")
    library = tmp_path / "library.db"
    darktable = sqlite3.connect(library, isolation_level=None)  # darktable has it open, in WAL mode
    darktable.execute("PRAGMA journal_mode=WAL")
    darktable.execute("PRAGMA wal_autocheckpoint=0")
    darktable.executescript("""
        CREATE TABLE film_rolls (id INTEGER PRIMARY KEY, folder TEXT);
        CREATE TABLE images (id INTEGER PRIMARY KEY, film_id INTEGER, filename TEXT, flags INTEGER);
    """)
    darktable.execute("INSERT INTO film_rolls VALUES (1, ?)", (str(root),))
    darktable.execute("INSERT INTO images VALUES (1, 1, 'a.jpg', 1)")
    darktable.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # 1 star is in the file ...
    darktable.execute("UPDATE images SET flags = 5 WHERE id = 1")  # ... 5 stars committed, only in the log
    originals = {p.name: p.read_bytes() for p in tmp_path.glob("library.db*")}
    assert (tmp_path / "library.db-wal").stat().st_size > 0
    ratings(["import", str(library), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])
    assert labels(tmp_path / "labels.csv")["a.jpg"]["rating"] == "5"
    assert "with its write-ahead log" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.glob("library.db*")} == originals
    darktable.close()
    ratings(["import", str(library), "--gallery", str(root), "--out", str(tmp_path / "again.csv")])
    assert labels(tmp_path / "again.csv")["a.jpg"]["rating"] == "5" and "no write-ahead log" in capsys.readouterr().out


def test_sidecars_keep_their_mode_and_comments_and_killed_writes_leave_nothing(tmp_path, capsys):
    root = tmp_path / "Pictures"
    for i, name in enumerate(["private.jpg", "locked.jpg", "noted.jpg", "killed.jpg"]):
        photo(root / name, i)
    private, locked, noted = root / "private.xmp", root / "locked.xmp", root / "noted.xmp"
    private.write_bytes(sidecar('xmp:Rating="2"'))
    private.chmod(0o600)
    locked.write_bytes(sidecar('xmp:Rating="3"'))
    locked.chmod(0o444)
    commented = sidecar('xmp:Rating="4"', "<!-- shot for the Hendersons --><xmp:Label>Blue</xmp:Label>")
    noted.write_bytes(b"<!-- my catalogue, my rules -->\n" + commented)
    killed = subprocess.run([PYTHON, "-c", (
        "import os, signal\nfrom beholder.core.storage import write_local_with\n"
        "def fill(f):\n    f.write(b'half a sidecar')\n    f.flush()\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"write_local_with({str(root / 'killed.xmp')!r}, fill)\n")], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL and [p for p in root.iterdir() if p.name.startswith(".")]

    scores = scores_file(tmp_path / "scores.csv", ["private.jpg", "locked.jpg", "noted.jpg", "killed.jpg"])
    ratings(["write", "--scored", str(scores), "--gallery", str(root)])
    printed = capsys.readouterr().out
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and b"beholder:Band" in private.read_bytes()
    assert locked.read_bytes() == sidecar('xmp:Rating="3"') and "locked.xmp: read-only" in printed
    text = noted.read_text()
    assert "<!-- my catalogue, my rules -->" in text and "<!-- shot for the Hendersons -->" in text and "beholder:Band" in text
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # the killed write's temporary file is gone
    assert (root / "killed.xmp").exists() and "3 sidecars written" in printed


def test_bad_scores_rows_are_named_by_line(tmp_path, capsys):
    root = tmp_path / "Pictures"
    photo(root / "a.jpg")
    scores = tmp_path / "scores.csv"
    scores.write_text("image,score,band,rank\na.jpg,0.5,keep,1\nb.jpg,high,keep,2\n")
    with pytest.raises(SystemExit) as stop:
        ratings(["write", "--scored", str(scores), "--gallery", str(root)])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "line 3" in error and "'high'" in error and not (root / "a.xmp").exists()
    with pytest.raises(UserError, match="line 3"):
        read_scored(Store(), str(scores))
