"""Where photographers keep their ratings: XMP sidecars (and XMP inside images), a Lightroom Classic
catalogue (.lrcat) and a darktable library.db. Each source gives (absolute image path, rating,
label) with rating -1 (rejected), 0 (unrated) or 1-5 stars. Catalogues are opened read-only and
immutable: never written, and readable while the application holds its lock."""

from __future__ import annotations

import os
import sqlite3

from beholder.errors import UserError
from beholder.images import IMAGE_SUFFIXES
from beholder.ratings.xmp import UnreadableSidecar, embedded_packet, read_rating

DARKTABLE_COLOURS = {0: "Red", 1: "Yellow", 2: "Green", 3: "Blue", 4: "Purple"}
DARKTABLE_REJECTED = 8  # flags bit since darktable 3.0 (before: stars == 6)


class Rated(dict):
    """One image's rating: ``path`` (absolute), ``rating`` (-1..5), ``label``."""


def rating_from_xmp(values: dict) -> int:
    if values["pick"] == 1:  # digiKam's "rejected" pick label
        return -1
    return max(-1, min(5, values["rating"] or 0))


def from_sidecars(folder: str, images_root: str, problems: list[str]) -> list[Rated]:
    """Sidecars under ``folder`` (``x.xmp`` or ``x.jpg.xmp``) name images under ``images_root`` by
    the same relative path; images there without a sidecar are read for an embedded packet."""
    rated, covered = [], set()
    for directory, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if not name.lower().endswith(".xmp"):
                continue
            sidecar = os.path.join(directory, name)
            stem = os.path.join(images_root, os.path.relpath(sidecar, folder))[:-4]
            targets = [stem] if stem.lower().endswith(IMAGE_SUFFIXES) else images_with_stem(stem)
            try:
                with open(sidecar, "rb") as f:
                    values = read_rating(f.read())
            except UnreadableSidecar as error:
                problems.append(f"{sidecar}: {error}; skipped")
                continue
            if not targets:
                targets = [stem]  # an image no longer there: counted as missing
            for target in targets:
                covered.add(os.path.normcase(target))
                rated.append(Rated(path=target, rating=rating_from_xmp(values), label=values["label"]))
    for directory, _, files in sorted(os.walk(images_root)):
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.lower().endswith((".jpg", ".jpeg", ".tif", ".tiff", ".dng")) and os.path.normcase(path) not in covered:
                with open(path, "rb") as f:
                    packet = embedded_packet(f.read())
                if packet:
                    try:
                        values = read_rating(packet)
                    except UnreadableSidecar as error:
                        problems.append(f"{path}: embedded XMP {error}; skipped")
                        continue
                    rated.append(Rated(path=path, rating=rating_from_xmp(values), label=values["label"]))
    return rated


def images_with_stem(stem: str) -> list[str]:
    directory, base = os.path.split(stem)
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if os.path.splitext(n)[0] == base and n.lower().endswith(IMAGE_SUFFIXES))


def open_catalogue(path: str, tables: set[str], kind: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such {kind} file")
    try:
        connection = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro&immutable=1", uri=True)
        found = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise UserError(f"{path}: not a {kind} ({error})") from None
    if not tables <= found:
        raise UserError(f"{path}: not a {kind} (tables {', '.join(sorted(tables - found))} missing)")
    return connection


def from_lightroom(path: str) -> list[Rated]:
    """Lightroom Classic: Adobe_images (rating, pick: 1 flagged, -1 rejected, colorLabels) joined
    to the file, its folder and its root folder."""
    connection = open_catalogue(path, {"Adobe_images", "AgLibraryFile", "AgLibraryFolder", "AgLibraryRootFolder"},
                                "Lightroom catalogue")
    try:
        rows = connection.execute(
            "SELECT root.absolutePath || folder.pathFromRoot || file.idx_filename, image.rating, image.pick, image.colorLabels "
            "FROM Adobe_images image JOIN AgLibraryFile file ON image.rootFile = file.id_local "
            "JOIN AgLibraryFolder folder ON file.folder = folder.id_local "
            "JOIN AgLibraryRootFolder root ON folder.rootFolder = root.id_local").fetchall()
    except sqlite3.DatabaseError as error:
        raise UserError(f"{path}: not a Lightroom catalogue this beholder reads ({error})") from None
    finally:
        connection.close()
    return [Rated(path=file, rating=-1 if (pick or 0) < 0 else int(rating or 0), label=label or "") for file, rating, pick, label in rows]


def from_darktable(path: str) -> list[Rated]:
    """darktable's library.db: stars in the low 3 bits of images.flags, the rejected bit, the film
    roll's folder, colour labels."""
    connection = open_catalogue(path, {"images", "film_rolls"}, "darktable library")
    try:
        rows = connection.execute(
            "SELECT images.id, film_rolls.folder, images.filename, images.flags FROM images "
            "JOIN film_rolls ON images.film_id = film_rolls.id").fetchall()
        colours = {}
        if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'color_labels'").fetchone():
            for image, colour in connection.execute("SELECT imgid, color FROM color_labels ORDER BY color"):
                colours.setdefault(image, DARKTABLE_COLOURS.get(colour, ""))
    except sqlite3.DatabaseError as error:
        raise UserError(f"{path}: not a darktable library this beholder reads ({error})") from None
    finally:
        connection.close()
    rated = []
    for image, folder, filename, flags in rows:
        stars = flags & 7
        rejected = bool(flags & DARKTABLE_REJECTED) or stars == 6
        rated.append(Rated(path=os.path.join(folder, filename), rating=-1 if rejected else min(stars, 5), label=colours.get(image, "")))
    return rated
