"""Each image's embedding: the head's input (standardised pooled features), L2-normalised, float16.

In a prediction shard row it is base64 text (so it is resumable with its score, line by line); in
``OUTPUT/embeddings.parquet`` a column ``vector`` (a fixed-size list of float16) beside ``image``,
with the checkpoint's digest, the dimension and the gallery in the schema's metadata, so that a later search
can tell an index of another model.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILE = "embeddings.parquet"
ROWS_PER_GROUP = 8192  # parquet row groups: a large index is read a group at a time (~0.1 GB of lists each)
CHECKPOINT = "model.ckpt"  # beside it: the checkpoint that made it, to embed new photos


def encode(vector) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """An embedding from its base64 text; ValueError (binascii.Error) for text that is none."""
    return np.frombuffer(base64.b64decode(text, validate=True), dtype=np.float16)


def parquet_bytes(rows: list[dict], checkpoint: str, gallery: str) -> bytes:
    """``rows``: dicts with ``image`` and ``vector`` (decoded), in the order to keep."""
    vectors = np.stack([row["vector"] for row in rows])
    dimension = vectors.shape[1]
    values = pa.array(vectors.reshape(-1), type=pa.float16())
    table = pa.table({"image": [row["image"] for row in rows], "vector": pa.FixedSizeListArray.from_arrays(values, dimension)})
    table = table.replace_schema_metadata(
        {"beholder.checkpoint_sha256": checkpoint, "beholder.dimension": str(dimension), "beholder.gallery": gallery}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROWS_PER_GROUP)
    return buffer.getvalue()


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
