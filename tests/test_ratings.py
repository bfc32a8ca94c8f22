"""python -m beholder.ratings: ratings in from sidecars and catalogues, decisions out as merged XMP."""

import hashlib
import shutil
import sqlite3
import xml.etree.ElementTree as ET

import pytest

from beholder.predict.run import predict
from beholder.ratings.cli import main
from beholder.ratings.xmp import NAMESPACES, read_rating, sidecar_targets, star_rating, xmp_sidecar

from conftest import compose_predict, labels, photo, rated_photos, read_scores, sidecar


def test_beholder_sets_a_rating_only_where_the_photographer_set_none():
    fields = lambda packet: {k: v for k, v in read_rating(packet).items() if k != "set_by_beholder"}  # noqa: E731
    fresh = xmp_sidecar(5, "keep", 0.9, stars=True)
    assert fields(fresh) == {"rating": 5, "label": "Green", "pick": 3}
    updated = xmp_sidecar(1, "reject", 0.1, fresh, stars=True)  # its own earlier rating: updated
    assert fields(updated) == {"rating": 1, "label": "Red", "pick": 1}
    labelled = sidecar('crs:Exposure2012="+0.35"', "<xmp:Label>Blue</xmp:Label>")
    merged = xmp_sidecar(1, "reject", 0.1, labelled, stars=True)
    assert fields(merged) == {"rating": 1, "label": "Blue", "pick": 1}  # the unset rating and pick are beholder's
    assert b'crs:Exposure2012="+0.35"' in merged and b"beholder:Band=\"reject\"" in merged
    touched = merged.replace(b'digiKam:PickLabel="1"', b'digiKam:PickLabel="3"')  # the photographer accepts it
    assert fields(xmp_sidecar(1, "reject", 0.1, touched, stars=True))["pick"] == 3  # ... and it stays theirs
    hand = sidecar('xmp:Rating="5" crs:Exposure2012="+0.35"')  # rated by the photographer: their verdict, not beholder's
    assert fields(xmp_sidecar(1, "reject", 0.1, hand, stars=True)) == {"rating": 5, "label": "", "pick": None}
    assert b"beholder:Band=\"reject\"" in xmp_sidecar(1, "reject", 0.1, hand, stars=True)  # what beholder thought is still there
    rated_later = fresh.replace(b'xmp:Rating="5"', b'xmp:Rating="2"')  # they rate a photo beholder had kept
    assert fields(xmp_sidecar(3, "keep", 0.8, rated_later, stars=True)) == {"rating": 2, "label": "", "pick": None}
    assert fields(xmp_sidecar(2, "review", 0.4, hand, overwrite_ratings=True, stars=True)) == {"rating": 2, "label": "Yellow", "pick": 0}


def test_by_default_beholder_writes_no_stars_and_takes_back_those_it_wrote():
    fields = lambda packet: {k: v for k, v in read_rating(packet).items() if k != "set_by_beholder"}  # noqa: E731
    fresh = xmp_sidecar(5, "keep", 0.9)
    assert fields(fresh) == {"rating": None, "label": "Green", "pick": 3}  # a star filter shows the photographer's stars only
    earlier = xmp_sidecar(5, "keep", 0.9, stars=True)  # a sidecar of a run that wrote stars
    assert fields(xmp_sidecar(4, "keep", 0.8, earlier)) == {"rating": None, "label": "Green", "pick": 3}
    theirs = sidecar('xmp:Rating="3"')
    assert fields(xmp_sidecar(5, "keep", 0.9, theirs))["rating"] == 3


def test_a_captions_line_ends_survive_every_write():
    caption = '<dc:description xmlns:dc="http://purl.org/dc/elements/1.1/"><rdf:Alt><rdf:li xml:lang="x-default">'
    theirs = sidecar("", caption + "Tom&#13;and Ann&#13;&#10;2024</rdf:li></rdf:Alt></dc:description>")
    twice = xmp_sidecar(1, "reject", 0.2, xmp_sidecar(3, "keep", 0.5, theirs))
    text = ET.fromstring(twice.split(b"?>", 1)[1].rsplit(b"<?", 1)[0]).find(".//{%s}li" % NAMESPACES["rdf"]).text
    assert text == "Tom\rand Ann\r\n2024"  # as the photographer's tool wrote it, not a line feed for each CR


def test_import_sidecars_and_embedded_xmp(tmp_path, capsys):
    root = tmp_path / "Pictures"
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "trip/f.jpg", "trip/g.jpg"]):
        photo(root / name, i)
    (root / "a.xmp").write_bytes(sidecar('xmp:Rating="5"'))
    (root / "b.xmp").write_bytes(sidecar(elements="<xmp:Rating>4</xmp:Rating>"))
    (root / "c.xmp").write_bytes(sidecar('xmp:Rating="2" digiKam:PickLabel="1"'))  # rejected by its pick
    (root / "d.xmp").write_bytes(sidecar('xmp:Rating="0"'))  # unrated
    (root / "e.xmp").write_text("my notes, not XMP")
    (root / "trip" / "f.jpg.xmp").write_bytes(sidecar('xmp:Rating="-1"'))
    (root / "gone.xmp").write_bytes(sidecar('xmp:Rating="3"'))  # its photo was deleted
    photo(root / "trip" / "g.jpg", 9, xmp=sidecar('xmp:Rating="3"'))  # XMP inside the JPEG
    before = {p: p.read_bytes() for p in root.rglob("*")  if p.is_file()}
    main(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "labels.csv"), "--unrated", str(tmp_path / "unrated.txt")])
    rows = labels(tmp_path / "labels.csv")
    assert {image: (int(r["tier"]), int(r["rating"])) for image, r in rows.items()} == {
        "a.jpg": (3, 5), "b.jpg": (2, 4), "c.jpg": (0, -1), "trip/f.jpg": (0, -1), "trip/g.jpg": (1, 3)}
    assert (tmp_path / "unrated.txt").read_text() == "d.jpg\n"
    printed = capsys.readouterr().out
    assert "no longer there 1" in printed and "gone" in printed and "e.xmp: not XML" in printed
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing written there
    with pytest.raises(SystemExit):
        main(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])  # never replaced silently
    main(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "strict.csv"), "--tiers", "reject:0,5:3,4:3,3:1"])
    assert {image: int(r["tier"]) for image, r in labels(tmp_path / "strict.csv").items()} == {
        "a.jpg": 3, "b.jpg": 3, "c.jpg": 0, "trip/f.jpg": 0, "trip/g.jpg": 1}


def lightroom_catalogue(path, root):
    """The tables and columns of a Lightroom Classic catalogue that ratings are read from."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE AgLibraryRootFolder (id_local INTEGER PRIMARY KEY, absolutePath TEXT, name TEXT);
        CREATE TABLE AgLibraryFolder (id_local INTEGER PRIMARY KEY, pathFromRoot TEXT, rootFolder INTEGER);
        CREATE TABLE AgLibraryFile (id_local INTEGER PRIMARY KEY, baseName TEXT, extension TEXT, folder INTEGER, idx_filename TEXT);
        CREATE TABLE Adobe_images (id_local INTEGER PRIMARY KEY, rootFile INTEGER, rating REAL, pick REAL, colorLabels TEXT);
    """)
    db.execute("INSERT INTO AgLibraryRootFolder VALUES (1, ?, 'Pictures')", (str(root) + "/",))
    db.execute("INSERT INTO AgLibraryRootFolder VALUES (2, '/elsewhere/', 'Old drive')")
    db.execute("INSERT INTO AgLibraryFolder VALUES (1, '', 1), (2, 'trip/', 1), (3, '', 2)")
    files = [(1, "a", "jpg", 1), (2, "b", "jpg", 1), (3, "c", "jpg", 1), (4, "f", "jpg", 2), (5, "gone", "jpg", 1), (6, "x", "jpg", 3)]
    db.executemany("INSERT INTO AgLibraryFile VALUES (?, ?, ?, ?, ? || '.' || ?)", [(i, b, e, f, b, e) for i, b, e, f in files])
    db.executemany("INSERT INTO Adobe_images VALUES (?, ?, ?, ?, ?)", [
        (10, 1, 5, 1, "Red"), (11, 2, None, 0, ""), (12, 3, 3, -1, ""), (13, 4, 2, 0, "Green"), (14, 5, 4, 0, ""), (15, 6, 5, 0, "")])
    db.commit()
    db.close()


def test_import_a_lightroom_catalogue_read_only_even_while_it_is_locked(tmp_path, capsys):
    root = tmp_path / "Pictures"
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "trip/f.jpg"]):
        photo(root / name, i)
    catalogue = tmp_path / "Catalog.lrcat"
    lightroom_catalogue(catalogue, root)
    digest = hashlib.sha256(catalogue.read_bytes()).hexdigest()
    lightroom = sqlite3.connect(catalogue, isolation_level=None)
    lightroom.execute("BEGIN EXCLUSIVE")  # Lightroom has it open
    main(["import", str(catalogue), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])
    lightroom.execute("ROLLBACK")
    lightroom.close()
    rows = labels(tmp_path / "labels.csv")
    assert {image: (int(r["tier"]), int(r["rating"]), r["label"]) for image, r in rows.items()} == {
        "a.jpg": (3, 5, "Red"), "c.jpg": (0, -1, ""), "trip/f.jpg": (1, 2, "Green")}  # b.jpg: unrated
    printed = capsys.readouterr().out
    assert "no longer there 1" in printed and "outside --gallery 1" in printed and "unrated         1" in printed
    assert hashlib.sha256(catalogue.read_bytes()).hexdigest() == digest


def test_import_a_darktable_library(tmp_path):
    root = tmp_path / "Pictures"
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]):
        photo(root / name, i)
    db = sqlite3.connect(tmp_path / "library.db")
    db.executescript("""
        CREATE TABLE film_rolls (id INTEGER PRIMARY KEY, folder TEXT);
        CREATE TABLE images (id INTEGER PRIMARY KEY, film_id INTEGER, filename TEXT, flags INTEGER);
        CREATE TABLE color_labels (imgid INTEGER, color INTEGER);
    """)
    db.execute("INSERT INTO film_rolls VALUES (1, ?)", (str(root),))
    db.executemany("INSERT INTO images VALUES (?, 1, ?, ?)", [(1, "a.jpg", 4 | 32), (2, "b.jpg", 1 | 8), (3, "c.jpg", 6), (4, "d.jpg", 0)])
    db.execute("INSERT INTO color_labels VALUES (1, 2)")
    db.commit()
    db.close()
    main(["import", str(tmp_path / "library.db"), "--gallery", str(root), "--out", str(tmp_path / "labels.csv")])
    rows = labels(tmp_path / "labels.csv")
    assert {image: (int(r["tier"]), int(r["rating"]), r["label"]) for image, r in rows.items()} == {
        "a.jpg": (2, 4, "Green"), "b.jpg": (0, -1, ""), "c.jpg": (0, -1, "")}


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not a database"), "not a Lightroom catalogue"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE other (x)"), "tables Adobe_images, AgLibraryFile"),
])
def test_a_catalogue_that_is_not_one_gives_one_line(tmp_path, capsys, make, message):
    make(tmp_path / "broken.lrcat")
    (tmp_path / "Pictures").mkdir()
    with pytest.raises(SystemExit) as stop:
        main(["import", str(tmp_path / "broken.lrcat"), "--gallery", str(tmp_path / "Pictures"), "--out", str(tmp_path / "l.csv")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "broken.lrcat" in error and error.count("\n") == 1
    assert not (tmp_path / "l.csv").exists()


def test_predicts_sidecars_round_trip_and_write_merges_beside_the_images(trained, tmp_path, capsys):
    ckpt, gallery = trained
    photos = tmp_path / "photos"
    shutil.copytree(gallery, photos)
    (photos / "labels.csv").unlink()
    summary = predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "xmp=true", "xmp_stars=true"]))
    main(["import", str(tmp_path / "out" / "xmp"), "--gallery", str(photos), "--out", str(tmp_path / "mine.csv")])
    assert labels(tmp_path / "mine.csv") == {}  # beholder's own guesses are not the photographer's ratings ...
    main(["import", str(tmp_path / "out" / "xmp"), "--gallery", str(photos), "--out", str(tmp_path / "back.csv"), "--with-beholder"])
    back = labels(tmp_path / "back.csv")  # ... unless asked for, and then marked as beholder's
    assert {row["source"] for row in back.values()} == {"beholder"}
    scores = read_scores(tmp_path / "out" / "scores.csv")
    assert len(back) == len(scores) == 60
    tiers = {-1: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 3}
    for row in scores:  # a reject carries digiKam's "rejected" pick: it reads back as a reject
        stars = -1 if row["band"] == "reject" else star_rating(int(row["rank"]), summary["kept"], row["band"])
        assert (int(back[row["image"]]["rating"]), int(back[row["image"]]["tier"])) == (stars, tiers[stars])

    # write: beside the images, a photographer's own rating and develop settings stay
    mine = photos / "sub0" / "img_000.xmp"
    mine.write_bytes(sidecar('xmp:Rating="4" crs:Exposure2012="+0.35"', "<dc:subject xmlns:dc='http://purl.org/dc/elements/1.1/'>"
                                                                        "<rdf:Bag><rdf:li>needle</rdf:li></rdf:Bag></dc:subject>"))
    main(["write", "--scored", str(tmp_path / "out"), "--gallery", str(photos), "--stars"])
    assert len(list(photos.rglob("*.xmp"))) == 60
    description = ET.parse(mine).getroot().find(".//{%s}Description" % NAMESPACES["rdf"])
    assert description.get("{%s}Rating" % NAMESPACES["xmp"]) == "4" and "+0.35" in mine.read_text() and "needle" in mine.read_text()
    assert description.get("{%s}Band" % NAMESPACES["beholder"]) in ("keep", "review", "reject")
    capsys.readouterr()
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in photos.rglob("*.xmp")}
    main(["write", "--scored", str(tmp_path / "out"), "--gallery", str(photos), "--stars"])  # the same again
    assert "0 created, 0 merged into (ratings the photographer set kept); 60 unchanged" in capsys.readouterr().out
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in photos.rglob("*.xmp")} == before  # not even rewritten


def test_each_image_gets_the_sidecar_its_tools_read_and_never_a_second():
    images = ["dt/IMG_1.jpg", "dt/IMG_2.jpg", "lr/IMG_3.jpg", "lr/IMG_4.jpg", "pair/IMG_5.CR2", "pair/IMG_5.jpg", "new/IMG_6.heic"]
    existing = ["dt/IMG_1.jpg.xmp", "lr/IMG_3.xmp", "pair/IMG_5.xmp"]
    assert sidecar_targets(images, existing) == {
        "dt/IMG_1.jpg": ["dt/IMG_1.jpg.xmp"],  # darktable's, merged into
        "dt/IMG_2.jpg": ["dt/IMG_2.jpg.xmp"],  # a new one as the folder's others
        "lr/IMG_3.jpg": ["lr/IMG_3.xmp"],
        "lr/IMG_4.jpg": ["lr/IMG_4.xmp"],
        "pair/IMG_5.CR2": ["pair/IMG_5.xmp"],  # Lightroom's sidecar of a RAW + JPEG pair is the RAW's
        "pair/IMG_5.jpg": ["pair/IMG_5.jpg.xmp"],
        "new/IMG_6.heic": ["new/IMG_6.xmp"],  # a folder without sidecars: Lightroom's form
    }
    assert sidecar_targets(["new/IMG_6.heic"], [], "darktable") == {"new/IMG_6.heic": ["new/IMG_6.heic.xmp"]}
    assert sidecar_targets(["a/x.jpg"], ["a/x.xmp", "a/x.jpg.xmp"]) == {"a/x.jpg": ["a/x.jpg.xmp", "a/x.xmp"]}  # both kept current


def test_a_mixed_library_keeps_the_photographers_stars_and_imports_only_theirs(trained, photos, tmp_path):
    ckpt, _ = trained
    darktable, lightroom = photos / "sub0" / "img_000.jpg.xmp", photos / "sub1" / "img_001.xmp"
    darktable.write_bytes(sidecar('xmp:Rating="1"'))
    lightroom.write_bytes(sidecar('xmp:Rating="5"'))
    (photos / "sub2" / "img_002.jpg.xmp").write_bytes(sidecar('xmp:Rating="0"'))  # darktable's "no stars"
    predict(compose_predict([f"ckpt={ckpt}", f"gallery={photos}", f"output={tmp_path}/out", "xmp=true", "xmp_beside_images=true",
                             "threshold=0.0", "xmp_stars=true"]))  # every photo kept: 3+ stars, Green, accepted, where the photographer set none
    assert not (photos / "sub0" / "img_000.xmp").exists() and not (photos / "sub1" / "img_001.jpg.xmp").exists()
    assert len(list(photos.rglob("*.xmp"))) == 60
    assert read_rating(darktable.read_bytes())["rating"] == 1 and read_rating(lightroom.read_bytes())["rating"] == 5
    unset = read_rating((photos / "sub2" / "img_002.jpg.xmp").read_bytes())
    assert unset["rating"] >= 3 and unset["set_by_beholder"] >= {"Rating"}  # rating 0 was no rating
    sub2 = {p.name for p in (photos / "sub2").glob("*.xmp")}
    assert all(name.endswith(".jpg.xmp") for name in sub2)  # new ones follow the folder's darktable form

    darktable.write_bytes(darktable.read_bytes().replace(b'xmp:Rating="1"', b'xmp:Rating="2"'))  # a later hand edit
    main(["import", str(photos), "--gallery", str(photos), "--out", str(tmp_path / "mine.csv")])
    mine = labels(tmp_path / "mine.csv")
    assert {image: (row["rating"], row["source"]) for image, row in mine.items()} == {
        "sub0/img_000.jpg": ("2", "photographer"), "sub1/img_001.jpg": ("5", "photographer")}


def test_stars_and_review_decisions_make_one_labels_file(tmp_path, capsys):
    from beholder.decisions.review import Review

    root = rated_photos(tmp_path / "Pictures", {"a": sidecar('xmp:Rating="5"'), "b": sidecar('xmp:Rating="2"'),
                                                "c": xmp_sidecar(3, "review", 0.5), "d": None})  # c: beholder's marks, no stars: unrated until reviewed
    review = Review(str(tmp_path / "review.sqlite"))
    review.load([{"image": image, "score": 0.5, "band": "review", "rank": i} for i, image in enumerate(["a.jpg", "c.jpg", "d.jpg"], 1)])
    ids = {key: i for i, key in review.keys().items()}
    review.decide("me", ids["a.jpg"], False)  # stars win over a decision
    review.decide("me", ids["c.jpg"], True)
    review.decide("me", ids["d.jpg"], False)
    main(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "all.csv"), "--review", str(tmp_path / "review.sqlite")])
    rows = labels(tmp_path / "all.csv")
    assert {image: (row["rating"], row["tier"], row["source"]) for image, row in rows.items()} == {
        "a.jpg": ("5", "3", "photographer"), "b.jpg": ("2", "1", "photographer"),
        "c.jpg": ("2", "1", "review"), "d.jpg": ("-1", "0", "review")}  # kept: "not junk", the person's typical stars, not their top
    printed = capsys.readouterr().out
    assert "4 labelled images" in printed and "2 by your stars, 2 by review decisions" in printed
    assert "unrated         0" in printed  # every count adds up to the 4 photos: c.jpg is not also unrated


def test_a_new_sidecar_keeps_the_rating_inside_the_image_and_reimport_is_unchanged(tmp_path):
    root = tmp_path / "Pictures"
    photo(root / "inside.jpg", 0, xmp=sidecar('xmp:Rating="4"', "<dc:subject xmlns:dc='http://purl.org/dc/elements/1.1/'>"
                                                                "<rdf:Bag><rdf:li>kept inside</rdf:li></rdf:Bag></dc:subject>"))
    photo(root / "plain.jpg", 1)
    main(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "first.csv")])
    (tmp_path / "scores.csv").write_text("image,score,band,rank\ninside.jpg,0.1,reject,2\nplain.jpg,0.9,keep,1\n")
    main(["write", "--scored", str(tmp_path / "scores.csv"), "--gallery", str(root)])
    created = (root / "inside.xmp").read_bytes()
    assert read_rating(created)["rating"] == 4 and b"kept inside" in created and b'beholder:Band="reject"' in created
    main(["import", str(root), "--gallery", str(root), "--out", str(tmp_path / "again.csv")])
    assert (tmp_path / "first.csv").read_text() == (tmp_path / "again.csv").read_text()
