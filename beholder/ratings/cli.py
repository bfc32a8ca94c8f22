"""beholder ratings: a photographer's ratings in as labels, beholder's decisions out as XMP.

    beholder ratings import ~/Pictures --gallery ~/Pictures --out my_labels.csv          # XMP sidecars (and XMP inside images)
    beholder ratings import ~/Lightroom/Catalog.lrcat --gallery ~/Pictures --out my_labels.csv
    beholder ratings import ~/.config/darktable/library.db --gallery ~/Pictures --out my_labels.csv
    beholder ratings write --scored OUTPUT --gallery ~/Pictures                # sidecars beside the images

The labels CSV is what beholder train reads (labels=..., gallery=ROOT): image (relative to ROOT),
tier (by --tiers), rating (-1 rejected, 1-5 stars: data.score_column=rating) and label (colour).
"""

from __future__ import annotations

import os
import statistics
import sys

from beholder.core.console import examples, line, listed
from beholder.core.errors import UserError, exit_on_user_error
from beholder.core.storage import Store, inside, relative_key, utf8, within
from beholder.core.vocabulary import CommandParser, respell
from beholder.data.images import IMAGE_SUFFIXES
from beholder.data.labels import labels_csv
from beholder.data.scores import read_scored
from beholder.decisions.review import Review, review_decisions
from beholder.ratings.sources import from_darktable, from_lightroom, from_sidecars
from beholder.ratings.xmp import NAMING, sidecar_targets, write_sidecars
from beholder.technical import REASONS

DEFAULT_TIERS = "reject:0,1:0,2:1,3:1,4:2,5:3"


def parse_tiers(text: str) -> dict[int, int]:
    """``reject:0,1:0,2:1,...`` -> {rating: tier}; ``reject`` is rating -1."""
    tiers = {}
    for part in text.split(","):
        key, _, value = part.partition(":")
        try:
            rating = -1 if key.strip() == "reject" else int(key)
            tier = int(value)
        except ValueError:
            raise UserError(f"--tiers {text!r}: give rating:tier pairs like {DEFAULT_TIERS}") from None
        if not -1 <= rating <= 5 or rating == 0 or not 0 <= tier <= 3:
            raise UserError(f"--tiers {text!r}: ratings are reject or 1-5, tiers 0-3")
        tiers[rating] = tier
    return tiers


def read_source(source: str, root: str, problems: list[str], notes: list[str], with_beholder: bool) -> list:
    if os.path.isdir(source):
        return from_sidecars(source, root, problems, with_beholder)
    if source.lower().endswith(".lrcat"):
        return from_lightroom(source, problems, notes)
    if source.lower().endswith(".db"):
        return from_darktable(source, problems, notes)
    raise UserError(f"{source}: give a folder of XMP sidecars, a Lightroom catalogue (.lrcat) or darktable's library.db")


def run_import(args) -> None:
    tiers = parse_tiers(args.tiers)
    root = os.path.abspath(os.path.expanduser(args.gallery))
    if not os.path.isdir(root):
        raise UserError(f"--gallery {args.gallery}: no such folder")
    if os.path.exists(args.out) and not args.force:
        raise UserError(f"--out {args.out}: already there; give --force to replace it, or another name")
    problems: list[str] = []
    notes: list[str] = []
    rows, unrated, missing, outside, unmapped, unreadable = {}, [], [], [], [], []
    source = os.path.expanduser(args.source)
    for rated in read_source(source, root, problems, notes, args.with_beholder):
        path = os.path.abspath(rated["path"])
        image = relative_key(os.path.relpath(path, root).replace(os.sep, "/"))
        if not utf8(path):
            problems.append(f"{path}: the file name is not UTF-8 (no labels file could name it); rename it to have it rated")
        elif rated["rating"] is None:  # its sidecar could not be read: named among the problems
            unreadable.append(image or path)
        elif image is None:
            outside.append(path)
        elif not os.path.isfile(path):
            missing.append(path)
        elif rated["rating"] == 0:
            unrated.append(image)
        elif rated["rating"] not in tiers:
            unmapped.append(image)
        else:
            rows[image] = {"image": image, "tier": tiers[rated["rating"]], "rating": rated["rating"], "label": rated["label"],
                           "source": rated["source"]}
    if args.review:
        stars_won = merge_review(args.review, root, rows, tiers, outside, missing, unmapped)
        imported = sum(row["source"] == "review" for row in rows.values())
        notes.append(f"review decisions: {imported} imported" + (f", {stars_won} left out on photos you rated yourself (your stars win)" if stars_won else ""))
    unrated = [image for image in unrated if image not in rows]  # a photo without stars that a review decision labelled
    if os.path.isdir(source):  # every image of the folder that carries no rating is unrated too
        known = set(rows) | set(unrated + unmapped + unreadable)
        unrated += [image for image in Store().list(root, IMAGE_SUFFIXES) if image not in known]
    Store().write(args.out, labels_csv((rows[image] for image in sorted(rows)), ["rating", "label", "source"]).encode())
    if args.unrated:
        Store().write(args.unrated, "".join(f"{image}\n" for image in sorted(unrated)).encode())
    counts = {tier: sum(row["tier"] == tier for row in rows.values()) for tier in range(4)}
    by_source = {source: sum(row["source"] == source for row in rows.values()) for source in ("photographer", "beholder", "review")}
    said = ", ".join(f"{count} {name}" for name, count in (("by your stars", by_source["photographer"]), ("by beholder's marks", by_source["beholder"]),
                                                           ("by review decisions", by_source["review"])) if count)
    lines = [f"beholder: {len(rows)} labelled images -> {args.out} (tiers 0-3: {', '.join(str(counts[t]) for t in range(4))})",
             *([line("labelled", said)] if said else []),
             line("unrated", f"{len(unrated)}" + (f"  (listed in {args.unrated})" if args.unrated else "  (left out; --unrated FILE lists them)"))]
    for name, paths in (("no longer there", missing), ("outside --gallery", outside), ("rating not in --tiers", unmapped)):
        if paths:
            lines.append(line(name, f"{len(paths)}  {examples(paths)}"))
    lines += [f"  {note}" for note in notes]
    lines += listed("skipped", problems)
    print("\n".join(lines))


def merge_review(db: str, root: str, rows: dict[str, dict], tiers: dict[int, int], outside: list[str], missing: list[str],
                 unmapped: list[str]) -> int:
    """``beholder review`` decisions join the photographer's stars as labels of their own (``source``
    review): a kept photo is "not junk", the person's typical rating (the median of their stars; 3
    without any), never their top tier, so that a handful of decisions moves neither the model nor
    its keep threshold much; a rejected one is rejected. A
    decision is read like any path from a file: its key names a photo of ``root`` (respellings such
    as ``./a.jpg`` name that photo; keys outside it, or of photos no longer there, are counted, not
    labelled), each photo gets one label (its latest decision), and where the photographer rated it,
    their stars win. Returns how many decisions the stars won over."""
    if not os.path.isfile(db):
        raise UserError(f"--review {db}: no such file")
    decisions = review_decisions(Review(db, read_only=True, option="--review"), f"--review {db}")
    stars = [row["rating"] for row in rows.values() if row["rating"] > 0]
    typical = statistics.median_low(stars) if stars else 3
    reviewed: dict[str, bool] = {}
    for key, keep in decisions:
        image = relative_key(key)
        if image is None or not utf8(image) or not within(root, os.path.join(root, image)):
            outside.append(key)
        elif not os.path.isfile(os.path.join(root, image)):
            missing.append(os.path.join(root, image))
        else:
            reviewed.pop(image, None)
            reviewed[image] = keep  # the latest decision of the photo, however its key was spelled
    stars_won = 0
    for image, keep in reviewed.items():
        rating = typical if keep else -1
        if image in rows:
            stars_won += 1
        elif rating not in tiers:
            unmapped.append(image)
        else:
            rows[image] = {"image": image, "tier": tiers[rating], "rating": rating, "label": "", "source": "review"}
    return stars_won


def run_write(args) -> None:
    store = Store(args.endpoint_url)
    rows = read_scored(store, args.scored)
    for row in rows:
        row["keywords"] = [row["reason"]] if row["reason"] in REASONS.values() else []
    root = os.path.expanduser(args.gallery)
    if not os.path.isdir(root):
        raise UserError(f"--gallery {args.gallery}: no such folder")
    names = sidecar_targets([row["image"] for row in rows], store.list(root, (".xmp",)), args.naming)
    targets, outside, gone = {}, [], []
    for row in rows:
        image, sidecars = inside(root, row["image"]), [inside(root, name) for name in names[row["image"]]]
        if image is None or None in sidecars:
            outside.append(row["image"])
        elif os.path.isfile(image):
            targets[row["image"]] = sidecars
        else:
            gone.append(row["image"])
    present = [row for row in rows if row["image"] in targets]
    kept = sum(row["band"] == "keep" for row in rows)
    written = write_sidecars(store, present, targets, kept, args.overwrite_ratings, root, root, args.stars)
    left_alone = written["left_alone"]
    print(f"beholder: {written['created'] + written['merged']} sidecars written beside the images in {root}: {written['created']} created, "
          f"{written['merged']} merged into (ratings the photographer set {'replaced' if args.overwrite_ratings else 'kept'}); "
          f"{written['unchanged']} unchanged (already held this decision), {len(written['left_alone'])} left alone")
    for name, images in (("no longer there", gone), ("outside --gallery", outside)):
        if images:
            why = "  (left out: nothing is written outside --gallery)" if name == "outside --gallery" else ""
            print(line(name, f"{len(images)}  {examples(images)}{why}"))
    print("\n".join(listed("left alone", left_alone)))


def main(argv: list[str] | None = None, prog: str = "beholder ratings") -> None:
    argv = respell(sys.argv[1:] if argv is None else argv, ("--root", "--scores"))
    parser = CommandParser(prog=prog, description=" ".join(__doc__.split("\n\n")[0].split()))
    commands = parser.add_subparsers(dest="command", required=True, help="import or write")
    reading = commands.add_parser("import", help="ratings -> a labels CSV for beholder train",
                                  description="A photographer's ratings (XMP sidecars, a Lightroom catalogue, darktable's library) as a labels CSV "
                                              "for beholder train.")
    reading.add_argument("source", help="a folder of XMP sidecars, a Lightroom .lrcat, or darktable's library.db")
    reading.add_argument("--gallery", required=True, help="the folder the images live in; label paths are relative to it")
    reading.add_argument("--out", required=True, help="the labels CSV to write")
    reading.add_argument("--tiers", default=DEFAULT_TIERS, help=f"rating:tier pairs (default {DEFAULT_TIERS})")
    reading.add_argument("--unrated", help="list the unrated images in this file")
    reading.add_argument("--force", action="store_true", help="replace --out if it exists")
    reading.add_argument("--review", help="a label review database: its keep / reject decisions join the ratings (source=review)")
    reading.add_argument("--with-beholder", action="store_true", help="also read the ratings beholder wrote itself (source=beholder); "
                         "by default only the photographer's count")
    writing = commands.add_parser("write", help="a scores.csv -> XMP sidecars beside the images, merged",
                                  description="beholder's decisions from a scores.csv merged into the XMP sidecars beside the images "
                                              "(pick or reject, a colour label, keywords; stars with --stars).")
    writing.add_argument("--scored", required=True, help="beholder predict's output folder, or its scores.csv (any model's)")
    writing.add_argument("--gallery", required=True, help="the folder the scored images live in")
    writing.add_argument("--stars", action="store_true", help="also star ratings for the photos the photographer has not rated "
                         "(default: a pick, a colour label and keywords only, so a star filter shows only theirs)")
    writing.add_argument("--overwrite-ratings", action="store_true", help="also replace ratings, labels and picks the photographer set")
    writing.add_argument("--naming", choices=NAMING, default="auto", help="new sidecars: IMG_1.xmp (adobe), IMG_1.jpg.xmp (darktable), "
                         "or auto: as the folder's other sidecars (default); existing ones are always merged into")
    writing.add_argument("--endpoint-url", help="an S3-compatible store for an s3:// --scored")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        run_import(args) if args.command == "import" else run_write(args)


if __name__ == "__main__":
    main()
