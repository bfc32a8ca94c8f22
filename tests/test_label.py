import csv
import io
import os
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from beholder.cli import main as beholder_cli
from beholder.core.errors import UserError
from beholder.core.storage import Store
from beholder.data.scores import read_scored
from beholder.decisions.tournament import Tournament
from beholder.label.app import labeller_app, review_app
from beholder.label.export import export, ordinal_alpha

from conftest import CHROMIUM, running


@pytest.fixture
def panoramas(tmp_path):
    """16 small panoramas (and one photo) to label."""
    folder = tmp_path / "gallery"
    rng = np.random.default_rng(0)
    for i in range(16):
        (folder / f"day{i // 8}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 180, 3), dtype=np.uint8)).save(folder / f"day{i // 8}" / f"pano_{i:02d}.jpg")
    return folder


def client_for(panoramas, db, token=None, seed=0):
    tournament = Tournament(str(db), seed=seed)
    store = Store()
    tournament.sync_images(store.list(str(panoramas)))
    return TestClient(labeller_app(tournament, str(panoramas), store, "alice", token), base_url="http://127.0.0.1:8000"), tournament


def play(client, pick, rater="alice"):
    """Submit sets until none is left; ``pick(set)`` gives the ids that advance."""
    state = client.post("/api/next", params={"rater": rater}, json={}).json()
    while state["set"]:
        state = client.post("/api/submit", params={"rater": rater}, json={"set_id": state["set"]["id"], "advanced": pick(state["set"])}).json()
    return state


def test_rounds_feed_the_right_pools_and_tiers_follow(panoramas, tmp_path):
    client, tournament = client_for(panoramas, tmp_path / "labels.sqlite")
    shown_rounds = []

    def pick(shown):  # advance the first image of every set
        shown_rounds.append((shown["round"], [i["id"] for i in shown["images"]]))
        return [shown["images"][0]["id"]]

    state = play(client, pick)
    assert state["progress"]["labelled"] == 16
    round1 = [ids for r, ids in shown_rounds if r == 1]
    round2 = [ids for r, ids in shown_rounds if r == 2]
    assert sorted(i for ids in round1 for i in ids) == list(range(1, 17))  # every image once in round 1
    winners1 = {ids[0] for ids in round1}
    assert {i for ids in round2 for i in ids} == winners1  # round 2 is fed only round 1's winners
    tiers = tournament.tiers("alice")
    assert sum(1 for t, _ in tiers.values() if t >= 1) == 4 and sum(1 for t, _ in tiers.values() if t >= 2) == 1
    champion = next(i for i, (t, _) in tiers.items() if t >= 2)
    assert tiers[champion] == (3, 3)  # won rounds 1, 2 and 3 (alone in the last): tier 3, three matches
    assert all(m == 1 for i, (t, m) in tiers.items() if t == 0 and i not in winners1)


def test_undo_and_resume_after_restart(panoramas, tmp_path):
    db = tmp_path / "labels.sqlite"
    client, _ = client_for(panoramas, db)
    first = client.post("/api/next", json={}).json()["set"]
    second = client.post("/api/submit", json={"set_id": first["id"], "advanced": [first["images"][1]["id"]]}).json()["set"]
    again = client.post("/api/undo", json={}).json()["set"]
    assert [i["id"] for i in again["images"]] == [i["id"] for i in first["images"]]
    assert client.get("/api/state").json()["progress"]["judged_in_round"] == 0
    client.post("/api/submit", json={"set_id": again["id"], "advanced": []})
    shown = client.post("/api/next", json={}).json()["set"]
    del client  # the server "dies"; a new one on the same database resumes
    client, tournament = client_for(panoramas, db, seed=1)
    state = client.get("/api/state").json()
    assert state["set"]["id"] == shown["id"] and state["progress"]["judged_in_round"] == 4
    assert second["id"] != shown["id"]


def test_bad_ids_and_path_traversal_are_refused(panoramas, tmp_path):
    client, _ = client_for(panoramas, tmp_path / "labels.sqlite")
    shown = client.post("/api/next", json={}).json()["set"]
    outsider = next(i for i in range(1, 17) if i not in [x["id"] for x in shown["images"]])
    response = client.post("/api/submit", json={"set_id": shown["id"], "advanced": [outsider]})
    assert response.status_code == 409 and "not in set" in response.json()["detail"]
    assert client.post("/api/submit", json={"set_id": shown["id"] + 7, "advanced": []}).status_code == 409
    assert client.get("/image/999").status_code == 404
    for path in ("/image/../../etc/passwd", "/image/%2e%2e%2fetc%2fpasswd", "/image/day0%2Fpano_00.jpg"):
        assert client.get(path).status_code in (404, 422)
    picture = client.get(shown["images"][0]["url"])
    assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).width == 180


def test_token_required_beyond_localhost(panoramas, tmp_path):
    client, _ = client_for(panoramas, tmp_path / "labels.sqlite", token="s3cret")
    assert client.get("/api/state").status_code == 401
    assert client.get("/api/state", params={"token": "wrong"}).status_code == 401
    assert client.get("/api/state", params={"token": "s3cret"}).status_code == 200
    assert client.get("/image/1").status_code == 401


def test_export_matches_the_clicks_and_reports_agreement(panoramas, tmp_path, capsys):
    db = tmp_path / "labels.sqlite"
    client, tournament = client_for(panoramas, db)
    play(client, lambda s: [s["images"][0]["id"]], rater="alice")
    play(client, lambda s: [s["images"][0]["id"]], rater="bob")
    beholder_cli(["label", "export", "--db", str(db), "--out", str(tmp_path / "labels.csv")])
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert len(rows) == 16 and set(rows[0]) == {"image", "tier", "matches", "raters", "tier_mean", "tier_by_alice", "tier_by_bob"}
    alice = {tournament.key_of(i): t for i, (t, _) in tournament.tiers("alice").items()}
    assert {r["image"]: int(r["tier_by_alice"]) for r in rows} == alice
    assert all(r["raters"] == "2" for r in rows)
    assert "Krippendorff's alpha (ordinal)" in capsys.readouterr().out
    _, summary = export(tournament)
    assert summary["shared"] == 16 and summary["alpha"] is not None


def test_ordinal_alpha():
    assert ordinal_alpha([[0, 0], [1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert ordinal_alpha([[0, 3], [3, 0], [1, 2], [2, 1]]) < 0
    assert ordinal_alpha([[1]]) is None
    # Krippendorff (2011) worked example, interval-like ordinal data, is positive but below 1
    assert 0 < ordinal_alpha([[1, 1], [2, 2], [3, 3], [3, 3], [2, 2], [1, 2], [4, 4], [4, 3]]) < 1


@pytest.mark.browser
def test_labelling_in_a_real_browser(panoramas, tmp_path):
    """Headless Chromium through Playwright: keyboard and mouse over a few rounds."""
    from playwright.sync_api import sync_playwright

    db = tmp_path / "labels.sqlite"
    _, tournament = client_for(panoramas, db)
    with running(labeller_app(tournament, str(panoramas), Store(), "carol")) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/?rater=carol")
        page.wait_for_selector(".card img")
        assert page.locator("#round").inner_text() == "1"
        page.keyboard.press("1")
        page.keyboard.press("3")
        page.keyboard.press("3")  # toggled back off
        assert page.locator(".card.picked").count() == 1
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('rate').textContent.includes('of 4')")
        page.locator(".card").nth(1).click()
        page.locator(".card").nth(2).click()
        page.locator("#submit").click()
        page.wait_for_function("document.getElementById('rate').textContent.includes('of 8')")
        page.keyboard.press("Backspace")  # undo the mouse submission
        page.wait_for_function("document.getElementById('rate').textContent.includes('of 4')")
        page.keyboard.press("2")
        page.keyboard.press(" ")
        page.wait_for_function("document.getElementById('rate').textContent.includes('of 8')")
        assert page.locator("#rate").inner_text().startswith("25 %")
        shots = os.environ.get("BEHOLDER_SCREENSHOTS", str(tmp_path))
        os.makedirs(shots, exist_ok=True)
        page.screenshot(path=os.path.join(shots, "labeller.png"), full_page=True)
        browser.close()
    rows = sqlite3.connect(db).execute(
        "SELECT s.id, d.advanced FROM decisions d JOIN sets s ON s.id = d.set_id WHERE s.undone = 0 AND d.rater = 'carol' ORDER BY s.id, d.rowid").fetchall()
    assert len(rows) == 8
    first, second = rows[:4], rows[4:]
    assert [a for _, a in first] == [1, 0, 0, 0]  # key 1 picked, key 3 toggled off
    assert [a for _, a in second] == [0, 1, 0, 0]  # after the undo: key 2
    undone = sqlite3.connect(db).execute("SELECT COUNT(*) FROM sets WHERE undone = 1 AND submitted IS NOT NULL").fetchone()[0]
    assert undone == 1


# --- guarantees: transactions, concurrency, cross-site requests, stored targets, odd input -----------

@pytest.fixture
def many(tmp_path):
    """80 tiny images: enough sets for many clients."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(80):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.jpg")
    return folder


def honest_rater(base: str, name: str, sets: int = 15, timeout: float = 60) -> int:
    """Rater ``name`` submits ``sets`` sets on the labeller at ``base``, each the set on screen;
    returns how many were refused. (bench/faults.py uses it too.)"""
    import httpx

    refused, state = 0, httpx.post(f"{base}/api/next", params={"rater": name}, json={}, timeout=timeout).json()
    for _ in range(sets):
        answer = httpx.post(f"{base}/api/submit", params={"rater": name}, timeout=timeout,
                            json={"set_id": state["set"]["id"], "advanced": [state["set"]["images"][0]["id"]]})
        refused += answer.status_code != 200
        state = answer.json() if answer.status_code == 200 else state
    return refused


def count(db, sql):
    return sqlite3.connect(db).execute(sql).fetchone()[0]


@pytest.mark.parametrize("denied", [(sqlite3.SQLITE_UPDATE, "sets"), (sqlite3.SQLITE_INSERT, "decisions")])
def test_a_submission_that_dies_halfway_leaves_nothing(panoramas, tmp_path, denied):
    db = tmp_path / "labels.sqlite"
    client, tournament = client_for(panoramas, db)
    shown = client.post("/api/next", json={}).json()["set"]
    # the second write of the submission fails, as a kill there would stop it
    tournament.db.set_authorizer(lambda action, table, *_: sqlite3.SQLITE_DENY if (action, table) == denied else sqlite3.SQLITE_OK)
    with pytest.raises(sqlite3.DatabaseError):
        tournament.submit("alice", shown["id"], [shown["images"][0]["id"]])
    tournament.db.set_authorizer(None)
    assert count(db, "SELECT COUNT(*) FROM decisions") == 0
    assert tournament.open_set("alice").set_id == shown["id"]  # still open: the resubmission counts once
    client.post("/api/submit", json={"set_id": shown["id"], "advanced": [shown["images"][1]["id"]]})
    assert count(db, "SELECT COUNT(*) FROM decisions") == 4
    assert count(db, "SELECT COUNT(*) FROM decisions WHERE advanced = 1") == 1


@pytest.mark.slow
def test_ten_clients_at_once_count_each_submission_once(many, tmp_path):
    import httpx

    db = tmp_path / "labels.sqlite"
    tournament = Tournament(str(db), seed=0)
    tournament.sync_images(Store().list(str(many)))
    with running(labeller_app(tournament, str(many), Store(), "alice")) as base:
        # the same set posted by 10 clients at once, 20 times over: one of each 10 is accepted
        accepted = []
        state = httpx.post(f"{base}/api/next", json={}).json()
        for _ in range(20):
            body = {"set_id": state["set"]["id"], "advanced": [state["set"]["images"][0]["id"]]}
            barrier = threading.Barrier(10)

            def post(body=body, barrier=barrier):
                barrier.wait()
                return httpx.post(f"{base}/api/submit", json=body, timeout=30)

            with ThreadPoolExecutor(10) as pool:
                answers = list(pool.map(lambda _: post(), range(10)))
            accepted.append(sum(a.status_code == 200 for a in answers))
            assert {a.status_code for a in answers} <= {200, 409}
            state = next(a for a in answers if a.status_code == 200).json()
        assert accepted == [1] * 20
        assert count(db, "SELECT COUNT(*) FROM decisions") == 80
        assert count(db, "SELECT MAX(n) FROM (SELECT COUNT(*) n FROM decisions GROUP BY image_id, rater, round)") == 1

        # 10 raters working in parallel: every honest submission is accepted
        with ThreadPoolExecutor(10) as pool:
            assert list(pool.map(lambda name: honest_rater(base, name, timeout=30), [f"r{i}" for i in range(10)])) == [0] * 10
    assert count(db, "SELECT COUNT(*) FROM decisions WHERE rater LIKE 'r%'") == 600
    assert count(db, "SELECT COUNT(DISTINCT rater) FROM sets WHERE rater LIKE 'r%'") == 10


def test_cross_site_and_rebinding_requests_change_nothing(panoramas, tmp_path):
    db = tmp_path / "labels.sqlite"
    client, _ = client_for(panoramas, db)
    play(client, lambda s: [s["images"][0]["id"]])
    before = count(db, "SELECT COUNT(*) FROM sets"), count(db, "SELECT COUNT(*) FROM sets WHERE undone = 1")
    hostile = [
        {"headers": {"Origin": "http://evil.example"}, "json": {}},
        {"headers": {"Content-Type": "application/x-www-form-urlencoded"}, "content": b"a=1"},
        {"headers": {"Content-Type": "text/plain"}, "content": b"{}"},
        {"headers": {"Sec-Fetch-Site": "cross-site"}, "json": {}},
        {"headers": {"Host": "attacker.example:8000"}, "json": {}},
    ]
    for request in hostile:
        assert client.post("/api/undo", **request).status_code == 403
    assert client.get("/api/state", headers={"Host": "attacker.example:8000"}).status_code == 403
    for _ in range(5):  # reading the state writes nothing
        assert client.get("/api/state", params={"rater": "someone-new"}).status_code == 200
    assert (count(db, "SELECT COUNT(*) FROM sets"), count(db, "SELECT COUNT(*) FROM sets WHERE undone = 1")) == before
    assert client.post("/api/undo", json={}, headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200  # the page itself


def open_from_another_origin(page: bytes, then) -> None:
    """Serve ``page`` from another origin (another port, named localhost), open it in headless
    Chromium and call ``then(tab)`` before the browser closes. (bench/faults.py uses it too.)"""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from playwright.sync_api import sync_playwright

    class Attacker(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

    site = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            tab = browser.new_page()
            tab.goto(f"http://localhost:{site.server_address[1]}/")
            then(tab)
            browser.close()
    finally:
        site.shutdown()


@pytest.mark.browser
def test_a_page_on_another_origin_cannot_undo_in_a_real_browser(panoramas, tmp_path):
    db = tmp_path / "labels.sqlite"
    client, tournament = client_for(panoramas, db)
    play(client, lambda s: [s["images"][0]["id"]])
    labelled = tournament.progress("alice")["labelled"]
    with running(labeller_app(tournament, str(panoramas), Store(), "alice")) as base:
        attack = (f'<form method="POST" action="{base}/api/undo?rater=alice" enctype="text/plain">'
                  '<input name=\'{"x":"\' value=\'"}\'></form><script>'
                  f'for (let i = 0; i < 5; i++) fetch("{base}/api/undo?rater=alice", {{method: "POST", mode: "no-cors", body: "{{}}"}});'
                  'setTimeout(() => document.forms[0].submit(), 300);</script>').encode()
        open_from_another_origin(attack, lambda tab: tab.wait_for_url(f"{base}/api/undo?rater=alice", timeout=10000))  # the form did post
    assert tournament.progress("alice")["labelled"] == labelled
    assert count(db, "SELECT COUNT(*) FROM sets WHERE undone = 1") == 0


@pytest.mark.parametrize("targets, tiers", [("0.5,0.25", {0, 1, 2}), ("0.5,0.5,0.5,0.5", {0, 1, 2, 3})])
def test_any_number_of_rounds_exports_every_image_in_trainable_tiers(many, tmp_path, capsys, targets, tiers):
    from beholder.data.labels import parse_labels
    from beholder.label.cli import parse_targets

    db = tmp_path / "labels.sqlite"
    tournament = Tournament(str(db), parse_targets(targets), seed=0)
    tournament.sync_images(Store().list(str(many))[:40])
    client = TestClient(labeller_app(tournament, str(many), Store(), "alice"), base_url="http://127.0.0.1:8000")
    play(client, lambda s: [i["id"] for i in s["images"][: (len(s["images"]) + 1) // 2]])
    beholder_cli(["label", "export", "--db", str(db), "--out", str(tmp_path / "labels.csv")])
    text = (tmp_path / "labels.csv").read_text()
    labels = parse_labels(text, "labels.csv", None)  # what train.py reads
    assert len(labels) == 40 and {label.tier for label in labels} == tiers
    reopened = Tournament(str(db))  # the targets come from the database
    assert reopened.targets == parse_targets(targets)
    with pytest.raises(UserError, match="was labelled with --targets"):
        Tournament(str(db), [0.5, 0.1, 0.4])


def test_deleted_images_leave_the_pool_and_errors_name_no_server_path(panoramas, tmp_path):
    db = tmp_path / "labels.sqlite"
    client, tournament = client_for(panoramas, db)
    shown = client.post("/api/next", json={}).json()["set"]
    victim = shown["images"][0]
    (panoramas / tournament.key_of(victim["id"])).unlink()
    answer = client.get(victim["url"])
    assert answer.status_code == 404 and str(panoramas) not in answer.text
    gone = next(p for p in sorted(panoramas.rglob("*.jpg")) if p.name != "pano_00.jpg")
    gone.unlink()
    client, tournament = client_for(panoramas, db)  # a restart lists the gallery again
    state = play(client, lambda s: [])
    assert state["progress"]["pool"] == 14 and state["progress"]["labelled"] == 14
    beholder_cli(["label", "export", "--db", str(db), "--out", str(tmp_path / "labels.csv")])
    assert len(list(csv.DictReader(open(tmp_path / "labels.csv")))) == 14


def test_odd_requests_and_databases_get_clear_answers(panoramas, tmp_path, capsys):
    import hashlib

    client, _ = client_for(panoramas, tmp_path / "labels.sqlite", token="s3cret-ÿ")
    assert client.get("/api/state", params={"token": "x"}).status_code == 401  # a non-ASCII token is no 500
    assert client.get("/api/state", params={"token": "s3cret-ÿ"}).status_code == 200
    assert client.get("/openapi.json").status_code in (401, 404)
    client, _ = client_for(panoramas, tmp_path / "labels.sqlite")
    assert client.get("/image/99999999999999999999").status_code == 404
    assert client.get("/image/-1").status_code == 404

    play(client, lambda s: [s["images"][0]["id"]], rater="mean")
    beholder_cli(["label", "export", "--db", str(tmp_path / "labels.sqlite"), "--out", str(tmp_path / "labels.csv")])
    row = next(csv.DictReader(open(tmp_path / "labels.csv")))
    assert "tier_by_mean" in row and float(row["tier_mean"]) == int(row["tier_by_mean"])

    foreign = tmp_path / "catalog.sqlite"
    other = sqlite3.connect(foreign)
    other.execute("CREATE TABLE photos (id INTEGER, rating INTEGER)")
    other.commit()
    other.close()
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes((tmp_path / "labels.sqlite").read_bytes()[:1000])
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    for db, message in [(foreign, "not a beholder labeller database"), (truncated, "not a beholder labeller database"),
                        (corrupt, "not a readable SQLite database"),
                        (tmp_path, "is a folder"), (tmp_path / "nope.sqlite", "no such file")]:
        with pytest.raises(SystemExit) as exit_info:
            beholder_cli(["label", "export", "--db", str(db), "--out", str(tmp_path / "x.csv")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(UserError, match="not a beholder labeller database"):
        Tournament(str(foreign))
    assert hashlib.sha256(foreign.read_bytes()).hexdigest() == digest  # not switched to WAL, no tables added
    assert not os.path.exists(f"{foreign}-wal")


def test_export_only_reads_the_database(panoramas, tmp_path):
    import hashlib

    db = tmp_path / "labels.sqlite"
    client, tournament = client_for(panoramas, db)
    play(client, lambda s: [s["images"][0]["id"]])
    tournament.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    beholder_cli(["label", "export", "--db", str(db), "--out", str(tmp_path / "labels.csv")])
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        Tournament(str(db), read_only=True).db.execute("DELETE FROM images")


def test_a_review_database_holds_the_images_and_its_own_tables_not_a_tournaments(tmp_path, capsys):
    from beholder.decisions.review import Review

    review = Review(str(tmp_path / "review.sqlite"))
    review.load([{"image": "a.jpg", "score": 0.9, "band": "keep", "rank": 1}, {"image": "b.jpg", "score": 0.1, "band": "reject", "rank": 2}])
    assert {"images", "meta", "review_items", "reviews"} <= review.tables() and not {"sets", "decisions"} & review.tables()
    with pytest.raises(SystemExit) as stop:  # no decision yet: nothing to export, and no rounds to export instead
        beholder_cli(["label", "export", "--db", str(tmp_path / "review.sqlite"), "--out", str(tmp_path / "labels.csv")])
    assert stop.value.code == 2 and "holds no labelling rounds" in capsys.readouterr().err and not (tmp_path / "labels.csv").exists()
    review.decide("me", review.upcoming("me", 1)[0]["id"], keep=False)
    beholder_cli(["label", "export", "--db", str(tmp_path / "review.sqlite"), "--out", str(tmp_path / "labels.csv")])
    assert "a.jpg,0," in (tmp_path / "labels.csv").read_text()


def test_thumbnails_decode_each_image_once_and_few_at_a_time():
    from beholder.label.app import DECODES_AT_ONCE, Thumbnails

    active, most, reads = [0], [0], Counter()
    lock = threading.Lock()
    picture = io.BytesIO()
    Image.new("RGB", (2000, 1000)).save(picture, "PNG")

    def read(key):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            reads[key] += 1
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return picture.getvalue()

    thumbnails = Thumbnails(read)
    with ThreadPoolExecutor(10) as pool:
        sizes = list(pool.map(lambda i: len(thumbnails.get(f"img{i % 5}")), range(40)))
    assert most[0] <= DECODES_AT_ONCE and reads == {f"img{i}": 1 for i in range(5)}
    assert Image.open(io.BytesIO(thumbnails.get("img0"))).size == (900, 450) and min(sizes) > 0


@pytest.mark.browser
def test_more_like_this_key_shows_the_nearest_images(panoramas, trained, tmp_path):
    """--index: GET /api/similar/ID answers the gallery's nearest images by embedding; key M shows them."""
    from playwright.sync_api import sync_playwright

    from beholder.predict.run import predict
    from beholder.search.neighbours import Neighbours

    from conftest import compose_predict

    ckpt, _ = trained
    (panoramas / "day0" / "twin.jpg").write_bytes((panoramas / "day0" / "pano_03.jpg").read_bytes())
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={panoramas}", f"output={tmp_path}/scored"]))
    client, tournament = client_for(panoramas, tmp_path / "labels.sqlite")
    assert client.get("/api/similar/1").status_code == 404 and "--scored" in client.get("/api/similar/1").json()["detail"]
    neighbours = Neighbours.load(Store(), str(tmp_path / "scored"))
    ids = {key: i for i, key in tournament.keys().items()}
    app = labeller_app(tournament, str(panoramas), Store(), "carol", neighbours=neighbours)
    api = TestClient(app, base_url="http://127.0.0.1:8000")
    found = api.get(f"/api/similar/{ids['day0/pano_03.jpg']}", params={"k": 5}).json()["images"]
    assert len(found) == 5 and found[0]["id"] == ids["day0/twin.jpg"] and found[0]["similarity"] > 0.999
    assert [f["similarity"] for f in found] == sorted((f["similarity"] for f in found), reverse=True)
    assert api.get("/api/similar/999").status_code == 404

    with running(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/?rater=carol")
        page.wait_for_selector(".card img")
        page.locator(".card").nth(2).hover()
        page.keyboard.press("m")
        page.wait_for_selector("#similar:not([hidden]) figure img")
        hovered = int(page.locator(".card").nth(2).get_attribute("data-id"))
        expected = [f["id"] for f in api.get(f"/api/similar/{hovered}").json()["images"]]
        shown = [int(i) for i in page.locator("#similar figure").evaluate_all("fs => fs.map(f => f.dataset.id)")]
        assert shown == expected and len(shown) == 12 and "image 3" in page.locator("#similar-title").inner_text()
        page.keyboard.press("Escape")
        assert page.locator("#similar").is_hidden() and page.locator(".card.picked").count() == 0
        browser.close()


@pytest.mark.browser
def test_reviewing_a_models_decisions_in_a_real_browser(panoramas, trained, tmp_path, capsys):
    """label review: kept best first, then the review band, then the rejected; K / R / Backspace; export gives labels."""
    from playwright.sync_api import sync_playwright

    from beholder.decisions.review import Review, read_decisions
    from beholder.predict.run import predict

    from conftest import compose_predict

    ckpt, _ = trained
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={panoramas}", f"output={tmp_path}/scored", "keep_top=0.25"]))
    decisions = read_decisions(read_scored(Store(), str(tmp_path / "scored")), "best")
    assert [d["band"] for d in decisions] == ["keep"] * 4 + ["reject"] * 12 and [d["rank"] for d in decisions] == list(range(1, 17))
    db = tmp_path / "review.sqlite"
    review = Review(str(db))
    review.load(decisions)
    api = TestClient(review_app(review, str(panoramas), Store(), "dora"), base_url="http://127.0.0.1:8000")
    state = api.get("/api/review/state").json()
    ids = {key: i for i, key in review.keys().items()}
    assert state["item"]["id"] == ids[decisions[0]["image"]] and state["progress"] == {"total": 16, "decided": 0, "agreed": 0}
    assert api.post("/api/review/decide", json={"image_id": 10**6, "keep": True}).status_code == 409

    with running(review_app(review, str(panoramas), Store(), "dora")) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/?rater=dora")
        page.wait_for_function("document.getElementById('image').dataset.id")
        for key, decided in [("k", 1), ("r", 2), ("k", 3), ("Backspace", 2), ("r", 3)]:
            page.keyboard.press(key)
            page.wait_for_function(f"document.getElementById('decided').textContent === '{decided}'")
        assert page.locator("#agreed").inner_text() == "33 %" and "rank 4" in page.locator("#model").inner_text()
        browser.close()
    rows = sqlite3.connect(db).execute("SELECT image_id, keep, undone FROM reviews WHERE rater = 'dora' ORDER BY id").fetchall()
    first = [ids[d["image"]] for d in decisions[:3]]
    assert rows == [(first[0], 1, 0), (first[1], 0, 0), (first[2], 1, 1), (first[2], 0, 0)]

    again = Review(str(db))  # a restart: the decisions stay, the queue goes on where it was
    again.load(decisions)
    assert again.next_item("dora")["id"] == ids[decisions[3]["image"]]
    beholder_cli(["label", "export", "--db", str(db), "--out", str(tmp_path / "mine.csv")])
    with open(tmp_path / "mine.csv") as f:
        exported = {row["image"]: row for row in csv.DictReader(f)}
    assert {image: (row["tier"], row["rating"], row["agreed"]) for image, row in exported.items()} == {
        decisions[0]["image"]: ("2", "1", "true"), decisions[1]["image"]: ("0", "0", "false"), decisions[2]["image"]: ("0", "0", "false")}
    assert "wrote 3 reviewed images" in capsys.readouterr().out


@pytest.mark.browser
def test_the_review_loop_asks_the_least_certain_first_skips_rated_photos_and_shows_each_large(trained, photos, tmp_path, served, capsys):
    from playwright.sync_api import sync_playwright

    from beholder.predict.run import predict

    from conftest import compose_predict, sidecar

    ckpt, _ = trained
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/scored", "keep_top=0.25"]))
    scores = {row["image"]: row for row in csv.DictReader(open(tmp_path / "scored" / "scores.csv"))}
    mine = sorted(scores)[:3]  # the photographer rated these already: two in sidecars, one in the labels predict was given
    for image in mine[:2]:
        (photos / (image + ".xmp")).write_bytes(sidecar('xmp:Rating="4"'))
    scores[mine[2]]["reason"] = "rated"
    with open(tmp_path / "scored" / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(scores[mine[2]]))
        writer.writeheader()
        writer.writerows(scores.values())
    beholder_cli(["review", "--scored", str(tmp_path / "scored" / "scores.csv"), "--gallery", str(photos), "--db", str(tmp_path / "r.sqlite")])
    assert "3 photos you rated yourself are not asked about" in capsys.readouterr().out and "least certain" in served["what"]
    review = served["review"]
    assert set(review.keys().values()) == set(scores) - set(mine)
    queue = [item["image"] for item in review.upcoming("me", 100)]
    lowest_kept = max((r for r in scores.values() if r["band"] == "keep" and r["image"] not in mine), key=lambda r: int(r["rank"]))
    highest_rejected = min((r for r in scores.values() if r["band"] == "reject" and r["image"] not in mine), key=lambda r: int(r["rank"]))
    assert set(queue[:2]) == {lowest_kept["image"], highest_rejected["image"]}  # the two nearest the cut come first

    with running(served["app"]) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/?rater=me")
        page.wait_for_function("document.getElementById('image').complete && document.getElementById('image').dataset.id")
        box = page.locator("#image").bounding_box()
        assert box["width"] > 1300 and box["height"] > 600  # the whole window's width, not a 460 px thumbnail
        assert page.locator("#name").inner_text() == queue[0] and page.locator("#stars").inner_text() == "no stars"
        assert page.locator("#strip img").count() == 8
        page.keyboard.press("z")
        page.wait_for_function("document.getElementById('full').complete && document.getElementById('full').naturalWidth > 0")
        assert page.locator("#zoom").is_visible() and page.evaluate("document.getElementById('full').naturalWidth") == 64  # every pixel
        page.keyboard.press("Escape")
        assert page.locator("#zoom").is_hidden()
        page.keyboard.press("k")
        page.wait_for_function("document.getElementById('decided').textContent === '1'")
        assert page.locator("#name").inner_text() == queue[1]
        browser.close()
