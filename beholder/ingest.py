"""Mirror a web folder tree (Apache/nginx autoindex listings) into S3 or a local folder, resumably.

    python -m beholder.ingest https://example.org/panocam/assets/ s3://my-bucket/panocam/ \\
        --include 'thumbnail.jpg' --since 2015-01-01
    python -m beholder.ingest ... --dry-run       # what would be copied, with counts and bytes

A rerun skips files already at the destination with the same size, so an interrupted run loses
nothing it had finished. ``manifest.csv`` (key, source URL, bytes, capture time from the path) is
written beside the data and can seed the labeller. A 404 or a broken file is reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fnmatch
import http.client
import io
import os
import re
import sys
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
from tqdm import tqdm

from beholder.errors import UserError, exit_on_user_error
from beholder.storage import Store, check_uri, is_s3, join, split_s3

CAPTURE = re.compile(r"(\d{4})_(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})")
DAY_PATH = re.compile(r"(?:^|/)(\d{4})(?:/(\d{2}))?(?:/(\d{2}))?/?$")
RETRYABLE = (500, 502, 503, 504, 429)


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


class Fetcher:
    """HTTP GET/HEAD with retries and exponential backoff on 5xx, 429, timeouts and dropped connections."""

    def __init__(self, rate: RateLimit, retries: int = 5, timeout: float = 30.0, backoff: float = 0.5):
        self.rate, self.retries, self.timeout, self.backoff = rate, retries, timeout, backoff
        self.retried = 0
        self._lock = threading.Lock()

    def open(self, url: str, method: str = "GET"):
        for attempt in range(self.retries + 1):
            self.rate.wait()
            try:
                return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=self.timeout)
            except urllib.error.HTTPError as error:
                if error.code not in RETRYABLE or attempt == self.retries:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == self.retries:
                    raise
            with self._lock:
                self.retried += 1
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def read(self, url: str) -> bytes:
        """The whole body; a body shorter than its Content-Length counts as a dropped connection."""
        for attempt in range(self.retries + 1):
            with self.open(url) as response:
                expected = response.headers.get("Content-Length")
                try:
                    data = response.read()
                except (ConnectionError, TimeoutError, urllib.error.URLError, http.client.IncompleteRead):
                    data = None
            if data is not None and (expected is None or len(data) == int(expected)):
                return data
            if attempt == self.retries:
                raise ConnectionError(f"{url}: body cut short after {self.retries} retries")
            with self._lock:
                self.retried += 1
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")


def capture_time(key: str) -> dt.datetime | None:
    match = CAPTURE.search(key)
    if not match:
        return None
    try:
        return dt.datetime(*map(int, match.groups()))
    except ValueError:
        return None


def folder_outside(key: str, since: dt.date | None, until: dt.date | None) -> bool:
    """True when a folder like ``2014/`` or ``2014/05/`` or ``2014/05/31/`` lies wholly outside the dates."""
    match = DAY_PATH.search(key)
    if not match or not (since or until):
        return False
    year, month, day = (int(g) if g else None for g in match.groups())
    first = dt.date(year, month or 1, day or 1)
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


def crawl(start: str, fetcher: Fetcher, includes, excludes, since, until, errors: dict) -> list[Source]:
    """Breadth-first over the listings under ``start``; the files that pass the filters."""
    start = start if start.endswith("/") else start + "/"
    queue, seen, found = deque([start]), {start}, []
    while queue:
        folder = queue.popleft()
        try:
            page = fetcher.read(folder).decode("utf-8", "replace")
        except Exception as error:
            errors[folder] = describe(error)
            continue
        parser = LinkParser()
        parser.feed(page)
        for href in parser.links:
            url = urllib.parse.urljoin(folder, href).split("#", 1)[0]
            if "?" in url or not url.startswith(start) or url in seen:
                continue  # sort links, parents, other sites
            seen.add(url)
            key = urllib.parse.unquote(url[len(start):])
            if url.endswith("/"):
                if not folder_outside(key.rstrip("/"), since, until):
                    queue.append(url)
            elif wanted(key, includes, excludes, since, until):
                found.append(Source(url, key))
    return found


def describe(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return f"{type(error).__name__}: {error}"


class Destination:
    """Where copies go: an S3 prefix (multipart for big files) or a local folder."""

    def __init__(self, uri: str, endpoint_url: str | None):
        self.uri, self.store = uri, Store(endpoint_url)

    def existing_sizes(self) -> dict[str, int]:
        if is_s3(self.uri):
            bucket, prefix = split_s3(self.uri)
            prefix = prefix.rstrip("/") + "/" if prefix else ""
            sizes = {}
            for page in self.store.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                sizes.update({obj["Key"][len(prefix):]: obj["Size"] for obj in page.get("Contents", [])})
            return sizes
        if not os.path.isdir(self.uri):
            return {}
        return {name: os.path.getsize(join(self.uri, name)) for name in self.store.list(self.uri)}

    def put(self, key: str, data: bytes) -> None:
        if is_s3(self.uri):
            bucket, prefix = split_s3(join(self.uri, key))
            config = TransferConfig(multipart_threshold=64 * 1024 * 1024)
            self.store.s3.upload_fileobj(io.BytesIO(data), bucket, prefix, Config=config)
        else:
            self.store.write(join(self.uri, key), data)


def write_manifest(destination: Destination, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["key", "source_url", "bytes", "capture_time"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["key"]))
    destination.store.write(join(destination.uri, "manifest.csv"), buffer.getvalue().encode())


def ingest(args) -> int:
    source, target = args.source, check_uri(args.destination, "destination")
    if not source.startswith(("http://", "https://")):
        raise UserError(f"source={source!r}: give an http:// or https:// URL of a folder listing")
    since, until = parse_date(args.since, "--since"), parse_date(args.until, "--until")
    if since and until and since > until:
        raise UserError(f"--since {since} is after --until {until}")
    fetcher = Fetcher(RateLimit(args.rate), retries=args.retries, timeout=args.timeout, backoff=args.backoff)
    destination = Destination(target, args.endpoint_url)
    failed: dict[str, str] = {}
    print(f"listing {source} ...", file=sys.stderr, flush=True)
    files = crawl(source, fetcher, args.include, args.exclude, since, until, failed)
    present = destination.existing_sizes()

    manifest, todo = [], []
    for item in files:
        if item.key in present or args.dry_run:
            try:
                item.size = remote_size(fetcher, item.url)
            except Exception as error:
                failed[item.url] = describe(error)
                continue
        if item.key in present and present[item.key] == item.size:
            manifest.append(manifest_row(item))
        else:
            todo.append(item)

    if args.dry_run:
        for item in todo:
            print(f"would copy {item.key}  ({item.size} bytes)")
        total = sum(item.size or 0 for item in todo)
        print(f"dry run: {len(todo)} files ({total / 1e6:.1f} MB) to copy, {len(manifest)} already present, {len(failed)} listing errors")
        return 0

    copied_bytes = 0
    with tqdm(total=len(todo), unit="file", desc="copying", disable=args.quiet) as bar, ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(copy_one, fetcher, destination, item): item for item in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                item.size = future.result()
                copied_bytes += item.size
                manifest.append(manifest_row(item))
            except Exception as error:
                failed[item.url] = describe(error)
            bar.update(1)
            bar.set_postfix(MB=f"{copied_bytes / 1e6:.1f}", failed=len(failed))
    try:
        write_manifest(destination, manifest)
        manifest_error = None
    except Exception as error:
        manifest_error = error

    print(
        f"copied {len(todo) - sum(1 for i in todo if i.url in failed)} files ({copied_bytes / 1e6:.1f} MB), "
        f"{len(files) - len(todo)} already present, {len(failed)} failed, {fetcher.retried} retries; "
        f"manifest: {join(target, 'manifest.csv')}"
    )
    for url, reason in sorted(failed.items()):
        print(f"  failed: {url}  ({reason})")
    if manifest_error:
        raise UserError(f"writing {join(target, 'manifest.csv')} failed: {manifest_error}; the copied files are kept, rerun to finish")
    return 1 if failed else 0


def remote_size(fetcher: Fetcher, url: str) -> int | None:
    with fetcher.open(url, "HEAD") as response:
        length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def copy_one(fetcher: Fetcher, destination: Destination, item: Source) -> int:
    data = fetcher.read(item.url)
    destination.put(item.key, data)
    return len(data)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beholder.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="URL of the top folder listing")
    parser.add_argument("destination", help="s3://bucket/prefix or a local folder")
    parser.add_argument("--include", action="append", default=[], help="glob on the path (or file name); repeatable")
    parser.add_argument("--exclude", action="append", default=[], help="glob on the path (or file name); repeatable")
    parser.add_argument("--since", help="first capture date to copy, YYYY-MM-DD (from the path)")
    parser.add_argument("--until", help="last capture date to copy, YYYY-MM-DD")
    parser.add_argument("--dry-run", action="store_true", help="list what would be copied; copy nothing")
    parser.add_argument("--workers", type=int, default=8, help="concurrent downloads")
    parser.add_argument("--rate", type=float, default=20.0, help="at most this many requests per second")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible store (AWS_ENDPOINT_URL works too)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    with exit_on_user_error():
        return ingest(args)


if __name__ == "__main__":
    sys.exit(main())
