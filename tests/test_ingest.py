import csv
import functools
import io
import os
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from beholder.data.ingest import capture_time, folder_outside, main, wanted

from conftest import CAPTURES


class FaultyHandler(SimpleHTTPRequestHandler):
    """Autoindex-style listings of a folder, with faults: paths containing 'missing' answer 404,
    'broken' 500 every time, 'flaky' 503 twice before answering; ``down`` makes every request 503."""

    hits: Counter
    down = False

    def log_message(self, *args):
        pass

    def send_head(self):
        type(self).hits[(self.command, self.path)] += 1
        if type(self).down:
            self.send_error(503, "down for maintenance")
            return None
        if "missing" in self.path:
            self.send_error(404)
            return None
        if "broken" in self.path:
            self.send_error(500)
            return None
        if "flaky" in self.path and type(self).hits[(self.command, self.path)] <= 2:
            self.send_error(503, "Slow Down")
            return None
        return super().send_head()


@pytest.fixture
def site(tmp_path):
    """A webcam archive: per capture a thumbnail and two slices; plus faulty files."""
    root = tmp_path / "site" / "assets"
    for capture in CAPTURES:
        folder = root / capture
        folder.mkdir(parents=True)
        (folder / "thumbnail.jpg").write_bytes(b"\xff\xd8" + capture.encode() * 50)
        for i in (1, 2):
            (folder / f"slice_{i:02d}.jpg").write_bytes(b"\xff\xd8" + bytes(1000 * i))
    extra = root / "2016" / "01" / "01" / "2016_0101_093000"
    extra.mkdir()
    for name in ("missing_thumbnail.jpg", "broken_thumbnail.jpg", "flaky_thumbnail.jpg"):
        (extra / name).write_bytes(b"\xff\xd8" + name.encode())
    handler = type("Handler", (FaultyHandler,), {"hits": Counter(), "down": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path / "site")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/assets/", handler
    server.shutdown()


def run(args, capsys):
    code = main([*args, "--quiet", "--backoff", "0.01", "--retries", "3", "--rate", "0"])
    return code, capsys.readouterr()


def read_manifest(text):
    return {row["key"]: row for row in csv.DictReader(io.StringIO(text))}


def test_mirror_into_s3_with_filters_retries_and_failures(site, s3_bucket, s3_endpoint, capsys):
    url, handler = site
    client, bucket = s3_bucket
    code, out = run([url, f"s3://{bucket}/panocam/", "--include", "*thumbnail.jpg", "--endpoint-url", s3_endpoint], capsys)
    assert code == 1  # some files failed: reported, not fatal
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    expected = {f"panocam/{c}/thumbnail.jpg" for c in CAPTURES} | {"panocam/2016/01/01/2016_0101_093000/flaky_thumbnail.jpg", "panocam/beholder-manifest.csv"}
    assert keys == expected
    assert "failed: " + url + "2016/01/01/2016_0101_093000/missing_thumbnail.jpg  (HTTP 404" in out.out
    assert "broken_thumbnail.jpg  (HTTP 500" in out.out
    assert "2 failed or refused" in out.out and "retries" in out.out
    manifest = read_manifest(client.get_object(Bucket=bucket, Key="panocam/beholder-manifest.csv")["Body"].read().decode())
    row = manifest["2016/01/02/2016_0102_170000/thumbnail.jpg"]
    assert row["capture_time"] == "2016-01-02T17:00:00" and row["source_url"].startswith(url)
    assert int(row["bytes"]) == client.head_object(Bucket=bucket, Key="panocam/" + row["key"])["ContentLength"]
    assert handler.hits[("GET", "/assets/2016/01/01/2016_0101_093000/flaky_thumbnail.jpg")] == 3


def test_rerun_after_an_outage_copies_only_what_is_missing(site, tmp_path, capsys):
    url, handler = site
    target = tmp_path / "mirror"
    run([url, str(target), "--include", "thumbnail.jpg", "--until", "2016-01-01"], capsys)  # the first three
    assert len(list(target.rglob("thumbnail.jpg"))) == 3
    (target / CAPTURES[0] / "thumbnail.jpg").write_bytes(b"cut short")  # a file left half-written
    handler.hits.clear()
    code, out = run([url, str(target), "--include", "thumbnail.jpg"], capsys)
    assert code == 0
    gets = {path for (method, path), _ in handler.hits.items() if method == "GET" and path.endswith(".jpg")}
    assert gets == {f"/assets/{c}/thumbnail.jpg" for c in (CAPTURES[0], CAPTURES[3], CAPTURES[4])}
    assert "copied 3 files" in out.out and "2 already present" in out.out
    assert len(read_manifest((target / "beholder-manifest.csv").read_text())) == 5

    handler.down = True  # the site goes down: a clear failure, and nothing lost
    code, out = run([url, str(target), "--include", "thumbnail.jpg"], capsys)
    assert code == 1 and "HTTP 503" in out.out
    assert len(list(target.rglob("thumbnail.jpg"))) == 5


def test_since_after_until_keeps_both_runs_in_the_manifest(site, tmp_path, capsys):
    url, _ = site
    target = tmp_path / "mirror"
    run([url, str(target), "--include", "thumbnail.jpg", "--until", "2016-01-01"], capsys)
    code, out = run([url, str(target), "--include", "thumbnail.jpg", "--since", "2016-01-02"], capsys)
    assert code == 0 and "(5 files)" in out.out
    assert set(read_manifest((target / "beholder-manifest.csv").read_text())) == {f"{c}/thumbnail.jpg" for c in CAPTURES}


class Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default backlog of 5 drops a connect of ingest's 8 workers now and then: 1 s to retry, past --deadline 1


def serve(handler):
    server = Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Elsewhere(BaseHTTPRequestHandler):
    """Another site: counts what is asked of it."""

    hits: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"stolen"[:5])

    do_HEAD = do_GET


def hostile_archive(escape_name: str, elsewhere: str):
    """An archive whose listings try to write outside the mirror, redirect to another site, dribble,
    nest forever, use week-numbered and run-together date folders, and carry a file named like
    beholder's manifest."""
    listings = {
        "/archive/": [f"%2e%2e/%2e%2e/{escape_name}", f"..%2F{escape_name}", f"%2Ftmp%2F{escape_name}", f"ok%5C..%5C{escape_name}",
                      "moved.jpg", "inside.jpg", "with space.jpg", "slow.jpg", "deep/", "2019/", "beholder-manifest.csv", "manifest.csv", "ok/"],
        "/archive/ok/": ["real.jpg"],
        "/archive/2019/": ["52/", "0612/"],
        "/archive/2019/52/": ["2019_1225_120000_thumb.jpg"],
        "/archive/2019/0612/": ["2019_0612_101000_thumb.jpg"],
    }

    class Hostile(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def body(self, data: bytes, status=200, headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        def do_GET(self):
            path = self.path
            if path in listings or path.startswith("/archive/deep/"):
                links = listings.get(path, ["deep/"])
                self.body("".join(f'<a href="{link}">{link}</a>' for link in links).encode())
            elif path == "/archive/moved.jpg":
                self.body(b"", 302, [("Location", f"{elsewhere}/secret.jpg")])
            elif path == "/archive/inside.jpg":
                self.body(b"", 302, [("Location", "/archive/ok/real.jpg")])
            elif path == "/archive/slow.jpg":
                self.send_response(200)
                self.send_header("Content-Length", "400")
                self.end_headers()
                try:
                    for _ in range(400):  # a byte every 50 ms: each read is quick, the whole never ends in time
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass
            elif path.endswith(".jpg") or path.endswith(".csv"):
                self.body(b"\xff\xd8" + path.encode())
            else:
                self.body(b"", 404)

        do_HEAD = do_GET

    return Hostile


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_hostile_archive_cannot_write_outside_or_fetch_elsewhere(tmp_path, capsys, dry_run):
    escape_name = f"beholder-escape-{uuid.uuid4().hex}.jpg"
    Elsewhere.hits = []
    other, elsewhere = serve(Elsewhere)
    archive, base = serve(hostile_archive(escape_name, elsewhere))
    target = tmp_path / "a" / "b" / "mirror"
    target.mkdir(parents=True)
    (target / "dangling").symlink_to(tmp_path / "gone")  # a dangling link in the destination
    try:
        code, out = run([f"{base}/archive/", str(target), "--max-depth", "4", "--deadline", "1",
                         "--timeout", "5", "--retries", "1", *(["--dry-run"] if dry_run else [])], capsys)
        # week-numbered (2019/52) and run-together (2019/0612) folders are crawled, not a crash or a silent skip
        dated_code, dated = run([f"{base}/archive/2019/", str(target / "2019"), "--since", "2019-01-01", *(["--dry-run"] if dry_run else [])], capsys)
    finally:
        archive.shutdown()
        other.shutdown()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and target not in p.parents]
    assert outside == [] and not os.path.exists(f"/tmp/{escape_name}")
    assert Elsewhere.hits == []  # the redirect to another site was refused, not followed
    assert out.out.count("would leave the destination") == 4
    assert f"moved.jpg  (refused: redirect to {elsewhere}/secret.jpg is outside {base}/archive/)" in out.out
    assert "deeper than --max-depth 4" in out.out and "beholder-manifest.csv is beholder's own" in out.out
    assert "would copy /" not in out.out and "Traceback" not in out.err
    assert dated_code == 0 and "Traceback" not in dated.err
    if dry_run:
        assert code == 0 and not (target / "ok").exists()
        for key in ("inside.jpg", "with space.jpg", "ok/real.jpg", "manifest.csv", "2019/52/2019_1225_120000_thumb.jpg",
                    "2019/0612/2019_0612_101000_thumb.jpg"):
            assert f"would copy {key.removeprefix('2019/')}  (" in (dated.out if key.startswith("2019") else out.out)
        return
    assert code == 1 and "slow.jpg  (DeadlineExceeded: not finished within --deadline 1 s)" in out.out
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == ["2019/0612/2019_0612_101000_thumb.jpg", "2019/52/2019_1225_120000_thumb.jpg", "2019/beholder-manifest.csv",
                      "beholder-manifest.csv", "inside.jpg", "manifest.csv", "ok/real.jpg", "with space.jpg"]
    assert (target / "manifest.csv").read_bytes() == b"\xff\xd8/archive/manifest.csv"  # the archive's own file, not ours
    assert (target / "inside.jpg").read_bytes() == b"\xff\xd8/archive/ok/real.jpg"  # a redirect inside the archive is fine
    assert set(read_manifest((target / "beholder-manifest.csv").read_text())) == set(copied) - {"beholder-manifest.csv", "2019/beholder-manifest.csv"}


def test_the_crawl_stops_at_max_pages(tmp_path, capsys):
    other, elsewhere = serve(Elsewhere)
    archive, base = serve(hostile_archive("x.jpg", elsewhere))
    try:
        code, out = run([f"{base}/archive/", str(tmp_path / "mirror"), "--max-pages", "2", "--dry-run"], capsys)
    finally:
        archive.shutdown()
        other.shutdown()
    assert code == 0 and out.out.count("beyond --max-pages 2") == 1 and "nor 2 more listings" in out.out


def test_dry_run_copies_nothing(site, tmp_path, capsys):
    url, _ = site
    code, out = run([url, str(tmp_path / "mirror"), "--include", "slice_*.jpg", "--since", "2016-01-02", "--dry-run"], capsys)
    assert code == 0
    assert not (tmp_path / "mirror").exists()
    assert out.out.count("would copy") == 4
    assert "dry run: 4 files (0.0 MB) to copy" in out.out
    assert "2016/02/10/2016_0210_080000/slice_02.jpg  (2002 bytes)" in out.out


def test_date_filters_and_globs():
    assert capture_time("2016/01/02/2016_0102_170000/thumbnail.jpg").isoformat() == "2016-01-02T17:00:00"
    import datetime as dt

    since, until = dt.date(2016, 1, 1), dt.date(2016, 1, 31)
    assert folder_outside("2015", since, until) and folder_outside("2016/02", since, until)
    assert not folder_outside("2016", since, until) and not folder_outside("2016/01/31", since, until)
    assert wanted("2016/01/02/2016_0102_170000/thumbnail.jpg", ["thumbnail.jpg"], [], since, until)
    assert not wanted("2016/01/02/2016_0102_170000/slice_01.jpg", ["thumbnail.jpg"], [], since, until)
    assert not wanted("2016/01/02/2016_0102_170000/thumbnail.jpg", [], ["2016/01/02/*"], None, None)
    assert not wanted("2016/03/02/2016_0302_170000/thumbnail.jpg", [], [], since, until)
    # a week-numbered folder and a run-together month/day are not date folders: they are crawled
    assert not folder_outside("2019/52", since, until) and not folder_outside("2019/0612", since, until)


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ftp://example.org/x/", "/tmp/x"])
    assert exit_info.value.code == 2
    assert "source='ftp://example.org/x/': give an http:// or https:// URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["http://127.0.0.1:9/", "/tmp/x", "--since", "2016-13-01"])
    assert "--since '2016-13-01': give a date as YYYY-MM-DD" in capsys.readouterr().err
