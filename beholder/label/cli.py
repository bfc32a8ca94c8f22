"""beholder label and beholder review: the labeller and the review of a model's decisions, served.

    beholder label --gallery ~/panocam --db labels.sqlite              # http://127.0.0.1:8000
    beholder label --gallery s3://my-bucket/panocam --db labels.sqlite --rater alice
    beholder label --gallery ~/panocam --db labels.sqlite --scored OUTPUT   # key M: more like this
    beholder review --scored OUTPUT --gallery ~/panocam --db review.sqlite
    beholder label export --db labels.sqlite --out labels.csv          # -> beholder train labels=labels.csv
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable

from fastapi import FastAPI

from beholder.core.errors import UserError, exit_on_user_error
from beholder.core.storage import Store, check_uri, is_s3
from beholder.core.vocabulary import CommandParser, respell
from beholder.data.gallery import list_gallery
from beholder.data.scores import read_scored, scored_file
from beholder.decisions.database import ImageDatabase
from beholder.decisions.review import ORDERS, Review, read_decisions
from beholder.decisions.tournament import Tournament
from beholder.label.app import LOCAL_HOSTS, labeller_app, review_app
from beholder.models.inference import score_images
from beholder.models.load import load_checkpoint
from beholder.predict.policy import Policy
from beholder.ratings.sources import from_sidecars
from beholder.search.neighbours import Neighbours


def model_priorities(ckpt: str, gallery: str, store: Store, keys: list[str]) -> dict[str, float]:
    """Active labelling: distance of each image's score from the review band of the checkpoint's
    keep / review / reject policy (smaller = the model is less sure = shown sooner)."""
    module = load_checkpoint(ckpt)
    scores = {key: score for key, (score, _) in score_images(module, gallery, keys, store).items()}
    calibration = module.val_positive_scores.tolist()
    if calibration:
        policy = Policy.calibrated(calibration)
    else:  # an unvalidated checkpoint: unsure around the median
        policy = Policy.fixed(sorted(scores.values())[len(scores) // 2], "the median score")
    return {key: policy.distance(score) for key, score in scores.items()}


def parse_targets(text: str) -> list[float]:
    try:
        targets = [float(t) for t in text.split(",")]
    except ValueError:
        raise UserError(f"--targets {text!r}: give acceptance rates like 0.5,0.1,0.4") from None
    if not all(0 < t <= 1 for t in targets):
        raise UserError(f"--targets {text!r}: each rate must be in (0, 1]")
    return targets


def listen(args, database: ImageDatabase, app_with: Callable[[str | None], FastAPI], what: str) -> None:
    """Serve ``app_with(token)`` (the app over ``database``) on --host:--port; beyond localhost with a
    token (generated if none is given)."""
    token = args.token
    if args.host not in LOCAL_HOSTS and not token:
        token = secrets.token_urlsafe(16)
    app = app_with(token)
    address = f"http://{args.host}:{args.port}/?rater={args.rater}" + (f"&token={token}" if token else "")
    print(f"{what}; open {address}", flush=True)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def serve(args) -> None:
    gallery = check_uri(args.gallery, "--gallery")
    store = Store(args.endpoint_url)
    keys = list(list_gallery(store, gallery, "--gallery"))
    tournament = Tournament(args.db, parse_targets(args.targets) if args.targets is not None else None)
    priorities = model_priorities(args.ckpt, gallery, store, keys) if args.ckpt else None
    tournament.sync_images(keys, priorities)
    neighbours = Neighbours.load(store, args.scored) if args.scored else None
    listen(args, tournament, lambda token: labeller_app(tournament, gallery, store, args.rater, token, args.host, neighbours),
           f"beholder labeller: {len(keys)} images in {gallery}")


def serve_review(args) -> None:
    gallery = check_uri(args.gallery, "--gallery")
    store = Store(args.endpoint_url)
    decisions = read_decisions(read_scored(store, args.scored), args.order)
    in_gallery = list_gallery(store, gallery, "--gallery")
    outside = [d["image"] for d in decisions if d["image"] not in in_gallery]
    decisions = [d for d in decisions if d["image"] in in_gallery]
    if outside:  # only gallery images are ever served: a row naming anything else is left out
        print(f"beholder: {len(outside)} rows of {scored_file(args.scored)} name no image of {gallery}, left out: e.g. "
              + "; ".join(outside[:3]), flush=True)
    stars = photographers_stars(gallery)
    rated = [d for d in decisions if stars.get(d["image"], 0) or d["reason"] == "rated"]
    if rated:  # the person has judged these already (in their sidecars, or predict's labels=): theirs is the decision
        print(f"beholder: {len(rated)} photos you rated yourself are not asked about", flush=True)
        decisions = [d for d in decisions if not (stars.get(d["image"], 0) or d["reason"] == "rated")]
    review = Review(args.db)
    review.load(decisions)
    listen(args, review, lambda token: review_app(review, gallery, store, args.rater, token, args.host, stars),
           f"beholder review: {len(decisions)} decisions of {scored_file(args.scored)} to confirm or overturn, "
           f"{'least certain' if args.order == 'uncertain' else 'best'} first")


def photographers_stars(gallery: str) -> dict[str, int]:
    """Each image's rating in its XMP (beholder's own fields left out), for a local gallery."""
    if is_s3(gallery):
        return {}
    root = os.path.abspath(gallery)
    return {os.path.relpath(r["path"], root).replace(os.sep, "/"): r["rating"] for r in from_sidecars(root, root, []) if r["rating"]}


def main(argv: list[str] | None = None, prog: str = "beholder label") -> None:
    parser = CommandParser(prog=prog, description="Label a gallery in the browser, round by round.")
    parser.add_argument("--gallery", required=True, help="folder or s3://bucket/prefix")
    parser.add_argument("--db", required=True, help="SQLite file with the labels (created if missing)")
    parser.add_argument("--rater", default="me", help="the default rater's name (the page takes ?rater=NAME)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address; beyond localhost a token is required")
    parser.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    parser.add_argument("--token", default=None, help="access token (generated when listening beyond localhost)")
    parser.add_argument("--targets", default=None, help="acceptance target per round, their count the number of rounds "
                        "(default 0.5,0.1,0.4; stored with the database)")
    parser.add_argument("--ckpt", default=None, help="a checkpoint: show the images it is least sure about first")
    parser.add_argument("--scored", default=None, help="beholder predict's output for this gallery (embeddings.parquet): key M shows more like this")
    parser.add_argument("--endpoint-url", default=None, help="an S3-compatible store for s3:// paths")
    args = parser.parse_args(respell(sys.argv[1:] if argv is None else argv, ("--model", "--index", "--output")))
    with exit_on_user_error():
        serve(args)


def review(argv: list[str] | None = None, prog: str = "beholder review") -> None:
    parser = CommandParser(prog=prog, description="Confirm or overturn a model's decisions in the browser.")
    parser.add_argument("--scored", required=True, help="beholder predict's output folder (or s3:// prefix), or its scores.csv")
    parser.add_argument("--gallery", required=True, help="the scored gallery: folder or s3://bucket/prefix")
    parser.add_argument("--db", required=True, help="SQLite file with the decisions (created if missing)")
    parser.add_argument("--order", choices=ORDERS, default="uncertain", help="uncertain: the review band and the decisions nearest "
                        "the cut first (default); best: kept best first, then the review band, then rejected")
    parser.add_argument("--rater", default="me", help="whose decisions these are (default me)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address; beyond localhost a token is required")
    parser.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    parser.add_argument("--token", default=None, help="access token (generated when listening beyond localhost)")
    parser.add_argument("--endpoint-url", default=None, help="an S3-compatible store for s3:// paths")
    args = parser.parse_args(respell(sys.argv[1:] if argv is None else argv, ("--scores",)))
    with exit_on_user_error():
        serve_review(args)
