"""Near-duplicate groups (bursts): images whose embeddings, centred on the gallery's mean, have
cosine similarity >= a threshold, joined transitively, optionally only between images taken within
a time window of each other.

No all-pairs matrix beyond ``EXACT_LIMIT`` images: candidate pairs are neighbours in a sorted
order, which is near-linear in the gallery size -

- with a time window: the order of capture time, each image against the next ones up to the window;
- without one: the order of random-hyperplane codes (SimHash; Charikar 2002), in several tables, each
  image against its next ``NEIGHBOURS``. Near-copies share most code bits, so they sort together, and
  one found pair per copy is enough, because groups are joined transitively.

Candidates are compared on a ``SKETCH``-dimensional random projection (cosine within ~0.02 near the
threshold), with ``MARGIN`` to spare; those close enough are checked on the full vectors.
"""

from __future__ import annotations

import numpy as np

from beholder.search.embeddings import Rows, gallery_mean

EXACT_LIMIT = 4096
DEFAULT_GROUP_SIMILARITY = 0.8  # for a model without its own: best F1 on the best preset's features (bench/similar.py)
TABLES, BITS, NEIGHBOURS = 16, 64, 16
SKETCH, MARGIN = 256, 0.1
# the most images a time-sorted image is compared with (a window holding more is a dense burst anyway)
MOST_IN_WINDOW = 64


def rowwise_similarity(vectors, a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    out = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        left = vectors[a[start:start + chunk]].astype(np.float32)
        right = vectors[b[start:start + chunk]].astype(np.float32)
        out[start:start + chunk] = np.einsum("ij,ij->i", left, right)
    return out


def sketch(vectors, rng: np.random.Generator, chunk: int = 2048) -> np.ndarray:
    """Unit rows of a Gaussian random projection to ``SKETCH`` dimensions: their dot products
    estimate the vectors' cosine similarities."""
    projection = rng.standard_normal((vectors.shape[1], SKETCH)).astype(np.float32)
    out = np.concatenate([vectors[s:s + chunk].astype(np.float32) @ projection for s in range(0, len(vectors), chunk)])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def exact_pairs(vectors, threshold: float, block: int = 1024):
    full = vectors[0:len(vectors)].astype(np.float32, copy=False)
    for start in range(0, len(full), block):
        i, j = np.nonzero(full[start:start + block] @ full.T >= threshold)
        above = j > i + start
        yield i[above] + start, j[above]


def neighbour_candidates(sketched: np.ndarray, order: np.ndarray, threshold: float, neighbours: int, allowed=None):
    """Pairs (order[p], order[p + k]), k <= ``neighbours``, whose sketches come within ``MARGIN``
    of ``threshold``; ``allowed(a, b)`` may rule pairs out first (and ends the search when it rules out all)."""
    for k in range(1, min(neighbours, len(order) - 1) + 1):
        a, b = order[:-k], order[k:]
        if allowed is not None:
            ok = allowed(a, b)
            if not ok.any():
                return
            a, b = a[ok], b[ok]
        close = np.einsum("ij,ij->i", sketched[a], sketched[b]) >= threshold - MARGIN
        yield a[close], b[close]


def simhash_orders(sketched: np.ndarray, rng: np.random.Generator):
    """For each table, the rows sorted by a ``BITS``-bit random-hyperplane code."""
    for _ in range(TABLES):
        signs = sketched @ rng.standard_normal((sketched.shape[1], BITS)).astype(np.float32) > 0
        yield np.argsort(np.packbits(signs, axis=1).view(">u8")[:, 0], kind="stable")


def similar_pairs(vectors, threshold: float, times: np.ndarray | None = None, window: float | None = None,
                  seed: int = 0):
    """Pairs of rows (i, j) with cosine similarity >= ``threshold`` (unit vectors), and with
    ``window``, taken at most that many seconds apart (rows without a time are not paired)."""
    if window is None and len(vectors) <= EXACT_LIMIT:
        yield from exact_pairs(vectors, threshold)
        return
    rng = np.random.default_rng(seed)
    sketched = sketch(vectors, rng)
    if window is not None:
        timed = np.flatnonzero(~np.isnan(times))
        order = timed[np.argsort(times[timed], kind="stable")]
        candidates = neighbour_candidates(sketched, order, threshold, MOST_IN_WINDOW, lambda a, b: times[b] - times[a] <= window)
    else:
        candidates = (pair for order in simhash_orders(sketched, rng) for pair in neighbour_candidates(sketched, order, threshold, NEIGHBOURS))
    for a, b in candidates:
        close = rowwise_similarity(vectors, a, b) >= threshold
        yield a[close], b[close]


def components(count: int, pairs) -> np.ndarray:
    """Each row's component (the smallest row in it), joining ``pairs`` transitively."""
    parent = np.arange(count)

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        for i, j in zip(a.tolist(), b.tolist()):
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(count)])


def burst_groups(vectors, threshold: float, times: np.ndarray | None = None,
                 window: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``vectors``: float16 rows (a matrix, or embeddings.DiskRows / Rows), in rank order (best
    first). Each row's group (1 = the group of the best image, then in
    order of their best images), its rank in the group and the group's size."""
    unit = Rows(vectors, mean=gallery_mean(vectors))  # centred as compared, a chunk at a time
    root = components(len(unit), similar_pairs(unit, threshold, times, window))
    _, inverse, sizes = np.unique(root, return_inverse=True, return_counts=True)
    group = inverse + 1  # each root is its group's best row, so groups number in order of their best
    rank = np.empty(len(vectors), dtype=int)
    seen = np.zeros(len(sizes) + 1, dtype=int)
    for row, g in enumerate(group.tolist()):
        seen[g] += 1
        rank[row] = seen[g]
    return group, rank, sizes[inverse]


def pair_counts(groups: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """How a partition into ``groups`` pairs images up against ``truth`` (each image's true group;
    -1: alone): (pairs in one group and truly together, pairs in one group, pairs truly together)."""
    truth = np.where(truth >= 0, truth, -np.arange(1, len(truth) + 1) - 10**6)
    upper = np.triu(np.ones((len(groups), len(groups)), dtype=bool), 1)
    found = (groups[:, None] == groups[None, :]) & upper
    together = (truth[:, None] == truth[None, :]) & upper
    return int((found & together).sum()), int(found.sum()), int(together.sum())


def cull_bursts(ranked: list[dict], per_group: int) -> int:
    """Of each near-duplicate group (``group``), only the best ``per_group`` (by ``group_rank``) of
    the images the thresholds let through stay; the rest are rejected with the reason ``burst``.
    Returns how many were rejected."""
    passed: dict[int, int] = {}
    culled = 0
    for row in sorted(ranked, key=lambda row: (row["group"], row["group_rank"])):
        if row["band"] == "reject":
            continue
        passed[row["group"]] = passed.get(row["group"], 0) + 1
        if passed[row["group"]] > per_group:
            row["band"], row["reason"] = "reject", "burst"
            culled += 1
    return culled
