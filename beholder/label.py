"""The tournament labeller: a small web app that turns hours of clicking into tiered labels.

    python -m beholder.label --gallery ~/panocam --db labels.sqlite              # http://127.0.0.1:8000
    python -m beholder.label --gallery s3://my-bucket/panocam --db labels.sqlite --rater alice
    python -m beholder.label --gallery ~/panocam --db labels.sqlite --index OUTPUT   # key M: more like this
    python -m beholder.label export --db labels.sqlite --out labels.csv          # -> data.labels
"""

from __future__ import annotations

import argparse
import io
import secrets
import sys
import threading
from collections import OrderedDict
from importlib import resources

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from beholder.data import list_gallery
from beholder.errors import UserError, exit_on_user_error
from beholder.images import UnreadableImage, decode_image
from beholder.label_export import export
from beholder.module import load_checkpoint, score_images
from beholder.policy import Policy
from beholder.similar import Neighbours, load_index
from beholder.storage import Store, check_uri, join
from beholder.tournament import SubmissionError, Tournament

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_IMAGE_ID = 2**63 - 1
DECODES_AT_ONCE = 2  # full-size decodes in flight: each can take hundreds of MB for a huge PNG


class Submission(BaseModel):
    set_id: int
    advanced: list[int]


def host_name(host_header: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def request_refusal(request: Request, allowed_hosts: set[str] | None) -> str | None:
    """Why a request must be refused, or None. Without a token the server answers only to its own
    address (a page on another site can rebind a DNS name to 127.0.0.1, but not the Host header);
    a request that changes state must be same-origin JSON (a cross-site form or beacon cannot be)."""
    if allowed_hosts is not None and host_name(request.headers.get("host", "")) not in allowed_hosts:
        return f"host {request.headers.get('host', '')!r} is not this labeller's address"
    if request.method in ("GET", "HEAD"):
        return None
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return f"cross-origin request from {origin} refused"
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request refused"
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return "send JSON (Content-Type: application/json)"
    return None


class Thumbnails:
    """Each image decoded once, at display size, with at most ``DECODES_AT_ONCE`` decodes in
    flight; the JPEGs are kept in a small cache. Concurrent requests for one image wait for one decode."""

    def __init__(self, read, size: int = 256):
        self.read, self.size = read, size
        self.cache: OrderedDict[str, bytes] = OrderedDict()
        self.decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)
        self.lock = threading.Lock()
        self.key_locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> bytes:
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            key_lock = self.key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self.lock:
                if key in self.cache:
                    return self.cache[key]
            try:
                with self.decoding:
                    data = self.make(self.read(key))
                with self.lock:
                    self.cache[key] = data
                    if len(self.cache) > self.size:
                        self.cache.popitem(last=False)
            finally:
                with self.lock:
                    self.key_locks.pop(key, None)
        return data

    @staticmethod
    def make(data: bytes) -> bytes:
        picture = decode_image(data, min_size=(900, 200))  # JPEGs decode at a reduced scale
        del data
        picture.thumbnail((1820, 1820) if picture.width > 2.5 * picture.height else (900, 700))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()


def create_app(tournament: Tournament, gallery: str, store: Store, default_rater: str = "me", token: str | None = None,
               host: str = "127.0.0.1", neighbours: Neighbours | None = None) -> FastAPI:
    """``neighbours``: the gallery's embeddings (python -m beholder.similar's search), for "more like this"."""
    app = FastAPI(title="beholder labeller", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("beholder").joinpath("static/label.html").read_text()
    allowed_hosts = None if token else set(LOCAL_HOSTS) | {host}
    thumbnails = Thumbnails(lambda key: store.read(join(gallery, key)))

    @app.middleware("http")
    async def refuse_foreign_requests(request: Request, call_next):
        reason = request_refusal(request, allowed_hosts)
        if reason:
            return JSONResponse({"detail": reason}, status_code=403)
        return await call_next(request)

    def authorised(request: Request, t: str | None = Query(None, alias="token")):
        given = (t or request.headers.get("x-token", "")).encode()
        if token and not secrets.compare_digest(given, token.encode()):
            raise HTTPException(401, "a valid token is needed (?token=...)")

    def rater_of(rater: str | None) -> str:
        name = (rater or default_rater).strip()
        if not name or len(name) > 64:
            raise HTTPException(400, "rater: give a name of 1-64 characters")
        return name

    def state(rater: str, shown) -> dict:
        images = [{"id": i, "url": f"/image/{i}"} for i in shown.image_ids] if shown else []
        return {"rater": rater, "set": {"id": shown.set_id, "round": shown.round, "images": images} if shown else None,
                "progress": tournament.progress(rater), "token_required": bool(token)}

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/state", dependencies=[Depends(authorised)])
    def get_state(rater: str | None = None):
        """The set on screen, if any; reads only (POST /api/next draws one)."""
        name = rater_of(rater)
        return state(name, tournament.open_set(name))

    @app.post("/api/next", dependencies=[Depends(authorised)])
    def next_set(rater: str | None = None):
        name = rater_of(rater)
        return state(name, tournament.next_set(name))

    @app.post("/api/submit", dependencies=[Depends(authorised)])
    def submit(submission: Submission, rater: str | None = None):
        name = rater_of(rater)
        try:
            tournament.submit(name, submission.set_id, submission.advanced)
        except SubmissionError as error:
            raise HTTPException(409, str(error)) from None
        return state(name, tournament.next_set(name))

    @app.post("/api/undo", dependencies=[Depends(authorised)])
    def undo(rater: str | None = None):
        name = rater_of(rater)
        tournament.undo(name)
        return state(name, tournament.next_set(name))

    @app.get("/api/similar/{image_id}", dependencies=[Depends(authorised)])
    def similar(image_id: int, k: int = Query(12, ge=1, le=100)):
        if neighbours is None:
            raise HTTPException(404, "no embeddings: start the labeller with --index OUTPUT (predict.py's output for this gallery)")
        key = tournament.key_of(image_id) if 0 < image_id <= MAX_IMAGE_ID else None
        if key is None:
            raise HTTPException(404, "no such image")
        ids = {k: i for i, k in tournament.keys().items()}
        found = [(ids[other], similarity) for other, similarity in neighbours.of(key, 2 * k) if other in ids]
        if not found and not neighbours.knows(key):
            raise HTTPException(404, "this image is not in the index (score the gallery again with predict.py)")
        return {"images": [{"id": i, "url": f"/image/{i}", "similarity": round(s, 4)} for i, s in found[:k]]}

    @app.get("/image/{image_id}", dependencies=[Depends(authorised)])
    def image(image_id: int):
        # Only ids of gallery images are served: no path or key ever comes from the request,
        # and no server path goes into an answer.
        key = tournament.key_of(image_id) if 0 < image_id <= MAX_IMAGE_ID else None
        if key is None:
            raise HTTPException(404, "no such image")
        try:
            data = thumbnails.get(key)
        except FileNotFoundError:  # it leaves the pool at the next start (a GET writes nothing)
            raise HTTPException(404, "this image is no longer in the gallery") from None
        except UnreadableImage as error:
            raise HTTPException(422, f"unreadable image: {error}") from None
        except OSError as error:
            raise HTTPException(422, f"the image could not be read ({type(error).__name__})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    return app


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


if __name__ == "__main__":
    main()
