"""The gallery's embeddings searched: an index (exact, or FAISS for large galleries) and the images nearest a query."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import numpy as np
import torch

from beholder.core.errors import MissingInput, UserError
from beholder.core.storage import Store, file_digest, is_s3, join
from beholder.data.gallery import build_transform
from beholder.data.images import DEFAULT_MAX_PIXELS, UnreadableImage, decode_image
from beholder.data.scores import read_scored
from beholder.search.embeddings import FILE, ROWS_PER_GROUP, read_images, read_parquet, vector_batches
from beholder.search.vector_index import EXACT_UP_TO, FAISS_FILE, ExactIndex, FaissIndex, faiss_installed


def load_index(store: Store, index: str, method: str = "auto") -> tuple[list[str], ExactIndex | FaissIndex, dict[str, str], np.ndarray]:
    """The index's images, a search over their embeddings (exact or FAISS, see vector_index), the
    parquet metadata and which images' vectors are usable (finite: one NaN would make every
    similarity NaN, so such rows are left out of every answer and named). A FAISS index is built on
    first use from the parquet's row groups (the vectors are never all in memory) and saved beside
    the embeddings; one that does not match them, or is damaged, is built again."""
    path = join(index, FILE)
    try:
        source = store.read(path) if is_s3(path) else os.path.expanduser(path)
        images, metadata = read_images(source)
        exact = method == "exact" or (method == "auto" and (len(images) <= EXACT_UP_TO or not faiss_installed()))
        # exact: the vectors are read once, into memory; FAISS: a row group at a time, here and when built
        batches = [(0, read_parquet(source)[1])] if exact else vector_batches(source)
        usable = np.concatenate([np.isfinite(rows[s:s + ROWS_PER_GROUP]).all(1) for _, rows in batches
                                 for s in range(0, len(rows), ROWS_PER_GROUP)] or [np.zeros(0, bool)])
    except FileNotFoundError:
        raise MissingInput(f"--scored {index}: no {FILE} there (beholder predict writes it unless embeddings=false)") from None
    except Exception as error:
        raise UserError(f"--scored {index}: {FILE} is not readable ({type(error).__name__}: {error}); rerun beholder predict to write it again") from None
    if metadata["vector_size"] != metadata.get("beholder.dimension"):
        raise UserError(f"--scored {index}: {FILE} holds {metadata['vector_size']}-feature vectors, its metadata says {metadata.get('beholder.dimension')}")
    if not images:
        raise UserError(f"--scored {index}: {FILE} holds no images; rerun beholder predict to write it again")
    if not usable.any():
        raise UserError(f"--scored {index}: {FILE} holds no image with a usable (finite) vector; rerun beholder predict to write it again")
    if not usable.all():
        bad = [image for image, ok in zip(images, usable.tolist()) if not ok]
        print(f"beholder: {len(bad)} images of {FILE} have vectors that are not finite and are left out of the search: e.g. "
              + "; ".join(bad[:3]), file=sys.stderr)
    scored = bands(store, index)
    if scored and set(scored) != set(images):
        raise UserError(f"--scored {index}: {FILE} holds {len(images)} images, scores.csv {len(scored)}: not from the same run; "
                        "rerun beholder predict to write it again")
    if method == "faiss" and not faiss_installed():
        raise UserError("--method faiss: FAISS is not installed (pip install -e '.[index]')")
    if exact:
        if len(images) > EXACT_UP_TO and method == "auto":
            print(f"beholder: {len(images)} vectors searched exactly; pip install -e '.[index]' for a faster approximate index", file=sys.stderr)
        return images, ExactIndex(batches[0][1], usable), metadata, usable
    saved = join(index, FAISS_FILE)
    digest = hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else file_digest(source)
    found = FaissIndex.from_bytes(store.read(saved), digest, len(images)) if store.exists(saved) else None
    if found is not None:
        return images, found, metadata, usable
    built = FaissIndex.build(lambda: vector_batches(source), len(images), digest)
    store.write(saved, built.to_bytes())
    return images, built, metadata, usable


class Neighbours:
    """An index's images by key: the ones most like a given one (the labeller's "more like this");
    images without a usable vector are neither asked about nor answered."""

    def __init__(self, images: list[str], index: ExactIndex | FaissIndex, usable: np.ndarray):
        self.images, self.index, self.usable = images, index, usable
        self.rows = {image: row for row, image in enumerate(images) if usable[row]}

    @classmethod
    def load(cls, store: Store, index: str) -> Neighbours:
        images, search, _, usable = load_index(store, index)
        return cls(images, search, usable)

    def knows(self, image: str) -> bool:
        return image in self.rows

    def of(self, image: str, k: int) -> list[tuple[str, float]]:
        row = self.rows.get(image)
        if row is None:
            return []
        return self.search(self.index.vector(row), k, leave_out=row)

    def search(self, query: np.ndarray, k: int, leave_out: int = -1) -> list[tuple[str, float]]:
        """The ``k`` images most like ``query`` (centred and unit), best first."""
        similarity, rows = self.index.search(query[None], k + 1 + int((~self.usable).sum()))
        return [(self.images[r], float(s)) for r, s in zip(rows[0], similarity[0])
                if r >= 0 and r != leave_out and self.usable[r]][:k]


def embed(path: str, ckpt: str, metadata: dict[str, str], store: Store) -> np.ndarray:
    """The embedding of a photo outside the index, by the checkpoint that made the index."""
    from beholder.models.load import load_checkpoint

    with tempfile.NamedTemporaryFile(suffix=".ckpt") as copy:
        local = copy.name if is_s3(ckpt) else os.path.expanduser(ckpt)
        try:
            if is_s3(ckpt):
                copy.write(store.read(ckpt))
                copy.flush()
            digest = file_digest(local)
        except FileNotFoundError:
            raise MissingInput(f"--query {path}: not in the index, and no checkpoint at {ckpt} to embed it (give --ckpt)") from None
        if digest != metadata.get("beholder.checkpoint_sha256"):
            raise UserError(f"--ckpt {ckpt}: not the checkpoint that made this index; its embeddings would not compare")
        module = load_checkpoint(local)
    try:
        picture = decode_image(store.read(os.path.expanduser(path)), DEFAULT_MAX_PIXELS)
    except FileNotFoundError:
        raise MissingInput(f"--query {path}: no such image in the index or on disk") from None
    except (UnreadableImage, OSError) as error:
        raise UserError(f"--query {path}: {error}") from None
    with torch.no_grad():
        tiles = build_transform(module.net.data_config, train=False)(picture)
        inputs = module.head_inputs({"image": tiles, "tiles": torch.tensor([len(tiles)])})
    vector = module.embedding(inputs)[0].numpy()
    if str(len(vector)) != metadata.get("beholder.dimension"):
        raise UserError(f"--ckpt {ckpt}: {len(vector)} features, the index {metadata.get('beholder.dimension')}")
    return vector


def bands(store: Store, index: str) -> dict[str, str]:
    try:
        return {row["image"]: row["band"] for row in read_scored(store, index)}
    except UserError:
        return {}
