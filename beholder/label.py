"""The tournament labeller: a small web app that turns hours of clicking into tiered labels.

    python -m beholder.label --gallery ~/panocam --db labels.sqlite              # http://127.0.0.1:8000
    python -m beholder.label --gallery s3://my-bucket/panocam --db labels.sqlite --rater alice
    python -m beholder.label export --db labels.sqlite --out labels.csv          # -> data.labels
"""

from __future__ import annotations

import argparse
import io
import math
import os
import secrets
import sys
from functools import lru_cache
from importlib import resources

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from beholder.data import list_gallery
from beholder.errors import UserError, exit_on_user_error
from beholder.images import UnreadableImage, decode_image
from beholder.label_export import export
from beholder.module import load_checkpoint, score_images
from beholder.storage import Store, check_uri, join
from beholder.tournament import SubmissionError, Tournament

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Submission(BaseModel):
    set_id: int
    advanced: list[int]


def create_app(tournament: Tournament, gallery: str, store: Store, default_rater: str = "me", token: str | None = None) -> FastAPI:
    app = FastAPI(title="beholder labeller", docs_url=None, redoc_url=None)
    page = resources.files("beholder").joinpath("static/label.html").read_text()

    def authorised(request: Request, t: str | None = Query(None, alias="token")):
        if token and not secrets.compare_digest(t or request.headers.get("x-token", ""), token):
            raise HTTPException(401, "a valid token is needed (?token=...)")

    def rater_of(rater: str | None) -> str:
        name = (rater or default_rater).strip()
        if not name or len(name) > 64:
            raise HTTPException(400, "rater: give a name of 1-64 characters")
        return name

    def state(rater: str) -> dict:
        shown = tournament.next_set(rater)
        images = [{"id": i, "url": f"/image/{i}"} for i in shown.image_ids] if shown else []
        return {"rater": rater, "set": {"id": shown.set_id, "round": shown.round, "images": images} if shown else None,
                "progress": tournament.progress(rater), "token_required": bool(token)}

    @lru_cache(maxsize=256)
    def thumbnail(image_id: int) -> bytes:
        key = tournament.key_of(image_id)
        picture = decode_image(store.read(join(gallery, key)), min_size=(900, 200))
        picture.thumbnail((1820, 1820) if picture.width > 2.5 * picture.height else (900, 700))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/state", dependencies=[Depends(authorised)])
    def get_state(rater: str | None = None):
        return state(rater_of(rater))

    @app.post("/api/submit", dependencies=[Depends(authorised)])
    def submit(submission: Submission, rater: str | None = None):
        name = rater_of(rater)
        try:
            tournament.submit(name, submission.set_id, submission.advanced)
        except SubmissionError as error:
            raise HTTPException(409, str(error)) from None
        return state(name)

    @app.post("/api/undo", dependencies=[Depends(authorised)])
    def undo(rater: str | None = None):
        name = rater_of(rater)
        tournament.undo(name)
        return state(name)

    @app.get("/image/{image_id}", dependencies=[Depends(authorised)])
    def image(image_id: int):
        # Only ids of gallery images are served: no path or key ever comes from the request.
        if tournament.key_of(image_id) is None:
            raise HTTPException(404, "no such image")
        try:
            return Response(thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
        except (UnreadableImage, OSError) as error:
            raise HTTPException(422, f"unreadable image: {error}") from None

    return app


def model_priorities(ckpt: str, gallery: str, store: Store, keys: list[str]) -> dict[str, float]:
    """Active labelling: distance of each image's score from the checkpoint's keep threshold
    (smaller = the model is less sure = shown sooner)."""
    module = load_checkpoint(ckpt)
    scores = {key: score for key, (score, _) in score_images(module, gallery, keys, store).items()}
    threshold = module.keep_threshold(1.0)
    if math.isnan(threshold):
        threshold = sorted(scores.values())[len(scores) // 2]
    return {key: abs(score - threshold) for key, score in scores.items()}


def serve(args) -> None:
    gallery = check_uri(args.gallery, "--gallery")
    store = Store(args.endpoint_url)
    keys = list_gallery(store, gallery, "--gallery")
    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        raise UserError(f"--targets {args.targets!r}: give acceptance rates like 0.5,0.1,0.4") from None
    if not targets or not all(0 < t <= 1 for t in targets):
        raise UserError(f"--targets {args.targets!r}: each rate must be in (0, 1]")
    tournament = Tournament(args.db, targets)
    priorities = model_priorities(args.model, gallery, store, keys) if args.model else None
    tournament.add_images(keys, priorities)
    token = args.token
    if args.host not in LOCAL_HOSTS and not token:
        token = secrets.token_urlsafe(16)
    app = create_app(tournament, gallery, store, args.rater, token)
    address = f"http://{args.host}:{args.port}/?rater={args.rater}" + (f"&token={token}" if token else "")
    print(f"beholder labeller: {len(keys)} images in {gallery}; open {address}", flush=True)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def run_export(args) -> None:
    if not os.path.exists(args.db):
        raise UserError(f"--db {args.db}: no such file")
    text, summary = export(Tournament(args.db))
    Store().write(args.out, text.encode())
    alpha = "n/a (no image seen by two raters)" if summary["alpha"] is None else f"{summary['alpha']:.3f}"
    print(f"wrote {summary['images']} labelled images to {args.out}; raters: {', '.join(summary['raters']) or 'none'}; "
          f"{summary['shared']} images seen by 2+ raters, Krippendorff's alpha (ordinal) {alpha}")


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
    parser.add_argument("--targets", default="0.5,0.1,0.4", help="acceptance target per round; their count is the number of rounds")
    parser.add_argument("--model", default=None, help="a checkpoint: show the images it is least sure about first")
    parser.add_argument("--endpoint-url", default=None)
    with exit_on_user_error():
        serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
