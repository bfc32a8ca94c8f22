import csv
import functools
import io
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from beholder.ingest import capture_time, folder_outside, main, wanted

CAPTURES = ["2015/12/31/2015_1231_120000", "2016/01/01/2016_0101_090000", "2016/01/01/2016_0101_091000",
            "2016/01/02/2016_0102_170000", "2016/02/10/2016_0210_080000"]


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
    expected = {f"panocam/{c}/thumbnail.jpg" for c in CAPTURES} | {"panocam/2016/01/01/2016_0101_093000/flaky_thumbnail.jpg", "panocam/manifest.csv"}
    assert keys == expected
    assert "failed: " + url + "2016/01/01/2016_0101_093000/missing_thumbnail.jpg  (HTTP 404" in out.out
    assert "broken_thumbnail.jpg  (HTTP 500" in out.out
    assert "2 failed" in out.out and "retries" in out.out
    manifest = read_manifest(client.get_object(Bucket=bucket, Key="panocam/manifest.csv")["Body"].read().decode())
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
    assert len(read_manifest((target / "manifest.csv").read_text())) == 5

    handler.down = True  # the site goes down: a clear failure, and nothing lost
    code, out = run([url, str(target), "--include", "thumbnail.jpg"], capsys)
    assert code == 1 and "HTTP 503" in out.out
    assert len(list(target.rglob("thumbnail.jpg"))) == 5


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


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ftp://example.org/x/", "/tmp/x"])
    assert exit_info.value.code == 2
    assert "source='ftp://example.org/x/': give an http:// or https:// URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["http://127.0.0.1:9/", "/tmp/x", "--since", "2016-13-01"])
    assert "--since '2016-13-01': give a date as YYYY-MM-DD" in capsys.readouterr().err
