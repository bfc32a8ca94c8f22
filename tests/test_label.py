import csv
import io
import os
import socket
import sqlite3
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from beholder.label import create_app, main
from beholder.label_export import export, ordinal_alpha
from beholder.storage import Store
from beholder.tournament import Tournament


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
    tournament.add_images(store.list(str(panoramas)))
    return TestClient(create_app(tournament, str(panoramas), store, "alice", token)), tournament


def play(client, pick, rater="alice"):
    """Submit sets until none is left; ``pick(set)`` gives the ids that advance."""
    state = client.get("/api/state", params={"rater": rater}).json()
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
    first = client.get("/api/state").json()["set"]
    second = client.post("/api/submit", json={"set_id": first["id"], "advanced": [first["images"][1]["id"]]}).json()["set"]
    again = client.post("/api/undo").json()["set"]
    assert [i["id"] for i in again["images"]] == [i["id"] for i in first["images"]]
    assert client.get("/api/state").json()["progress"]["judged_in_round"] == 0
    client.post("/api/submit", json={"set_id": again["id"], "advanced": []})
    shown = client.get("/api/state").json()["set"]
    del client  # the server "dies"; a new one on the same database resumes
    client, tournament = client_for(panoramas, db, seed=1)
    state = client.get("/api/state").json()
    assert state["set"]["id"] == shown["id"] and state["progress"]["judged_in_round"] == 4
    assert second["id"] != shown["id"]


def test_bad_ids_and_path_traversal_are_refused(panoramas, tmp_path):
    client, _ = client_for(panoramas, tmp_path / "labels.sqlite")
    shown = client.get("/api/state").json()["set"]
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
    main(["export", "--db", str(db), "--out", str(tmp_path / "labels.csv")])
    rows = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert len(rows) == 16 and set(rows[0]) == {"image", "tier", "matches", "raters", "tier_mean", "tier_alice", "tier_bob"}
    alice = {tournament.key_of(i): t for i, (t, _) in tournament.tiers("alice").items()}
    assert {r["image"]: int(r["tier_alice"]) for r in rows} == alice
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it)")
def test_labelling_in_a_real_browser(panoramas, tmp_path):
    """Headless Chromium through Playwright: keyboard and mouse over a few rounds."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    db = tmp_path / "labels.sqlite"
    _, tournament = client_for(panoramas, db)
    app = create_app(tournament, str(panoramas), Store(), "carol")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/?rater=carol")
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
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    rows = sqlite3.connect(db).execute(
        "SELECT s.id, d.advanced FROM decisions d JOIN sets s ON s.id = d.set_id WHERE s.undone = 0 AND d.rater = 'carol' ORDER BY s.id, d.rowid").fetchall()
    assert len(rows) == 8
    first, second = rows[:4], rows[4:]
    assert [a for _, a in first] == [1, 0, 0, 0]  # key 1 picked, key 3 toggled off
    assert [a for _, a in second] == [0, 1, 0, 0]  # after the undo: key 2
    undone = sqlite3.connect(db).execute("SELECT COUNT(*) FROM sets WHERE undone = 1 AND submitted IS NOT NULL").fetchone()[0]
    assert undone == 1
