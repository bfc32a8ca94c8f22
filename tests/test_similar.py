"""beholder similar (beholder/search/cli.py) on a scored gallery's embeddings.parquet."""

import csv
import shutil

import pytest

from beholder.core.errors import UserError
from beholder.predict.run import predict
from beholder.search.cli import index_key, main

from conftest import compose_predict


@pytest.fixture
def scored(trained, photos, tmp_path):
    ckpt, _ = trained
    shutil.copy(photos / "sub0" / "img_000.jpg", photos / "twin.jpg")  # the same picture twice
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out"]))
    return ckpt, photos, tmp_path / "out"


def test_more_like_this_finds_the_twin_first_and_writes_a_contact_sheet(scored, tmp_path, capsys):
    ckpt, photos, out = scored
    main(["--scored", str(out), "--query", "sub0/img_000.jpg", "--count", "5", "--out", str(tmp_path / "like")])
    with open(tmp_path / "like" / "similar.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"] and "sub0/img_000.jpg" not in [r["image"] for r in rows]
    assert rows[0]["image"] == "twin.jpg" and float(rows[0]["similarity"]) > 0.999
    similarities = [float(r["similarity"]) for r in rows]
    assert similarities == sorted(similarities, reverse=True) and all(r["band"] in ("keep", "review", "reject") for r in rows)
    page = (tmp_path / "like" / "similar.html").read_text()
    assert page.count("<img src='data:image/jpeg;base64,") == 6 and "more like this" in page  # the query, then its 5
    assert page.index("The query") < page.index("data-image=\"sub0/img_000.jpg\"") < page.index("Most like")

    # the README's form: a bare file name the index has, or a full path into the gallery, is that image of the index
    for query in ("twin.jpg", str(photos / "twin.jpg")):
        capsys.readouterr()
        main(["--scored", str(out), "--query", query, "--count", "24"])
        printed = capsys.readouterr().out.splitlines()
        assert printed[0].startswith("beholder: the 24 images most like twin.jpg (") and printed[0].endswith("; the first 10")
        assert printed[1].split()[2] == "sub0/img_000.jpg" and "twin.jpg" not in " ".join(printed[1:])  # not itself first
    with pytest.raises(UserError, match=r"--query a.jpg: 2 images of the index have this name \(e.g. day1/a.jpg; day2/a.jpg\)"):
        index_key("a.jpg", ["day1/a.jpg", "day2/a.jpg", "b.jpg"], str(photos))

    # a photo outside the gallery, embedded by the same checkpoint: its copy in the gallery comes first
    outside = tmp_path / "new.jpg"
    shutil.copy(photos / "sub1" / "img_001.jpg", outside)
    capsys.readouterr()
    main(["--scored", str(out), "--query", str(outside), "--count", "3"])  # by the checkpoint predict.py stored beside the index
    first = capsys.readouterr().out.splitlines()[1].split()
    assert first[2] == "sub1/img_001.jpg" and float(first[1]) > 0.99
    assert (out / "model.ckpt").read_bytes() == ckpt.read_bytes()


def test_faiss_finds_what_exact_search_finds_and_is_built_once(scored, capsys):
    ckpt, photos, out = scored
    main(["--scored", str(out), "--query", "sub0/img_000.jpg", "--count", "5", "--method", "exact"])
    exact = capsys.readouterr().out
    main(["--scored", str(out), "--query", "sub0/img_000.jpg", "--count", "5", "--method", "faiss"])
    approximate = capsys.readouterr().out
    assert "(faiss search of 61)" in approximate and "(exact search of 61)" in exact
    assert approximate.splitlines()[1].split()[2] == exact.splitlines()[1].split()[2] == "twin.jpg"
    built = (out / "embeddings.faiss.npz").stat().st_mtime_ns
    main(["--scored", str(out), "--query", "twin.jpg", "--method", "faiss"])
    assert (out / "embeddings.faiss.npz").stat().st_mtime_ns == built


@pytest.mark.parametrize("extra, message", [
    (["--query", "nowhere.jpg"], "nowhere.jpg: no such image in the index or on disk"),
    (["--query", "NOTES"], "notes.jpg: UnidentifiedImageError: not an image format Pillow reads"),
    (["--query", "nowhere.jpg", "--ckpt", "OTHER"], "not the checkpoint that made this index"),
    (["--query", "x.jpg", "--scored", "EMPTY"], "no embeddings.parquet there"),
    (["--query", "x.jpg", "CUT"], "embeddings.parquet is not readable"),
    (["--query", "x.jpg", "MORE"], "embeddings.parquet holds 61 images, scores.csv 62: not from the same run"),
    (["--query", "x.jpg", "NOCKPT"], "not in the index, and no checkpoint at"),
])
def test_bad_queries_give_one_line(scored, tmp_path, capsys, extra, message):
    ckpt, photos, out = scored
    other = tmp_path / "other.ckpt"
    other.write_bytes(ckpt.read_bytes() + b"x")
    (tmp_path / "notes.jpg").write_text("not a photo")
    if "CUT" in extra:  # a parquet file cut short
        (out / "embeddings.parquet").write_bytes((out / "embeddings.parquet").read_bytes()[:-100])
    if "MORE" in extra:  # a scores.csv of another run
        with open(out / "scores.csv", "a") as f:
            f.write("extra.jpg,0.1,0,0.9,0.1,reject,false,score,63,60,1,1\n")
    if "NOCKPT" in extra:
        (out / "model.ckpt").unlink()
    extra = [a for a in extra if a not in ("CUT", "MORE", "NOCKPT")]
    with pytest.raises(SystemExit) as stop:
        main(["--scored", str(out), *[{"OTHER": str(other), "EMPTY": str(photos), "NOTES": str(tmp_path / "notes.jpg")}.get(a, a) for a in extra]])
    assert stop.value.code == 2 and message in capsys.readouterr().err
