"""Mirror a web folder tree (Apache/nginx autoindex listings) into S3 or a local folder, resumably.

    beholder ingest https://example.org/panocam/assets/ s3://my-bucket/panocam/ \\
        --include 'thumbnail.jpg' --since 2015-01-01
    beholder ingest ... --dry-run       # what would be copied, with counts and bytes

A rerun skips files already at the destination with the same size, so an interrupted run loses
nothing it had finished. ``beholder-manifest.csv`` (key, source URL, bytes, capture time from the
path) is kept beside the data, merged run after run, and can seed the labeller. A 404 or a broken
file is reported and skipped.

The archive is not trusted: every key is proven to stay inside the destination, redirects must stay
under the start URL like links, downloads stream to disk within a whole-request deadline, and the
crawl stops at ``--max-depth`` folders and ``--max-pages`` listings.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import http.client
import io
import os
import posixpath
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from html.parser import HTMLParser

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from tqdm import tqdm

from beholder.core import storage
from beholder.core.errors import UserError, exit_on_user_error
from beholder.core.storage import Store, check_uri, is_s3, join, split_s3, within
from beholder.core.tables import csv_bytes, read_csv
from beholder.core.vocabulary import CommandParser, respell
from beholder.data.images import capture_time as file_time

DAY_PATH = re.compile(r"(?:^|/)(\d{4})(?:/(\d{2}))?(?:/(\d{2}))?/?$")
YEARS = range(1900, 2200)  # a 4-digit folder outside these is not a year (e.g. 2019/0612)
RETRYABLE = (500, 502, 503, 504, 429)
MANIFEST = "beholder-manifest.csv"
MANIFEST_FIELDS = ["key", "source_url", "bytes", "capture_time"]
CHUNK = 1 << 20
MAX_LISTING_BYTES = 32 << 20
# Characters left as they are when a link is made a valid URL (an unencoded space becomes %20).
URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


class Refused(Exception):
    """A link or redirect that would leave the archive or the destination; listed, never fetched."""


class DeadlineExceeded(TimeoutError):
    """A request that did not finish within the whole-request deadline (not retried)."""


def safe_key(key: str) -> str | None:
    """``key`` (a decoded path relative to the start URL) if every part of it is a plain name:
    no empty, ``.`` or ``..`` part, no leading ``/``, backslash or NUL. Else None."""
    parts = key.split("/")
    if not key or "\\" in key or "\0" in key or any(part in ("", ".", "..") for part in parts):
        return None
    return posixpath.normpath(key)


@dataclass
class Source:
    url: str
    key: str  # the path relative to the start URL
    size: int | None = None


class LinkParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


class RateLimit:
    """At most ``per_second`` requests per second over all threads (a polite crawler)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.next_time = time.monotonic()
        self.lock = threading.Lock()

    def wait(self):
        with self.lock:
            now = time.monotonic()
            delay = self.next_time - now
            self.next_time = max(now, self.next_time) + self.interval
        if delay > 0:
            time.sleep(delay)


class StayUnder(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL under ``prefix`` (the start URL), like links."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        if not target.startswith(self.prefix):
            raise Refused(f"redirect to {target} is outside {self.prefix}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Fetcher:
    """HTTP GET/HEAD with retries and exponential backoff on 5xx, 429, timeouts and dropped
    connections. ``timeout`` bounds each socket read, ``deadline`` a whole request."""

    def __init__(self, rate: RateLimit, prefix: str, retries: int = 5, timeout: float = 30.0, backoff: float = 0.5,
                 deadline: float = 600.0):
        self.rate, self.retries, self.timeout, self.backoff, self.deadline = rate, retries, timeout, backoff, deadline
        self.opener = urllib.request.build_opener(StayUnder(prefix))
        self.retried = 0
        self._lock = threading.Lock()

    def _retrying(self, attempt: int) -> None:
        with self._lock:
            self.retried += 1
        time.sleep(self.backoff * 2**attempt)

    def open(self, url: str, method: str = "GET"):
        for attempt in range(self.retries + 1):
            self.rate.wait()
            try:
                return self.opener.open(urllib.request.Request(url, method=method), timeout=self.timeout)
            except urllib.error.HTTPError as error:
                if error.code not in RETRYABLE or attempt == self.retries:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == self.retries:
                    raise
            self._retrying(attempt)
        raise AssertionError("unreachable")

    def download(self, url: str, sink, limit: int | None = None) -> int:
        """Stream the body into the file object ``sink`` (emptied before each try); its length. A
        body shorter than its Content-Length counts as a dropped connection."""
        for attempt in range(self.retries + 1):
            sink.seek(0)
            sink.truncate()
            end = time.monotonic() + self.deadline
            with self.open(url) as response:
                expected = response.headers.get("Content-Length")
                size = 0
                try:
                    while chunk := response.read1(CHUNK):  # what has arrived: the deadline is checked as bytes come
                        size += len(chunk)
                        if limit is not None and size > limit:
                            raise Refused(f"larger than {limit} bytes")
                        if time.monotonic() > end:
                            raise DeadlineExceeded(f"not finished within --deadline {self.deadline:g} s")
                        sink.write(chunk)
                except (ConnectionError, urllib.error.URLError, http.client.IncompleteRead):
                    size = None
                except TimeoutError as error:
                    if isinstance(error, DeadlineExceeded):
                        raise
                    size = None
            if size is not None and (expected is None or size == int(expected)):
                return size
            if attempt == self.retries:
                raise ConnectionError(f"{url}: body cut short after {self.retries} retries")
            self._retrying(attempt)
        raise AssertionError("unreachable")

    def read(self, url: str, limit: int = MAX_LISTING_BYTES) -> bytes:
        buffer = io.BytesIO()
        self.download(url, buffer, limit)
        return buffer.getvalue()


def capture_time(key: str) -> dt.datetime | None:
    """When a file was taken, from its name alone (the archive's YYYY_MMDD_HHMMSS): images.capture_time's reading."""
    seconds = file_time(key)
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None)


def folder_outside(key: str, since: dt.date | None, until: dt.date | None) -> bool:
    """True when a folder like ``2014/`` or ``2014/05/`` or ``2014/05/31/`` lies wholly outside the dates."""
    match = DAY_PATH.search(key)
    if not match or not (since or until):
        return False
    year, month, day = (int(g) if g else None for g in match.groups())
    try:
        if year not in YEARS:
            raise ValueError(year)
        first = dt.date(year, month or 1, day or 1)
    except ValueError:  # 2019/52 (a week), 2019/0612: not a year/month/day folder, so crawl it
        return False
    if day:
        last = first
    elif month:
        last = (dt.date(year + (month == 12), month % 12 + 1, 1) - dt.timedelta(days=1))
    else:
        last = dt.date(year, 12, 31)
    return bool((since and last < since) or (until and first > until))


def wanted(key: str, includes: list[str], excludes: list[str], since, until) -> bool:
    def matches(pattern):
        return fnmatch.fnmatch(key, pattern) or ("/" not in pattern and fnmatch.fnmatch(key.rsplit("/", 1)[-1], pattern))

    if includes and not any(matches(p) for p in includes):
        return False
    if any(matches(p) for p in excludes):
        return False
    if since or until:
        when = capture_time(key)
        if when is None or (since and when.date() < since) or (until and when.date() > until):
            return False
    return True


def crawl(start: str, fetcher: Fetcher, includes, excludes, since, until, errors: dict,
          max_depth: int = 12, max_pages: int = 100_000) -> list[Source]:
    """Breadth-first over the listings under ``start``; the files that pass the filters. Links
    whose decoded path would leave the start folder, and folders beyond the limits, go to ``errors``."""
    queue, seen, found, pages = deque([start]), {start}, [], 0
    while queue:
        folder = queue.popleft()
        pages += 1
        if pages > max_pages:
            errors[folder] = f"not crawled, nor {len(queue)} more listings: beyond --max-pages {max_pages}"
            break
        try:
            page = fetcher.read(folder).decode("utf-8", "replace")
        except Exception as error:
            errors[folder] = describe(error)
            continue
        parser = LinkParser()
        parser.feed(page)
        for href in parser.links:
            url = urllib.parse.quote(urllib.parse.urljoin(folder, href.strip()).split("#", 1)[0], safe=URL_SAFE)
            if "?" in url or not url.startswith(start) or url in seen:
                continue  # sort links, parents, other sites
            seen.add(url)
            raw = urllib.parse.unquote(url[len(start):])
            key = safe_key(raw.rstrip("/"))
            if key is None or key == MANIFEST:
                errors[url] = f"refused: {raw!r} would leave the destination" if key is None else f"refused: {MANIFEST} is beholder's own"
            elif url.endswith("/"):
                if key.count("/") + 1 > max_depth:
                    errors[url] = f"not crawled: deeper than --max-depth {max_depth}"
                elif not folder_outside(key, since, until):
                    queue.append(url)
            elif wanted(key, includes, excludes, since, until):
                found.append(Source(url, key))
    return found


def describe(error: Exception) -> str:
    if isinstance(error, Refused):
        return f"refused: {error}"
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return f"{type(error).__name__}: {error}"


class Destination:
    """Where copies go: an S3 prefix (multipart for big files) or a local folder. Every key is
    checked to stay inside it."""

    def __init__(self, uri: str, endpoint_url: str | None):
        self.uri, self.store = uri, Store(endpoint_url)

    def existing_sizes(self) -> dict[str, int]:
        if not is_s3(self.uri) and not os.path.isdir(self.uri):
            return {}
        return {name: int(version.split(":", 1)[0]) for name, version in self.store.versions(self.uri).items()}

    def path(self, key: str) -> str:
        """Where ``key`` goes; refused unless it is a plain relative path that stays inside."""
        if safe_key(key) != key:
            raise Refused(f"key {key!r} would leave the destination")
        target = join(self.uri, key)
        if not is_s3(self.uri) and not within(self.uri, target):
            raise Refused(f"{target} leads outside {self.uri} (a link in the destination)")
        return target

    def put_stream(self, key: str, fetch) -> int:
        """``fetch(file)`` streams the body into a temporary file, which then becomes ``key``
        whole: a reader never sees half a file. Returns its size."""
        target = self.path(key)
        if is_s3(self.uri):
            with tempfile.TemporaryFile() as spool:
                size = fetch(spool)
                spool.seek(0)
                bucket, name = split_s3(target)
                config = TransferConfig(multipart_threshold=64 * 1024 * 1024)
                self.store.s3.upload_fileobj(spool, bucket, name, Config=config)
            return size
        return storage.write_local_with(target, fetch)

    def read_manifest(self) -> dict[str, dict]:
        """The rows of an earlier run's manifest (none if absent or not ours)."""
        try:
            text = self.store.read(join(self.uri, MANIFEST)).decode("utf-8")
        except (FileNotFoundError, ClientError, UnicodeDecodeError):
            return {}
        try:
            columns, rows = read_csv(text)
        except csv.Error:
            return {}
        if columns != MANIFEST_FIELDS:
            return {}
        return {row["key"]: row for row in rows}


def write_manifest(destination: Destination, rows: dict[str, dict]) -> None:
    destination.store.write(join(destination.uri, MANIFEST), csv_bytes(MANIFEST_FIELDS, (row for _, row in sorted(rows.items()))))


def ingest(args) -> int:
    source, target = args.source, check_uri(args.destination, "destination")
    if not source.startswith(("http://", "https://")):
        raise UserError(f"source={source!r}: give an http:// or https:// URL of a folder listing")
    source = urllib.parse.quote(source if source.endswith("/") else source + "/", safe=URL_SAFE)
    since, until = parse_date(args.since, "--since"), parse_date(args.until, "--until")
    if since and until and since > until:
        raise UserError(f"--since {since} is after --until {until}")
    fetcher = Fetcher(RateLimit(args.rate), source, retries=args.retries, timeout=args.timeout, backoff=args.backoff,
                      deadline=args.deadline)
    destination = Destination(target, args.endpoint_url)
    failed: dict[str, str] = {}
    print(f"listing {source} ...", file=sys.stderr, flush=True)
    files = crawl(source, fetcher, args.include, args.exclude, since, until, failed, args.max_depth, args.max_pages)
    present = destination.existing_sizes()

    manifest, todo = {}, []
    for item in files:
        if item.key in present or args.dry_run:
            try:
                item.size = remote_size(fetcher, item.url)
            except Exception as error:
                failed[item.url] = describe(error)
                continue
        if item.key in present and present[item.key] == item.size:
            manifest[item.key] = manifest_row(item)
        else:
            todo.append(item)

    if args.dry_run:
        for item in todo:
            print(f"would copy {item.key}  ({item.size} bytes)")
        for url, reason in sorted(failed.items()):
            print(f"  not copied: {url}  ({reason})")
        total = sum(item.size or 0 for item in todo)
        print(f"dry run: {len(todo)} files ({total / 1e6:.1f} MB) to copy, {len(manifest)} already present, {len(failed)} refused or failed")
        return 0

    copied_bytes = 0
    with tqdm(total=len(todo), unit="file", desc="copying", disable=args.quiet) as bar, ThreadPoolExecutor(args.downloads) as pool:
        futures = {pool.submit(copy_one, fetcher, destination, item): item for item in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                item.size = future.result()
                copied_bytes += item.size
                manifest[item.key] = manifest_row(item)
            except Exception as error:
                failed[item.url] = describe(error)
            bar.update(1)
            bar.set_postfix(MB=f"{copied_bytes / 1e6:.1f}", failed=len(failed))
    # Earlier runs' rows stay for files still there (a run with --since keeps what --until copied).
    kept = {key: row for key, row in destination.read_manifest().items() if key in present and key not in manifest}
    manifest_uri = join(target, MANIFEST)
    try:
        write_manifest(destination, {**kept, **manifest})
        manifest_error = None
    except Exception as error:
        manifest_error = error

    print(
        f"copied {len(todo) - sum(1 for i in todo if i.url in failed)} files ({copied_bytes / 1e6:.1f} MB), "
        f"{len(files) - len(todo)} already present, {len(failed)} failed or refused, {fetcher.retried} retries; "
        f"manifest: {manifest_uri} ({len(kept) + len(manifest)} files)"
    )
    for url, reason in sorted(failed.items()):
        print(f"  failed: {url}  ({reason})")
    if manifest_error:
        raise UserError(f"writing {manifest_uri} failed: {manifest_error}; the copied files are kept, rerun to finish")
    return 1 if failed else 0


def remote_size(fetcher: Fetcher, url: str) -> int | None:
    with fetcher.open(url, "HEAD") as response:
        length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def copy_one(fetcher: Fetcher, destination: Destination, item: Source) -> int:
    return destination.put_stream(item.key, lambda sink: fetcher.download(item.url, sink))


def manifest_row(item: Source) -> dict:
    when = capture_time(item.key)
    return {"key": item.key, "source_url": item.url, "bytes": item.size, "capture_time": when.isoformat() if when else ""}


def parse_date(text: str | None, option: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"{option} {text!r}: give a date as YYYY-MM-DD") from None


def main(argv: list[str] | None = None, prog: str = "beholder ingest") -> int:
    parser = CommandParser(prog=prog, description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("source", help="URL of the top folder listing")
    parser.add_argument("destination", help="s3://bucket/prefix or a local folder")
    parser.add_argument("--include", action="append", default=[], help="glob on the path (or file name); repeatable")
    parser.add_argument("--exclude", action="append", default=[], help="glob on the path (or file name); repeatable")
    parser.add_argument("--since", help="first capture date to copy, YYYY-MM-DD (from the path)")
    parser.add_argument("--until", help="last capture date to copy, YYYY-MM-DD")
    parser.add_argument("--dry-run", action="store_true", help="list what would be copied; copy nothing")
    parser.add_argument("--downloads", type=int, default=8, help="concurrent downloads (default 8)")
    parser.add_argument("--rate", type=float, default=20.0, help="at most this many requests per second")
    parser.add_argument("--retries", type=int, default=5, help="tries after a failed request, per file (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for the next bytes")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds a whole request may take")
    parser.add_argument("--max-depth", type=int, default=12, help="folders below the start URL to descend at most")
    parser.add_argument("--max-pages", type=int, default=100_000, help="folder listings to read at most")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible store (AWS_ENDPOINT_URL works too)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(respell(sys.argv[1:] if argv is None else argv, ("--workers",)))
    for option in ("downloads", "max_depth", "max_pages"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.deadline <= 0 or args.timeout <= 0:
        parser.error("--timeout and --deadline must be positive")
    with exit_on_user_error():
        return ingest(args)


if __name__ == "__main__":
    sys.exit(main())
