"""beholder similar: the images most like a query, by cosine similarity of the embeddings that
beholder predict wrote (``OUTPUT/embeddings.parquet``); exact, or FAISS for large galleries (vector_index.py).

    beholder similar --scored OUTPUT --query 2016/06/03/2016_0603_125000.jpg [--count 24] [--out DIR]
    beholder similar --scored OUTPUT --query ~/new.jpg   # a photo outside the gallery, embedded by OUTPUT/model.ckpt
"""

from __future__ import annotations

import os
import sys

from beholder.core.console import examples, line
from beholder.core.errors import UserError, exit_on_user_error
from beholder.core.storage import Store, inside, is_s3, join, within
from beholder.core.tables import csv_bytes
from beholder.core.vocabulary import CommandParser, respell
from beholder.data.contact_sheet import highlights_html
from beholder.search.embeddings import CHECKPOINT, FILE, centred
from beholder.search.neighbours import Neighbours, bands, embed, load_index
from beholder.search.vector_index import EXACT_UP_TO


def main(argv: list[str] | None = None, prog: str = "beholder similar") -> None:
    parser = CommandParser(prog=prog, description=" ".join(__doc__.split("\n\n")[0].replace("``", "").split()))
    parser.add_argument("--scored", required=True, help="beholder predict's output folder (or s3:// prefix) holding embeddings.parquet")
    parser.add_argument("--query", required=True, help="an image of the index (its path there), or a photo file outside it")
    parser.add_argument("--count", type=int, default=24, help="how many similar images (default 24)")
    parser.add_argument("--out", help="write similar.csv and similar.html into this folder")
    parser.add_argument("--ckpt", help=f"the checkpoint that scored the gallery, for a query outside the index (default: OUTPUT/{CHECKPOINT})")
    parser.add_argument("--method", choices=("auto", "exact", "faiss"), default="auto",
                        help=f"exact search, or FAISS (auto: FAISS beyond {EXACT_UP_TO} images when installed)")
    parser.add_argument("--endpoint-url", help="an S3-compatible store for s3:// paths")
    args = parser.parse_args(respell(sys.argv[1:] if argv is None else argv, ("--index", "--output", "--k")))
    with exit_on_user_error():
        store = Store(args.endpoint_url)
        images, index, metadata, usable = load_index(store, args.scored, args.method)
        neighbours = Neighbours(images, index, usable)
        gallery = metadata.get("beholder.gallery", "")
        key = index_key(args.query, images, gallery)
        if key is not None and not neighbours.knows(key):
            raise UserError(f"--query {args.query}: its vector in {FILE} is not finite; rerun beholder predict to write it again")
        if key is not None:
            found = neighbours.of(key, args.count)
        else:
            query = centred(embed(args.query, args.ckpt or join(args.scored, CHECKPOINT), metadata, store)[None], index.mean)[0]
            found = neighbours.search(query, args.count)
    band = bands(store, args.scored)
    rows = [{"rank": r, "image": image, "score": s, "band": band.get(image, "")} for r, (image, s) in enumerate(found, start=1)]
    named = key or args.query
    shown = f"; the first {PRINTED}" if len(rows) > PRINTED else ""
    print(f"beholder: the {len(rows)} images most like {named} ({index.kind} search of {len(images)}){shown}")
    for row in rows[:PRINTED]:
        print(f"  {row['rank']:>3}. {row['score']:.3f}  {row['image']}")
    if args.out:
        store.write(join(args.out, "similar.csv"), csv_bytes(["rank", "image", "similarity", "band"],
                    ({"rank": r["rank"], "image": r["image"], "similarity": f"{r['score']:.4f}", "band": r["band"]} for r in rows)))
        missing: list[str] = []

        def picture(image: str) -> bytes | None:
            if image == named and key is None:  # a photo outside the gallery
                return store.read(args.query if is_s3(args.query) else os.path.expanduser(args.query))
            return gallery_image(store, gallery, image, missing)

        query = {"image": named, "caption": f"the query · {band.get(named, 'outside the gallery')} · {named}", "band": band.get(named, "")}
        page = highlights_html([("The query", [query]), (f"Most like {named}", rows)], picture,
                               f"cosine similarity of the embeddings in {join(args.scored, FILE)}", title="beholder: more like this")
        store.write(join(args.out, "similar.html"), page)
        print("\n".join([line("results", join(args.out, "similar.csv")), line("contact sheet", join(args.out, "similar.html")),
                         *([line("not shown", f"{len(missing)} (no longer in {gallery}, or not in it): {examples(missing)}")] if missing else [])]))


PRINTED = 10  # neighbours printed; --out has them all


def index_key(query: str, images: list[str], gallery: str) -> str | None:
    """The index's name for ``query``: as given; a file of the local gallery, by its path from
    anywhere; or a bare file name that one image of the index has (``IMG_0015.JPG``). None for a
    photo outside the gallery; a bare name that several images have is refused, naming them."""
    if query in images:
        return query
    path = os.path.expanduser(query)
    if gallery and not is_s3(gallery) and os.path.isfile(path) and within(gallery, path):
        key = os.path.relpath(os.path.realpath(path), os.path.realpath(gallery)).replace(os.sep, "/")
        if key in images:
            return key
    if "/" not in query and os.sep not in query:
        named = [image for image in images if image.rsplit("/", 1)[-1] == query]
        if len(named) > 1:
            raise UserError(f"--query {query}: {len(named)} images of the index have this name ({examples(named)}); give its path in the gallery")
        if named:
            return named[0]
    return None


def gallery_image(store: Store, gallery: str, image: str, missing: list[str]) -> bytes | None:
    """An image of the gallery the index was made of; None (and named in ``missing``) for one that
    is gone or that the index names outside the gallery: a contact sheet shows nothing else."""
    path = inside(gallery, image) if gallery else None
    try:
        if path is not None:
            return store.read(path)
    except OSError:
        pass
    missing.append(image)
    return None


if __name__ == "__main__":
    main()
