"""Near-copy groups (beholder/search/bursts.py), capture times, and keep_per_group in predict.py."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from beholder.data.images import capture_time
from beholder.predict.run import predict
from beholder.search import bursts
from beholder.search.embeddings import DiskRows, Rows

from conftest import compose_predict, read_scores


def burst_vectors(sources=40, copies=5, singles=200, dimension=512, noise=0.25, seed=0):
    """Unit vectors: ``sources`` bursts of ``copies`` noisy copies (cosine ~0.94 within), then
    unrelated ones, shuffled; returns (vectors, each row's true burst or -1)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((sources, dimension))
    rows = np.concatenate([np.repeat(centres, copies, axis=0) + noise * rng.standard_normal((sources * copies, dimension)),
                           rng.standard_normal((singles, dimension))])
    truth = np.concatenate([np.repeat(np.arange(sources), copies), -np.ones(singles, dtype=int)])
    order = rng.permutation(len(rows))
    rows = rows[order] / np.linalg.norm(rows[order], axis=1, keepdims=True)
    return rows.astype(np.float16), truth[order]


def same_partition(groups, truth):
    """Every true burst is one group and every unrelated row a group of its own."""
    pairs = {(int(t), int(g)) if t >= 0 else (-1 - i, int(g)) for i, (t, g) in enumerate(zip(truth, groups))}
    return len(pairs) == len(set(groups.tolist())) == len({t for t, _ in pairs})


def test_exact_groups_are_the_bursts_numbered_by_their_best_image():
    vectors, truth = burst_vectors()
    groups, ranks, sizes = bursts.burst_groups(vectors, 0.8)
    assert same_partition(groups, truth)
    assert groups[0] == 1 and sorted(set(groups.tolist())) == list(range(1, groups.max() + 1))
    first_seen = [int(g) for i, g in enumerate(groups) if g not in groups[:i]]
    assert first_seen == sorted(first_seen)  # a group's number is the order of its best image
    for group in set(groups.tolist()):
        members = np.flatnonzero(groups == group)
        assert ranks[members].tolist() == list(range(1, len(members) + 1)) and set(sizes[members]) == {len(members)}
    assert set(sizes[truth >= 0]) == {5} and set(sizes[truth < 0]) == {1}


def test_without_an_all_pairs_matrix_the_groups_are_the_same(monkeypatch):
    vectors, truth = burst_vectors(sources=300, singles=1500, noise=0.3)
    monkeypatch.setattr(bursts, "EXACT_LIMIT", 100)
    monkeypatch.setattr(bursts, "exact_pairs", lambda *a: pytest.fail("all pairs compared"))
    groups, _, _ = bursts.burst_groups(vectors, 0.8)
    assert same_partition(groups, truth)


@pytest.mark.parametrize("exact_limit", [bursts.EXACT_LIMIT, 100])
def test_embeddings_waiting_on_disk_in_another_order_group_as_a_matrix_does(tmp_path, monkeypatch, exact_limit):
    """predict groups the gallery's embeddings from a temporary file, in rank order, never loaded whole."""
    monkeypatch.setattr(bursts, "EXACT_LIMIT", exact_limit)
    vectors, truth = burst_vectors(sources=60, singles=300, noise=0.3)
    shuffle = np.random.default_rng(1).permutation(len(vectors))
    on_disk = DiskRows(vectors.shape[1], str(tmp_path))
    for row in vectors[shuffle]:
        on_disk.append(row)
    assert list(tmp_path.iterdir()) == []  # unnamed: nothing is left behind, whatever happens
    ranked = Rows(on_disk, np.argsort(shuffle))  # back in the matrix's order
    assert np.array_equal(ranked[5:9], vectors[5:9]) and np.array_equal(ranked[[7, 2]], vectors[[7, 2]])
    with pytest.raises(IndexError):
        on_disk[[len(vectors)]]
    assert all(np.array_equal(a, b) for a, b in zip(bursts.burst_groups(ranked, 0.8), bursts.burst_groups(vectors, 0.8)))
    assert same_partition(bursts.burst_groups(ranked, 0.8)[0], truth)


def test_a_time_window_splits_copies_taken_apart_and_leaves_untimed_images_alone():
    vectors, truth = burst_vectors(sources=3, copies=4, singles=5)
    times = np.full(len(vectors), np.nan)
    burst = lambda b: np.flatnonzero(truth == b)  # noqa: E731
    times[burst(0)] = [0, 60, 120, 180]          # one burst, a minute apart
    times[burst(1)] = [0, 60, 7200, 7260]        # the same scene, two hours apart: two groups
    groups, _, _ = bursts.burst_groups(vectors, 0.8, times, window=600)
    assert len(set(groups[burst(0)])) == 1
    assert len(set(groups[burst(1)])) == 2 and groups[burst(1)][0] == groups[burst(1)][1]
    assert len(set(groups[burst(2)])) == 4  # no capture time: not grouped under a window
    groups, _, _ = bursts.burst_groups(vectors, 0.8, times, window=None)
    assert len(set(groups[burst(1)])) == 1 and len(set(groups[burst(2)])) == 1


def jpeg_with_exif(when: str | None) -> bytes:
    image, exif = Image.new("RGB", (16, 16), (90, 120, 200)), Image.Exif()
    if when:
        exif.get_ifd(0x8769)[36867] = when
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_capture_time_from_the_webcam_name_or_exif():
    assert capture_time("2016/06/03/2016_0603_125000.jpg") - capture_time("2016/06/03/2016_0603_124000.jpg") == 600
    assert capture_time("a.jpg", jpeg_with_exif("2021:07:04 18:30:05")) == capture_time("x/2021_0704_183005.jpg")
    assert capture_time("a.jpg", jpeg_with_exif(None)) is None
    assert capture_time("a.jpg", b"not an image") is None and capture_time("2016_1399_999999.jpg") is None


def test_keep_per_group_keeps_the_best_copy_and_says_how_much_more_was_dropped(trained, tmp_path, capsys):
    ckpt, gallery = trained
    photos = tmp_path / "photos"
    shutil.copytree(gallery, photos)
    (photos / "labels.csv").unlink()
    baseline = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/before"]))
    best = read_scores(tmp_path / "before" / "scores.csv")[0]["image"]
    for i in range(3):  # three more copies of the best image: the same picture re-encoded
        Image.open(photos / best).save(photos / f"copy{i}.jpg", quality=95 - 5 * i)

    capsys.readouterr()
    # the tiny untrained test network sees all these noise pictures much alike: a near-copy is closer still
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "keep_per_group=1",
                                       "group_similarity=0.999"]))
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert list(rows[0])[-5:] == ["reason", "rank", "group", "group_rank", "group_size"]
    burst = [row for row in rows if row["group"] == rows[0]["group"]]
    assert {row["image"] for row in burst} == {best, "copy0.jpg", "copy1.jpg", "copy2.jpg"}
    assert [row["group_rank"] for row in burst] == ["1", "2", "3", "4"] and {row["group_size"] for row in burst} == {"4"}
    assert burst[0]["band"] == "keep" and [(r["band"], r["reason"]) for r in burst[1:]] == [("reject", "burst")] * 3
    assert all(row["reason"] == ("score" if row["band"] == "reject" else "") for row in rows if row not in burst)
    assert summary["groups"]["burst_rejected"] == 3 and summary["rejected"] == baseline["rejected"] + 3
    assert summary["gallery_reduction"] > summary["gallery_reduction_before_bursts"]
    printed = capsys.readouterr().out
    assert "burst copies    3 rejected, keep_per_group=1" in printed and "near-copies     " in printed
    assert "+3 near-copies hidden" in (tmp_path / "out" / "highlights.html").read_text()


@pytest.mark.parametrize("override, message", [
    ("keep_per_group=0", "keep_per_group=0: give a whole number"),
    ("group_window=-5", "group_window=-5: give seconds"),
    ("group_similarity=2", "group_similarity=2: give a cosine similarity"),
])
def test_bad_group_options_are_refused_before_any_work(trained, tmp_path, override, message):
    ckpt, gallery = trained
    with pytest.raises(Exception, match=message):
        predict(compose_predict([f"ckpt={ckpt}", f"gallery={gallery}", f"output={tmp_path}/out", override]))
    assert not (tmp_path / "out").exists()


def test_the_threshold_that_tells_copies_from_different_photos_is_found():
    from beholder.train.near_copies import best_threshold

    vectors, truth = burst_vectors(sources=30, copies=4, singles=0)
    threshold, precision, recall = best_threshold(vectors.astype(np.float32), truth)  # groups' pairwise precision and recall
    groups, _, _ = bursts.burst_groups(vectors, threshold)
    assert precision == 1.0 and recall >= 0.95 and same_partition(groups, truth)


def test_each_model_carries_its_own_near_copy_threshold_and_predict_uses_it(trained, photos, tmp_path):
    import torch

    ckpt, _ = trained
    own = torch.load(ckpt, map_location="cpu", weights_only=True)["group_similarity"]
    assert isinstance(own, float) and 0.3 <= own < 1
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/own"]))
    assert (summary["groups"]["similarity"], summary["groups"]["similarity_source"]) == (own, "the model's own")
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/given", "group_similarity=0.95"]))
    assert (summary["groups"]["similarity"], summary["groups"]["similarity_source"]) == (0.95, "group_similarity")
