"""python -m beholder.similar: the images most like a query, by cosine similarity of the embeddings
that predict.py wrote (``OUTPUT/embeddings.parquet``). Exact search: one matrix product.

    python -m beholder.similar --index OUTPUT --query 2016/06/03/2016_0603_125000.jpg [--k 24] [--out DIR]
    python -m beholder.similar --index OUTPUT --query ~/new.jpg --ckpt best.ckpt   # a photo outside the gallery
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from beholder.data import build_transform
from beholder.embeddings import FILE, read_parquet
from beholder.errors import MissingInput, UserError
from beholder.images import DEFAULT_MAX_PIXELS, UnreadableImage, decode_image
from beholder.report import highlights_html
from beholder.storage import Store, join


def load_index(store: Store, index: str) -> tuple[list[str], np.ndarray, dict[str, str]]:
    try:
        images, vectors, metadata = read_parquet(store.read(join(index, FILE)))
    except FileNotFoundError:
        raise MissingInput(f"--index {index}: no {FILE} there (predict.py writes it unless embeddings=false)") from None
    except Exception as error:
        raise UserError(f"--index {index}: {FILE} is not readable ({type(error).__name__}: {error}); score the gallery again") from None
    return images, vectors.astype(np.float32), metadata


def embed(path: str, ckpt: str, metadata: dict[str, str], store: Store) -> np.ndarray:
    """The embedding of a photo outside the index, by the checkpoint that made the index."""
    from beholder.module import load_checkpoint
    from beholder.predict import file_digest

    if not ckpt:
        raise UserError(f"--query {path}: not in the index; give --ckpt (the checkpoint that scored the gallery) to embed it")
    if file_digest(os.path.expanduser(ckpt)) != metadata.get("beholder.checkpoint_sha256"):
        raise UserError(f"--ckpt {ckpt}: not the checkpoint that made this index; its embeddings would not compare")
    module = load_checkpoint(os.path.expanduser(ckpt))
    try:
        picture = decode_image(store.read(os.path.expanduser(path)), DEFAULT_MAX_PIXELS)
    except FileNotFoundError:
        raise MissingInput(f"--query {path}: no such image in the index or on disk") from None
    except (UnreadableImage, OSError) as error:
        raise UserError(f"--query {path}: {error}") from None
    with torch.no_grad():
        inputs = module.head_inputs({"image": build_transform(module.net.data_config, train=False)(picture)[None]})
    return F.normalize(inputs.float(), dim=-1)[0].numpy()


def nearest(vectors: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> list[tuple[int, float]]:
    """The ``k`` rows most similar to ``query`` (cosine: the vectors are unit length), best first."""
    similarity = vectors @ query
    if exclude is not None:
        similarity[exclude] = -np.inf
    k = min(k, len(vectors) - (exclude is not None))
    top = np.argpartition(-similarity, k - 1)[:k] if k > 0 else np.array([], dtype=int)
    return [(int(i), float(similarity[i])) for i in sorted(top, key=lambda i: (-similarity[i], i))]


def bands(store: Store, index: str) -> dict[str, str]:
    try:
        return {row["image"]: row["band"] for row in csv.DictReader(io.StringIO(store.read(join(index, "scores.csv")).decode()))}
    except (FileNotFoundError, KeyError):
        return {}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beholder.similar", description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="predict.py's output folder (or s3:// prefix) holding embeddings.parquet")
    parser.add_argument("--query", required=True, help="an image of the index (its path there), or a photo file outside it")
    parser.add_argument("--k", type=int, default=24, help="how many similar images (default 24)")
    parser.add_argument("--out", help="write similar.csv and similar.html into this folder")
    parser.add_argument("--ckpt", help="the checkpoint that scored the gallery: needed for a query outside the index")
    parser.add_argument("--endpoint-url", help="an S3-compatible store for s3:// paths")
    args = parser.parse_args(argv)
    try:
        store = Store(args.endpoint_url)
        images, vectors, metadata = load_index(store, args.index)
        position = images.index(args.query) if args.query in images else None
        query = vectors[position] if position is not None else embed(args.query, args.ckpt, metadata, store)
        if len(query) != vectors.shape[1]:
            raise UserError(f"--ckpt {args.ckpt}: {len(query)} features, the index {vectors.shape[1]}")
        found = nearest(vectors, query, args.k, exclude=position)
    except UserError as error:
        print(f"beholder: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    band = bands(store, args.index)
    rows = [{"rank": r, "image": images[i], "score": s, "band": band.get(images[i], "")} for r, (i, s) in enumerate(found, start=1)]
    print(f"beholder: the {len(rows)} images most like {args.query}")
    for row in rows[:10]:
        print(f"  {row['rank']:>3}. {row['score']:.3f}  {row['image']}")
    if args.out:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["rank", "image", "similarity", "band"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({"rank": r["rank"], "image": r["image"], "similarity": f"{r['score']:.4f}", "band": r["band"]} for r in rows)
        store.write(join(args.out, "similar.csv"), buffer.getvalue().encode())
        gallery = metadata.get("beholder.gallery", "")
        page = highlights_html([(f"Most like {args.query}", rows)], lambda image: store.read(join(gallery, image)),
                               f"cosine similarity of the embeddings in {join(args.index, FILE)}", title="beholder: more like this")
        store.write(join(args.out, "similar.html"), page)
        print(f"  results         {join(args.out, 'similar.csv')}\n  contact sheet   {join(args.out, 'similar.html')}")


if __name__ == "__main__":
    main()
