"""Nearest embeddings by cosine similarity (of vectors centred on the gallery's mean, as bursts.py
compares them): exact, one matrix product, up to ``EXACT_UP_TO`` vectors; beyond, when the optional
extra is installed (``pip install -e '.[index]'``), an approximate FAISS index (inverted lists over
k-means cells, 8-bit scalar-quantised vectors), built once and saved beside the embeddings as
``embeddings.faiss.npz``, tied to them by the parquet file's digest."""

from __future__ import annotations

import importlib.util
import io
import math
import zipfile

import numpy as np

from beholder.search.embeddings import centred, gallery_mean

EXACT_UP_TO = 100_000
FAISS_FILE = "embeddings.faiss.npz"
TRAINING_SAMPLE = 50_000
CELLS_SEARCHED = 32


class ExactIndex:
    """Every vector compared, in chunks, with the vectors kept as they came (float16): no centred
    copy, so memory stays at the embeddings' own size. Rows that are not ``usable`` (not finite)
    are set to the mean of the others: like nothing, they never count in a search's order."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, usable: np.ndarray | None = None, chunk: int = 16384):
        if usable is not None and not usable.all():
            vectors[~usable] = gallery_mean(vectors[usable])
        self.vectors, self.chunk, self.mean = vectors, chunk, gallery_mean(vectors)
        self.norms = np.concatenate([np.linalg.norm(vectors[s:s + chunk].astype(np.float32) - self.mean, axis=1)
                                     for s in range(0, len(vectors), chunk)])
        self.norms = np.maximum(self.norms, 1e-12)

    def __len__(self):
        return len(self.vectors)

    def vector(self, row: int) -> np.ndarray:
        return centred(self.vectors[row:row + 1], self.mean)[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows), each queries x k, best first; ``queries`` already centred and unit:
        (v - mean) . q / |v - mean| for every vector v."""
        queries = np.asarray(queries, dtype=np.float32)
        offset = self.mean @ queries.T
        similarity = np.concatenate([(self.vectors[s:s + self.chunk].astype(np.float32) @ queries.T - offset) / self.norms[s:s + self.chunk, None]
                                     for s in range(0, len(self.vectors), self.chunk)]).T
        k = min(k, similarity.shape[1])
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        rows = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(similarity, rows, axis=1), rows


class FaissIndex:
    kind = "faiss"

    def __init__(self, index, mean: np.ndarray, digest: str):
        import faiss

        self.index, self.mean, self.digest = index, mean, digest
        faiss.extract_index_ivf(index).nprobe = CELLS_SEARCHED

    @classmethod
    def build(cls, batches, count: int, digest: str, seed: int = 0) -> FaissIndex:
        """From ``batches()``: a fresh iterator of (first row, float16 rows) for each of the two
        passes (mean and training sample, then the vectors added), so the vectors are never all in
        memory. Rows that are not finite are added as the mean: a zero vector once centred."""
        import faiss

        total, sample, finite = None, [], 0
        keep = TRAINING_SAMPLE / count
        rng = np.random.default_rng(seed)
        for _, rows in batches():
            rows = rows[np.isfinite(rows).all(1)]
            finite += len(rows)
            total = rows.astype(np.float64).sum(0) + (0 if total is None else total)
            sample.append(rows[rng.random(len(rows)) < keep])
        mean = (total / max(finite, 1)).astype(np.float32)
        dimension = len(mean)
        cells = max(1, min(math.ceil(math.sqrt(count)), count // 39))  # FAISS wants >= 39 training points a cell
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dimension), dimension, cells,
                                              faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(centred(np.concatenate(sample), mean))
        del sample
        for _, rows in batches():
            rows = rows.astype(np.float32)
            rows[~np.isfinite(rows).all(1)] = mean
            index.add(centred(rows, mean))
        index.make_direct_map()
        return cls(index, mean, digest)

    def to_bytes(self) -> bytes:
        import faiss

        buffer = io.BytesIO()
        np.savez(buffer, index=faiss.serialize_index(self.index), mean=self.mean, digest=np.array(self.digest))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, digest: str, count: int) -> FaissIndex | None:
        """A saved index, if it is one of ``count`` vectors made from the embeddings of ``digest``;
        None when it is not, or is cut or corrupt (the digest is read before FAISS parses anything)."""
        import faiss

        try:
            saved = np.load(io.BytesIO(data), allow_pickle=False)
            if str(saved["digest"]) != digest:
                return None
            found = cls(faiss.deserialize_index(saved["index"]), saved["mean"], digest)
        except (ValueError, KeyError, EOFError, OSError, RuntimeError, zipfile.BadZipFile):  # damaged: built again
            return None
        return found if len(found) == count else None

    def __len__(self):
        return self.index.ntotal

    def vector(self, row: int) -> np.ndarray:
        return self.index.reconstruct(row)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        similarity, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return similarity, rows


def faiss_installed() -> bool:
    return importlib.util.find_spec("faiss") is not None
