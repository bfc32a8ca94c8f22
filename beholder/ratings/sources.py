"""Where photographers keep their ratings: XMP sidecars (and XMP inside images), a Lightroom Classic
catalogue (.lrcat) and a darktable library.db. Each source gives (absolute image path, rating,
label) with rating -1 (rejected), 0 (unrated) or 1-5 stars; what cannot be read is named in
``problems`` and skipped. Catalogues are never written: opened read-only and immutable (readable
while the application holds its lock), or, when the application has changes in a write-ahead log
that it has not yet written into the file, as a copy of the file and its log in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager

from beholder.core.errors import UserError
from beholder.core.storage import local_files, read_local_file
from beholder.data.images import IMAGE_SUFFIXES
from beholder.ratings.xmp import MAX_BYTES, UnreadableSidecar, packet_in_file, read_rating, reason

DARKTABLE_COLOURS = {0: "Red", 1: "Yellow", 2: "Green", 3: "Blue", 4: "Purple"}
DARKTABLE_REJECTED = 8  # flags bit since darktable 3.0 (before: stars == 6)


class Rated(dict):
    """One image's rating: ``path`` (absolute), ``rating`` (-1..5), ``label``, ``source``
    (``photographer``, or ``beholder`` for what beholder set itself, read only when asked)."""


def rated_from_xmp(path: str, values: dict, with_beholder: bool) -> Rated:
    """The photographer's rating in an XMP packet: the fields beholder set itself count as unset,
    unless ``with_beholder`` (then the rating is marked as beholder's)."""
    ours = values["set_by_beholder"] if not with_beholder else set()
    stars = None if "Rating" in ours else values["rating"]
    pick = None if "PickLabel" in ours else values["pick"]
    rating = -1 if pick == 1 else max(-1, min(5, stars or 0))  # pick 1: digiKam's "rejected"
    decided_by_beholder = {"PickLabel"} if pick == 1 else {"Rating"}
    source = "beholder" if decided_by_beholder & values["set_by_beholder"] and rating != 0 else "photographer"
    return Rated(path=path, rating=rating, label="" if "Label" in ours else values["label"], source=source)


def from_sidecars(folder: str, images_root: str, problems: list[str], with_beholder: bool = False) -> list[Rated]:
    """Sidecars under ``folder`` (``x.xmp`` or ``x.jpg.xmp``) name images under ``images_root`` by
    the same relative path; images there without a sidecar are read for an embedded packet. Linked
    sub-folders are read as predict lists them (each real folder once). Where an
    image has both, ``x.jpg.xmp`` names it exactly and wins, except where it holds no rating or label
    of the photographer's and ``x.xmp`` does (``x.xmp`` shared by ``x.jpg`` and ``x.tif``, whose own
    sidecars beholder made later: the photographer's stars stay in the one they wrote)."""
    exact: dict[str, Rated] = {}
    shared: dict[str, Rated] = {}
    for name in sorted(local_files(folder)):
        if not name.lower().endswith(".xmp"):
            continue
        sidecar = os.path.join(folder, name)
        stem = os.path.join(images_root, name)[:-4]
        named = stem.lower().endswith(IMAGE_SUFFIXES)
        targets = [stem] if named else images_with_stem(stem)
        try:
            values = read_rating(read_local_file(sidecar, MAX_BYTES))
        except (UnreadableSidecar, OSError) as error:
            problems.append(f"{sidecar}: {reason(error)}; skipped")
            values = None
        for target in targets or [stem]:  # no image: counted as missing
            found = rated_from_xmp(target, values, with_beholder) if values else Rated(path=target, rating=None)
            (exact if named else shared)[os.path.normcase(target)] = found
    rated: dict[str, Rated] = dict(shared)
    for key, own in exact.items():  # an unreadable sidecar's image is neither rated nor unrated
        other = shared.get(key)
        if own["rating"] == 0 and other is not None and other["rating"]:
            own = Rated(other, label=own["label"] or other["label"])
        elif own["rating"] is not None and not own["label"] and other is not None and other["rating"] is not None:
            own = Rated(own, label=other["label"])
        rated[key] = own
    for name in sorted(local_files(images_root)):
        path = os.path.join(images_root, name)
        if name.lower().endswith((".jpg", ".jpeg", ".tif", ".tiff", ".dng")) and os.path.normcase(path) not in rated:
            try:
                packet = packet_in_file(path)
                values = read_rating(packet) if packet else None
            except (UnreadableSidecar, OSError) as error:
                problems.append(f"{path}: embedded XMP {reason(error)}; skipped")
                continue
            if values:
                rated[os.path.normcase(path)] = rated_from_xmp(path, values, with_beholder)
    return list(rated.values())


def images_with_stem(stem: str) -> list[str]:
    directory, base = os.path.split(stem)
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if os.path.splitext(n)[0] == base and n.lower().endswith(IMAGE_SUFFIXES))


@contextmanager
def open_catalogue(path: str, tables: set[str], kind: str, notes: list[str]):
    """A read-only connection to the catalogue. With a write-ahead log beside it (the application
    has it open and has changes not yet written into the file), the file and its log are copied into
    a temporary folder and that copy is read, so the changes count and the originals stay untouched;
    ``notes`` says which state was read."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such {kind} file")
    wal = path + "-wal"
    with tempfile.TemporaryDirectory(prefix="beholder-catalogue-") as copy:
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:
            source = os.path.join(copy, os.path.basename(path))
            shutil.copyfile(path, source)
            shutil.copyfile(wal, source + "-wal")
            uri = f"file:{source}"
            notes.append(f"read {path} with its write-ahead log {wal} (changes the application has not yet written into the catalogue included)")
        else:
            uri = f"file:{os.path.abspath(path)}?mode=ro&immutable=1"
            notes.append(f"read {path} (no write-ahead log beside it)")
        try:
            connection = sqlite3.connect(uri, uri=True)
            found = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise UserError(f"{path}: not a {kind} ({error})") from None
        try:
            if not tables <= found:
                raise UserError(f"{path}: not a {kind} (tables {', '.join(sorted(tables - found))} missing)")
            yield connection
        except sqlite3.DatabaseError as error:
            raise UserError(f"{path}: not a {kind} this beholder reads ({error})") from None
        finally:
            connection.close()


def whole_number(value, low: int, high: int) -> int | None:
    """A rating or flag as stored (an integer, a whole REAL, NULL); None for anything else."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and low <= value <= high else None


def from_lightroom(path: str, problems: list[str], notes: list[str]) -> list[Rated]:
    """Lightroom Classic: Adobe_images (rating, pick: 1 flagged, -1 rejected, colorLabels) joined
    to the file, its folder and its root folder. A row with a missing path or a rating that is not
    one is named and skipped."""
    with open_catalogue(path, {"Adobe_images", "AgLibraryFile", "AgLibraryFolder", "AgLibraryRootFolder"}, "Lightroom catalogue", notes) as db:
        rows = db.execute(
            "SELECT image.id_local, root.absolutePath, folder.pathFromRoot, file.idx_filename, image.rating, image.pick, image.colorLabels "
            "FROM Adobe_images image JOIN AgLibraryFile file ON image.rootFile = file.id_local "
            "JOIN AgLibraryFolder folder ON file.folder = folder.id_local "
            "JOIN AgLibraryRootFolder root ON folder.rootFolder = root.id_local").fetchall()
    rated = []
    for image, root, folder, filename, rating, pick, label in rows:
        where = f"{path}: Adobe_images row {image}"
        stars, flag = whole_number(rating, 0, 5), whole_number(pick, -1, 1)
        if not all(isinstance(part, str) for part in (root, folder, filename)) or not filename:
            problems.append(f"{where}: no file path (root folder, folder or file name missing); skipped")
        elif stars is None or flag is None:
            problems.append(f"{where}: rating {rating!r} / pick {pick!r} is not a Lightroom rating; skipped")
        else:
            rated.append(Rated(path=root + folder + filename, rating=-1 if flag < 0 else stars, label=label if isinstance(label, str) else "",
                               source="photographer"))
    return rated


def from_darktable(path: str, problems: list[str], notes: list[str]) -> list[Rated]:
    """darktable's library.db: stars in the low 3 bits of images.flags, the rejected bit, the film
    roll's folder, colour labels. A row with a missing path or flags is named and skipped."""
    with open_catalogue(path, {"images", "film_rolls"}, "darktable library", notes) as db:
        rows = db.execute(
            "SELECT images.id, film_rolls.folder, images.filename, images.flags FROM images "
            "JOIN film_rolls ON images.film_id = film_rolls.id").fetchall()
        colours = {}
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'color_labels'").fetchone():
            for image, colour in db.execute("SELECT imgid, color FROM color_labels ORDER BY color"):
                colours.setdefault(image, DARKTABLE_COLOURS.get(colour, ""))
    rated = []
    for image, folder, filename, flags in rows:
        where = f"{path}: images row {image}"
        if not isinstance(folder, str) or not isinstance(filename, str) or not filename:
            problems.append(f"{where}: no file path (film roll folder or file name missing); skipped")
            continue
        if not isinstance(flags, int):
            problems.append(f"{where}: flags {flags!r} are not darktable's; skipped")
            continue
        stars = flags & 7
        rejected = bool(flags & DARKTABLE_REJECTED) or stars == 6
        rated.append(Rated(path=os.path.join(folder, filename), rating=-1 if rejected else min(stars, 5), label=colours.get(image, ""),
                           source="photographer"))
    return rated
