"""The labeller's and the review's web apps: each a page and its JSON API router, over the images they share."""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections import OrderedDict
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from beholder.core.storage import Store, join
from beholder.data.images import UnreadableImage, capture_time, decode_image
from beholder.decisions.database import ImageDatabase, SubmissionError
from beholder.decisions.review import Review
from beholder.decisions.tournament import Tournament
from beholder.search.neighbours import Neighbours

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_IMAGE_ID = 2**63 - 1  # SQLite's largest integer
MAX_BODY = 64 * 1024  # a request body: a set's ids or one decision are a few hundred bytes
DECODES_AT_ONCE = 2  # full-size decodes in flight: each can take hundreds of MB for a huge PNG
SIZES = {"screen": (900, 700), "large": (2560, 2560), "full": None}
CACHE_BYTES = 64 << 20  # the served JPEGs kept: a few hundred screen-size ones


STATIC = {"labeller.css": "text/css", "common.js": "text/javascript"}


RowId = Annotated[int, Field(ge=0, le=MAX_IMAGE_ID)]  # larger ones are no row, and would overflow SQLite


class Submission(BaseModel):
    set_id: RowId
    advanced: Annotated[list[RowId], Field(max_length=1000)]


class Decision(BaseModel):
    image_id: RowId
    keep: bool


def host_name(host_header: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def request_refusal(request: Request, allowed_hosts: set[str] | None) -> tuple[int, str] | None:
    """Why a request must be refused (HTTP status, reason), or None. Without a token the server
    answers only to its own address (a page on another site can rebind a DNS name to 127.0.0.1, but
    not the Host header); a request that changes state must be same-origin JSON (a cross-site form or
    beacon cannot be) of a declared, small length (read before any of it is)."""
    if allowed_hosts is not None and host_name(request.headers.get("host", "")) not in allowed_hosts:
        return 403, f"host {request.headers.get('host', '')!r} is not this labeller's address"
    if request.method in ("GET", "HEAD"):
        return None
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        return 411, "send the body with its Content-Length"
    if int(length) > MAX_BODY:
        return 413, f"a body of {length} bytes; at most {MAX_BODY}"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return 403, f"cross-origin request from {origin} refused"
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return 403, "cross-site request refused"
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return 403, "send JSON (Content-Type: application/json)"
    return None


class Thumbnails:
    """Each image decoded once, at display size, with at most ``DECODES_AT_ONCE`` decodes in
    flight; the JPEGs are kept in a cache of at most ``budget`` bytes (the newest; none larger than
    an eighth of it, so a page asking for full-size pictures cannot grow the server). Concurrent
    requests for one image wait for one decode."""

    def __init__(self, read, budget: int = CACHE_BYTES):
        self.read, self.budget, self.held = read, budget, 0
        self.cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)
        self.lock = threading.Lock()
        self.key_locks: dict[str, threading.Lock] = {}

    def get(self, key: str, size: str = "screen") -> bytes:
        entry = (key, size)
        with self.lock:
            if entry in self.cache:
                self.cache.move_to_end(entry)
                return self.cache[entry]
            key_lock = self.key_locks.setdefault(entry, threading.Lock())
        with key_lock:
            with self.lock:
                if entry in self.cache:
                    return self.cache[entry]
            try:
                with self.decoding:
                    data = self.make(self.read(key), size)
                if len(data) <= self.budget // 8:  # a full-size picture is sent, not kept
                    with self.lock:
                        self.cache[entry] = data
                        self.held += len(data)
                        while self.held > self.budget:
                            self.held -= len(self.cache.popitem(last=False)[1])
            finally:
                with self.lock:
                    self.key_locks.pop(entry, None)
        return data

    @staticmethod
    def make(data: bytes, size: str = "screen") -> bytes:
        """A JPEG of the picture at ``size``: ``screen`` (900 x 700, panoramas 1820 wide), ``large``
        (2560 px: a full window on any screen) or ``full`` (every pixel, to check focus)."""
        bound = SIZES[size]
        picture = decode_image(data, min_size=(bound[0], 200) if bound else None)  # JPEGs decode at a reduced scale
        del data
        if bound:
            picture.thumbnail((1820, 1820) if size == "screen" and picture.width > 2.5 * picture.height else bound)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=85 if size == "screen" else 92)
        return buffer.getvalue()


class Access:
    """Who may ask (the token, when one is set) and as whom (``?rater=``), for every route of both apps."""

    def __init__(self, token: str | None, default_rater: str):
        self.token, self.default_rater = token, default_rater

    def authorised(self, request: Request, t: str | None = Query(None, alias="token")) -> None:
        given = (t or request.headers.get("x-token", "")).encode()
        if self.token and not secrets.compare_digest(given, self.token.encode()):
            raise HTTPException(401, "a valid token is needed (?token=...)")

    def rater(self, rater: str | None) -> str:
        name = (rater or self.default_rater).strip()
        if not name or len(name) > 64:
            raise HTTPException(400, "rater: give a name of 1-64 characters")
        return name


def labeller_routes(tournament: Tournament, access: Access, neighbours: Neighbours | None) -> APIRouter:
    """The tournament's API: the set on screen, the next one, a submission, undo, and "more like this"."""
    routes = APIRouter()

    def state(rater: str, shown) -> dict:
        images = [{"id": i, "url": f"/image/{i}"} for i in shown.image_ids] if shown else []
        return {"rater": rater, "set": {"id": shown.set_id, "round": shown.round, "images": images} if shown else None,
                "progress": tournament.progress(rater), "token_required": bool(access.token)}

    @routes.get("/api/state")
    def get_state(rater: str | None = None):
        """The set on screen, if any; reads only (POST /api/next draws one)."""
        name = access.rater(rater)
        return state(name, tournament.open_set(name))

    @routes.post("/api/next")
    def next_set(rater: str | None = None):
        name = access.rater(rater)
        return state(name, tournament.next_set(name))

    @routes.post("/api/submit")
    def submit(submission: Submission, rater: str | None = None):
        name = access.rater(rater)
        tournament.submit(name, submission.set_id, submission.advanced)
        return state(name, tournament.next_set(name))

    @routes.post("/api/undo")
    def undo(rater: str | None = None):
        name = access.rater(rater)
        tournament.undo(name)
        return state(name, tournament.next_set(name))

    @routes.get("/api/similar/{image_id}")
    def similar(image_id: int, k: int = Query(12, ge=1, le=100)):
        if neighbours is None:
            raise HTTPException(404, "no embeddings: start the labeller with --scored OUTPUT (beholder predict's output for this gallery)")
        key = tournament.key_of(image_id) if 0 < image_id <= MAX_IMAGE_ID else None
        if key is None:
            raise HTTPException(404, "no such image")
        ids = {k: i for i, k in tournament.keys().items()}
        found = [(ids[other], similarity) for other, similarity in neighbours.of(key, 2 * k) if other in ids]
        if not found and not neighbours.knows(key):
            raise HTTPException(404, "this image is not in the index (score the gallery again with beholder predict)")
        return {"images": [{"id": i, "url": f"/image/{i}", "similarity": round(s, 4)} for i, s in found[:k]]}

    return routes


def review_routes(review: Review, access: Access, gallery: str, store: Store, stars: dict[str, int]) -> APIRouter:
    """The review's API: the next decisions to confirm or overturn, a decision, undo."""
    routes = APIRouter()

    def taken_on(key: str) -> str:
        try:
            taken = capture_time(key, store.read(join(gallery, key)))
        except OSError:
            return ""
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(taken)) if taken is not None else ""

    def state(rater: str) -> dict:
        upcoming = review.upcoming(rater, 9)
        item = upcoming[0] if upcoming else None
        if item:
            item.update(url=f"/image/{item['id']}", large=f"/image/{item['id']}?size=large", full=f"/image/{item['id']}?size=full",
                        taken=taken_on(item["image"]), stars=stars.get(item["image"], 0))
        return {"rater": rater, "progress": review.review_progress(rater), "item": item,
                "next": [{"id": i["id"], "url": f"/image/{i['id']}", "band": i["band"]} for i in upcoming[1:]]}

    @routes.get("/api/review/state")
    def get_state(rater: str | None = None):
        return state(access.rater(rater))

    @routes.post("/api/review/decide")
    def decide(decision: Decision, rater: str | None = None):
        name = access.rater(rater)
        review.decide(name, decision.image_id, decision.keep)
        return state(name)

    @routes.post("/api/review/undo")
    def undo(rater: str | None = None):
        name = access.rater(rater)
        review.undo_decision(name)
        return state(name)

    return routes


def labeller_app(tournament: Tournament, gallery: str, store: Store, default_rater: str = "me", token: str | None = None,
                 host: str = "127.0.0.1", neighbours: Neighbours | None = None) -> FastAPI:
    """The labeller: its page and API. ``neighbours``: the gallery's embeddings, for "more like this"."""
    access = Access(token, default_rater)
    return image_app(tournament, gallery, store, "label.html", labeller_routes(tournament, access, neighbours), access, host)


def review_app(review: Review, gallery: str, store: Store, default_rater: str = "me", token: str | None = None,
               host: str = "127.0.0.1", stars: dict[str, int] | None = None) -> FastAPI:
    """The review of a model's decisions: its page and API. ``stars``: the photographer's current
    rating of each image, shown beside it."""
    access = Access(token, default_rater)
    return image_app(review, gallery, store, "review.html", review_routes(review, access, gallery, store, stars or {}), access, host)


def image_app(database: ImageDatabase, gallery: str, store: Store, page_name: str, routes: APIRouter, access: Access, host: str) -> FastAPI:
    """What both apps share around their ``routes``: the page, its static files, the images by id,
    and who may ask (without a token, only requests to this host)."""
    app = FastAPI(title="beholder labeller", docs_url=None, redoc_url=None, openapi_url=None)
    static = resources.files("beholder.label").joinpath("static")
    page = static.joinpath(page_name).read_text()
    allowed_hosts = None if access.token else set(LOCAL_HOSTS) | {host}
    thumbnails = Thumbnails(lambda key: store.read(join(gallery, key)))

    @app.middleware("http")
    async def refuse_foreign_requests(request: Request, call_next):
        refusal = request_refusal(request, allowed_hosts)
        if refusal:
            return JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
        return await call_next(request)

    @app.exception_handler(SubmissionError)
    async def conflict(request: Request, error: SubmissionError):  # a submission that does not fit what is on screen
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/static/{name}")
    def asset(name: str):
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(static.joinpath(name).read_text(), media_type=STATIC[name])

    @app.get("/image/{image_id}", dependencies=[Depends(access.authorised)])
    def image(image_id: int, size: str = Query("screen", pattern="^(screen|large|full)$")):
        # Only ids of gallery images are served: no path or key ever comes from the request,
        # and no server path goes into an answer.
        key = database.key_of(image_id) if 0 < image_id <= MAX_IMAGE_ID else None
        if key is None:
            raise HTTPException(404, "no such image")
        try:
            data = thumbnails.get(key, size)
        except FileNotFoundError:  # it leaves the pool at the next start (a GET writes nothing)
            raise HTTPException(404, "this image is no longer in the gallery") from None
        except UnreadableImage as error:
            raise HTTPException(422, f"unreadable image: {error}") from None
        except OSError as error:
            raise HTTPException(422, f"the image could not be read ({type(error).__name__})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    app.include_router(routes, dependencies=[Depends(access.authorised)])
    return app
