"""Each image's embedding: the head's input (standardised pooled features), L2-normalised, float16.

In a prediction shard row it is base64 text (so it is resumable with its score, line by line); in
``OUTPUT/embeddings.parquet`` a column ``vector`` (a fixed-size list of float16) beside ``image``,
with the checkpoint's digest, the dimension and the gallery in the schema's metadata, so that a later search
can tell an index of another model. Between the two, while predict decides, a gallery's embeddings wait
in a :class:`DiskRows` (a temporary file), so that the memory a run takes does not grow with the gallery.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILE = "embeddings.parquet"
ROWS_PER_GROUP = 1024  # parquet row groups, written and read a group at a time: ~11 MB of vectors (arrow takes ~8x that to write one)
CHECKPOINT = "model.ckpt"  # beside it: the checkpoint that made it, to embed new photos


def encode(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """An embedding from its base64 text; ValueError (binascii.Error) for text that is none."""
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=np.float16)


class DiskRows:
    """float16 rows of one width in an unnamed temporary file (in ``folder``; gone with the object, or
    when the process ends): appended one at a time, read back by index, a slice or an array of row
    numbers, like a matrix's. A gallery's embeddings wait here on disk, in the page cache, not in
    the process's memory."""

    def __init__(self, dimension: int, folder: str | None = None):
        self.file = tempfile.TemporaryFile(dir=folder)
        self.dimension, self.count, self.written = dimension, 0, True
        self.row_bytes = dimension * np.dtype(np.float16).itemsize

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int]:
        return self.count, self.dimension

    def append(self, vector: np.ndarray) -> int:
        """The new row's number."""
        self.file.write(np.asarray(vector, dtype=np.float16).reshape(self.dimension).tobytes())
        self.count, self.written = self.count + 1, False
        return self.count - 1

    def __getitem__(self, index) -> np.ndarray:
        if not self.written:
            self.file.flush()
            self.written = True
        fd = self.file.fileno()
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                raise IndexError("DiskRows: a slice with a step")
            data = os.pread(fd, max(stop - start, 0) * self.row_bytes, start * self.row_bytes)
            return np.frombuffer(data, dtype=np.float16).reshape(-1, self.dimension)
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"DiskRows: row out of range 0..{self.count - 1}")
        out = np.empty((len(rows), self.dimension), dtype=np.float16)
        for i, row in enumerate(rows.tolist()):
            out[i] = np.frombuffer(os.pread(fd, self.row_bytes, row * self.row_bytes), dtype=np.float16)
        return out


class Rows:
    """The rows of ``vectors`` (a matrix or :class:`DiskRows`) as they are asked for, a slice or an
    array of row numbers at a time, never all at once: in the order ``order`` (None: as they are),
    and with ``mean``, centred on it and unit, as float32 (:func:`centred`)."""

    def __init__(self, vectors, order=None, mean: np.ndarray | None = None):
        self.vectors, self.mean = vectors, mean
        self.order = None if order is None else np.asarray(order, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.vectors) if self.order is None else len(self.order)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.vectors.shape[1]

    def __getitem__(self, index) -> np.ndarray:
        rows = self.vectors[index if self.order is None else self.order[index]]
        return rows if self.mean is None else centred(rows, self.mean)


def write_parquet(file, images: list[str], vectors, checkpoint: str, gallery: str) -> None:
    """``embeddings.parquet`` into an open binary ``file``: ``images`` with their ``vectors`` (a
    float16 matrix, :class:`DiskRows` or :class:`Rows`: row i is images[i]'s), a row group at a time."""
    dimension = vectors.shape[1]
    schema = pa.schema([("image", pa.string()), ("vector", pa.list_(pa.float16(), dimension))]).with_metadata(
        {"beholder.checkpoint_sha256": checkpoint, "beholder.dimension": str(dimension), "beholder.gallery": gallery})
    with pq.ParquetWriter(file, schema, use_dictionary=["image"], write_statistics=["image"]) as writer:  # vectors repeat no values
        for start in range(0, len(images), ROWS_PER_GROUP):
            rows = np.asarray(vectors[start:start + ROWS_PER_GROUP], dtype=np.float16)
            column = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), type=pa.float16()), dimension)
            writer.write_table(pa.table({"image": images[start:start + ROWS_PER_GROUP], "vector": column}, schema=schema))


def centred(vectors: np.ndarray, mean: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """Unit float32 rows of ``vectors - mean``. Searches and groups compare these, so that what every
    image of a gallery shares (a fine-tuned network's features are all positive, say) is no likeness."""
    out = np.empty(vectors.shape, dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        rows = vectors[start:start + chunk].astype(np.float32) - mean
        out[start:start + chunk] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return out


def gallery_mean(vectors: np.ndarray, chunk: int = 16384) -> np.ndarray:
    return sum(vectors[s:s + chunk].astype(np.float64).sum(0) for s in range(0, len(vectors), chunk)).astype(np.float32) / len(vectors)


def read_parquet(source) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """(images, vectors N x D float16, metadata) of an ``embeddings.parquet`` (bytes or a local path)."""
    images, metadata = read_images(source)
    vectors = None
    for start, batch in vector_batches(source):
        if vectors is None:
            vectors = np.empty((len(images), batch.shape[1]), dtype=np.float16)
        vectors[start:start + len(batch)] = batch
    return images, (np.zeros((0, 0), dtype=np.float16) if vectors is None else vectors), metadata


def parquet_file(source) -> pq.ParquetFile:
    return pq.ParquetFile(io.BytesIO(source) if isinstance(source, bytes) else source)


def read_images(source) -> tuple[list[str], dict[str, str]]:
    """The images and the metadata of an ``embeddings.parquet``, without its vectors (the metadata
    gains ``vector_size``, the vectors' size as stored)."""
    file = parquet_file(source)
    metadata = {k.decode(): v.decode() for k, v in (file.schema_arrow.metadata or {}).items() if k.startswith(b"beholder.")}
    metadata["vector_size"] = str(file.schema_arrow.field("vector").type.list_size)
    return file.read(columns=["image"]).column("image").to_pylist(), metadata


def vector_batches(source):
    """(first row, float16 rows) of an ``embeddings.parquet``, a row group at a time."""
    start = 0
    for batch in parquet_file(source).iter_batches(columns=["vector"], batch_size=ROWS_PER_GROUP):
        column = batch.column(0)
        rows = column.values.to_numpy(zero_copy_only=False).reshape(len(batch), -1)
        yield start, rows
        start += len(rows)
