"""python -m beholder.label: serve the labeller, or export its labels.

    python -m beholder.label --gallery ~/panocam --db labels.sqlite              # http://127.0.0.1:8000
    python -m beholder.label --gallery s3://my-bucket/panocam --db labels.sqlite --rater alice
    python -m beholder.label --gallery ~/panocam --db labels.sqlite --index OUTPUT   # key M: more like this
    python -m beholder.label export --db labels.sqlite --out labels.csv          # -> data.labels
"""

from __future__ import annotations

import argparse
import secrets
import sys

from beholder.data import list_gallery
from beholder.errors import UserError, exit_on_user_error
from beholder.label.app import LOCAL_HOSTS, create_app
from beholder.label.export import export
from beholder.label.tournament import Tournament
from beholder.module import load_checkpoint, score_images
from beholder.policy import Policy
from beholder.similar import Neighbours, load_index
from beholder.storage import Store, check_uri


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


def serve(args) -> None:
    gallery = check_uri(args.gallery, "--gallery")
    store = Store(args.endpoint_url)
    keys = list(list_gallery(store, gallery, "--gallery"))
    tournament = Tournament(args.db, parse_targets(args.targets) if args.targets is not None else None)
    priorities = model_priorities(args.model, gallery, store, keys) if args.model else None
    tournament.sync_images(keys, priorities)
    token = args.token
    if args.host not in LOCAL_HOSTS and not token:
        token = secrets.token_urlsafe(16)
    neighbours = Neighbours(*load_index(store, args.index)[:2]) if args.index else None
    app = create_app(tournament, gallery, store, args.rater, token, args.host, neighbours)
    address = f"http://{args.host}:{args.port}/?rater={args.rater}" + (f"&token={token}" if token else "")
    print(f"beholder labeller: {len(keys)} images in {gallery}; open {address}", flush=True)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def run_export(args) -> None:
    text, summary = export(Tournament(args.db, read_only=True))
    Store().write(args.out, text.encode())
    alpha = "n/a (no image seen by two raters)" if summary["alpha"] is None else f"{summary['alpha']:.3f}"
    gone = f"; {summary['gone']} labelled images no longer in the gallery left out" if summary["gone"] else ""
    print(f"wrote {summary['images']} labelled images to {args.out} ({summary['rounds']} rounds); raters: {', '.join(summary['raters']) or 'none'}; "
          f"{summary['shared']} images seen by 2+ raters, Krippendorff's alpha (ordinal) {alpha}{gone}")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        parser = argparse.ArgumentParser(prog="python -m beholder.label export", description="Write the labels CSV for train.py.")
        parser.add_argument("--db", required=True)
        parser.add_argument("--out", required=True, help="CSV path (or s3:// URI)")
        with exit_on_user_error():
            run_export(parser.parse_args(argv[1:]))
        return
    parser = argparse.ArgumentParser(prog="python -m beholder.label", description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", required=True, help="folder or s3://bucket/prefix")
    parser.add_argument("--db", required=True, help="SQLite file with the labels (created if missing)")
    parser.add_argument("--rater", default="me", help="the default rater's name (the page takes ?rater=NAME)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address; beyond localhost a token is required")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=None, help="access token (generated when listening beyond localhost)")
    parser.add_argument("--targets", default=None, help="acceptance target per round, their count the number of rounds "
                        "(default 0.5,0.1,0.4; stored with the database)")
    parser.add_argument("--model", default=None, help="a checkpoint: show the images it is least sure about first")
    parser.add_argument("--index", default=None, help="predict.py's output for this gallery (embeddings.parquet): key M shows more like this")
    parser.add_argument("--endpoint-url", default=None)
    with exit_on_user_error():
        serve(parser.parse_args(argv))
