"""XMP: the star ratings, colour labels and picks that photo tools keep in sidecars (or inside the
image), read as labels and written as beholder's decisions, merged into what is there."""

from __future__ import annotations

import copy
import itertools
import mmap
import os
import re
import xml.etree.ElementTree as ET
from xml.parsers import expat

from beholder.conf.schema import XMP_NAMING
from beholder.core.storage import ChangedMeanwhile, is_s3, read_local_file, regular_file, remove_stale_temporaries, within
from beholder.data.images import IMAGE_SUFFIXES, RAW_SUFFIXES

NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpDM": "http://ns.adobe.com/xmp/1.0/DynamicMedia/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "beholder": "https://github.com/beholder/ns/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
}
# beholder's keywords, in the bags each tool filters on: (bag, how a keyword is written there). Each
# is under beholder's own name, so none is ever the photographer's; each run replaces those alone.
KEYWORD_BAGS = ((("lr", "hierarchicalSubject"), "beholder|{}"), (("digiKam", "TagsList"), "beholder/{}"), (("dc", "subject"), "beholder: {}"))
EMPTY_XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
BAND_LABELS = {"keep": ("Green", 3), "review": ("Yellow", 0), "reject": ("Red", 1)}  # colour, digiKam pick
# The photographer's fields that beholder sets only where none is set (or where it set them itself).
RATING_FIELDS = (("xmp", "Rating"), ("xmp", "Label"), ("digiKam", "PickLabel"))
UNSET = {"Rating": ("0",), "PickLabel": ("0",)}  # what the tools write for "no stars", "no pick"
PACKET_START, PACKET_END = b"<x:xmpmeta", b"</x:xmpmeta>"
MAX_BYTES = 16 << 20  # real sidecars are kilobytes; darktable's edit history, a few hundred
MAX_DEPTH = 100  # real XMP nests about 10 deep; far deeper only exhausts the writer's recursion
WRAPPER = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n', '\n<?xpacket end="w"?>\n')
XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"  # the xml: prefix, never declared


class UnreadableSidecar(ValueError):
    """A sidecar that is not XMP we can read or merge into: it is left as it is."""


NAMING = XMP_NAMING


def sidecar_targets(images: list[str], existing: list[str], naming: str = "auto") -> dict[str, list[str]]:
    """Each image's sidecars (paths relative to the same root): every one already there that the
    image owns, so that no second one is ever made beside it; else the one to create.

    ``<path>.xmp`` (darktable's and digiKam's form) always belongs to ``<path>``. ``<stem>.xmp``
    (Lightroom's) belongs to the image of that stem when no other image shares the stem, or to the
    RAW of a RAW + JPEG pair. Names match in their own case; in another case (``IMG_1.JPG`` and
    ``img_1.xmp``, as a case-insensitive drive holds them) only where no other image could be meant,
    and each sidecar has one owner. A new sidecar follows ``naming``: ``adobe`` (``<stem>.xmp``, or
    ``<path>.xmp`` where images share a stem), ``darktable`` (``<path>.xmp``), or ``auto``: the
    convention most of the folder's sidecars already follow (``adobe`` in a folder without any).
    An image both of whose names are other images' sidecars gets none."""
    if naming not in NAMING:
        raise ValueError(f"xmp_naming={naming!r}: give one of {', '.join(NAMING)}")
    by_base: dict[str, list[str]] = {}  # a sidecar's name without .xmp, in any case -> the sidecars
    for name in existing:
        by_base.setdefault(name[:-4].lower(), []).append(name)
    stems: dict[str, list[str]] = {}  # images sharing a stem, in any case
    paths: dict[str, list[str]] = {}
    for image in images:
        stems.setdefault(os.path.splitext(image)[0].lower(), []).append(image)
        paths.setdefault(image.lower(), []).append(image)
    styles: dict[str, list[int]] = {}  # folder -> [adobe, darktable] sidecars there
    for name in existing:
        styles.setdefault(os.path.dirname(name), [0, 0])[int(name[:-4].lower().endswith(IMAGE_SUFFIXES))] += 1

    def claims(image: str) -> list[tuple[str, list[str]]]:
        """(name without .xmp, the images it could mean), the image's own path first."""
        stem = os.path.splitext(image)[0]
        sharing = stems[stem.lower()]
        raws = [other for other in sharing if other.lower().endswith(RAW_SUFFIXES)]
        owned = [(image, paths[image.lower()])]
        if len(sharing) == 1 or raws == [image]:
            owned.append((stem, sharing))
        return owned

    owners: dict[str, str] = {}  # sidecar -> its image
    for exact in (True, False):  # names in their own case first, then unambiguous ones in another case
        for image in images:
            for base, meant in claims(image):
                for name in by_base.get(base.lower(), []):
                    if name not in owners and (name[:-4] == base if exact else len(meant) == 1):
                        owners[name] = image
    targets: dict[str, list[str]] = {image: [] for image in images}
    for image in images:
        targets[image] = sorted((name for name, owner in owners.items() if owner == image),
                                key=lambda name: name[:-4].lower() != image.lower())
    taken = set(existing) | {name for names in targets.values() for name in names}
    for image in images:
        if targets[image]:
            continue
        stem = os.path.splitext(image)[0]
        style = naming
        if style == "auto":
            adobe, darktable = styles.get(os.path.dirname(image), [0, 0])
            style = "darktable" if darktable > adobe else "adobe"
        choices = ([stem + ".xmp"] if style == "adobe" and len(stems[stem.lower()]) == 1 else []) + [image + ".xmp"]
        free = [name for name in choices if name not in taken]
        if free:
            targets[image] = free[:1]
            taken.add(free[0])
    return targets


def parse(data: bytes) -> tuple[ET.Element, ET.Element, tuple[int, int | None], dict[str, str]]:
    """The packet's root and rdf:RDF elements, comments and processing instructions kept, where the
    root starts and ends in ``data`` (so that what surrounds it, the xpacket wrapper and comments, is
    written back as it was), and the file's own prefixes (prefix -> URI), to write it back with.
    One pass of expat, ElementTree's own parser, into its TreeBuilder; XML nested deeper than
    ``MAX_DEPTH`` is refused before it is built."""
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    builder = ET.TreeBuilder(insert_comments=True, insert_pis=True)
    prefixes: dict[str, str] = {}
    depth, span = 0, [None, None]

    def name(raw: str) -> str:  # expat's "URI}local" as ElementTree's "{URI}local"
        return "{" + raw if "}" in raw else raw

    def start(raw, attributes):
        nonlocal depth
        if depth == 0:
            span[0] = parser.CurrentByteIndex
        depth += 1
        if depth > MAX_DEPTH:
            raise UnreadableSidecar(f"elements nested more than {MAX_DEPTH} deep")
        builder.start(name(raw), {name(key): value for key, value in attributes.items()})

    def end(raw):
        nonlocal depth
        builder.end(name(raw))
        depth -= 1
        if depth == 0:
            at = parser.CurrentByteIndex
            span[1] = data.index(b">", at) + 1 if data[at:at + 2] == b"</" else None

    def declared(prefix, uri):
        if prefix and not re.fullmatch(r"ns\d+", prefix):
            prefixes[prefix] = uri

    parser.StartElementHandler, parser.EndElementHandler, parser.StartNamespaceDeclHandler = start, end, declared
    parser.CharacterDataHandler, parser.CommentHandler, parser.ProcessingInstructionHandler = builder.data, builder.comment, builder.pi
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise UnreadableSidecar(f"not XML ({error})") from None
    root = builder.close()
    rdf = NAMESPACES["rdf"]
    holder = root if root.tag == f"{{{rdf}}}RDF" else root.find(f".//{{{rdf}}}RDF")
    if holder is None:
        raise UnreadableSidecar("no rdf:RDF element")
    return root, holder, (span[0], span[1]), prefixes


def serialise(root: ET.Element, prefixes: dict[str, str]) -> bytes:
    """``root`` as XML with these prefixes (a namespace without one gets ``ns0``, ``ns1``, ...),
    declared on the root element. The names are written out qualified in a copy of the tree, so
    ElementTree's process-wide prefix map is neither read nor changed. A carriage return in a value
    (a caption's line ends, written ``&#13;``) is written as ``&#13;`` again: XML reads a bare one as
    a line feed."""
    prefix_of = {uri: prefix for prefix, uri in prefixes.items()}
    used: dict[str, str] = {}

    def qualified(name: str) -> str:
        if not name.startswith("{"):
            return name
        uri, local = name[1:].split("}", 1)
        if uri == XML_NAMESPACE:
            return f"xml:{local}"
        if uri not in prefix_of:
            prefix_of[uri] = next(f"ns{n}" for n in itertools.count() if f"ns{n}" not in used and f"ns{n}" not in prefixes)
        used[prefix_of[uri]] = uri
        return f"{prefix_of[uri]}:{local}"

    tree = copy.deepcopy(root)
    for element in tree.iter():
        if isinstance(element.tag, str):  # not a comment or processing instruction
            element.tag = qualified(element.tag)
            element.attrib = {qualified(key): value for key, value in element.attrib.items()}
    tree.attrib = {**{f"xmlns:{prefix}": used[prefix] for prefix in sorted(used)}, **tree.attrib}
    return ET.tostring(tree, encoding="unicode").replace("\r", "&#13;").encode()


def tag(prefix: str, name: str) -> str:
    return f"{{{NAMESPACES[prefix]}}}{name}"


def property_of(holder: ET.Element, prefix: str, name: str) -> str | None:
    """A property of any rdf:Description, written as an attribute or as an element."""
    for description in holder.findall(tag("rdf", "Description")):
        if tag(prefix, name) in description.attrib:
            return description.attrib[tag(prefix, name)].strip()
        element = description.find(tag(prefix, name))
        if element is not None and element.text is not None:
            return element.text.strip()
    return None


def read_rating(data: bytes) -> dict:
    """``rating`` (-1 rejected, 0 unrated, 1-5 stars, or None), ``label`` (colour) and ``pick``
    (digiKam: 1 rejected, 3 accepted) of an XMP packet, and which of these beholder set itself
    (``set_by_beholder``: Rating, Label, PickLabel; it records what it sets); a value that is none
    of these is refused."""
    _, holder, _, _ = parse(data)
    rating, pick = property_of(holder, "xmp", "Rating"), property_of(holder, "digiKam", "PickLabel")
    stars = None
    if rating not in (None, ""):
        if not re.fullmatch(r"-?[0-9]{1,3}(\.[0-9]{1,6})?", rating) or not -1 <= float(rating) <= 5:
            raise UnreadableSidecar(f"xmp:Rating {rating[:40]!r} is not a rating from -1 to 5")
        stars = round(float(rating))
    if pick not in (None, "") and not re.fullmatch(r"[0-9]", pick):
        raise UnreadableSidecar(f"digiKam:PickLabel {pick[:40]!r} is not a pick label (0-9)")
    present = {name: property_of(holder, prefix, name) for prefix, name in RATING_FIELDS}
    set_by_beholder = {name for name, value in present.items() if value not in (None, "") and value == property_of(holder, "beholder", f"Set{name}")}
    return {"rating": stars, "label": property_of(holder, "xmp", "Label") or "", "pick": int(pick) if pick else None,
            "set_by_beholder": set_by_beholder}


def embedded_packet(data) -> bytes | None:
    """The XMP packet inside an image file (JPEG APP1, TIFF/DNG tag 700, ...), found by its markers
    (``data``: bytes or an mmap). One pass: each marker is looked for once from where the last was."""
    start = data.find(PACKET_START)
    while start >= 0:
        after = data[start + len(PACKET_START):start + len(PACKET_START) + 1]
        if after == b">" or after.isspace():
            end = data.find(PACKET_END, start)
            if end < 0:
                return None
            end += len(PACKET_END)
            if end - start > MAX_BYTES:
                raise UnreadableSidecar(f"an XMP packet of {end - start} bytes, more than {MAX_BYTES}")
            return bytes(data[start:end])
        start = data.find(PACKET_START, start + 1)
    return None


def packet_in_file(path: str) -> bytes | None:
    """The XMP packet inside an image file, searched in place (mapped, not read into memory); only
    regular files are opened (:func:`beholder.core.storage.regular_file`)."""
    with regular_file(path) as (fd, size):
        if size == 0:
            return None
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
            return embedded_packet(mapped)


def reason(error: Exception) -> str:
    """Why a sidecar or image could not be used, in a few words (an OSError's text without its path)."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def star_rating(rank: int, kept: int, band: str) -> int:
    """Kept images get 5 stars (their best 10 %), 4 (next 20 %) or 3; those to review 2; rejected 1."""
    if band != "keep":
        return 2 if band == "review" else 1
    share = (rank - 1) / max(kept, 1)
    return 5 if share < 0.1 else 4 if share < 0.3 else 3


def set_keywords(holder: ET.Element, description: ET.Element, keywords) -> None:
    """beholder's ``keywords`` in each of :data:`KEYWORD_BAGS` (an rdf:Bag, made where there is none),
    replacing the ones of an earlier run; every other entry stays as it is."""
    for (prefix, name), form in KEYWORD_BAGS:
        ours = form.format("")
        bags = [bag for element in holder.iter(tag(prefix, name)) for bag in element.findall(tag("rdf", "Bag"))]
        for bag in bags:
            for item in bag.findall(tag("rdf", "li")):
                if (item.text or "").startswith(ours):
                    bag.remove(item)
        if not keywords:
            continue
        if not bags:
            bags = [ET.SubElement(ET.SubElement(description, tag(prefix, name)), tag("rdf", "Bag"))]
        for keyword in keywords:
            ET.SubElement(bags[0], tag("rdf", "li")).text = form.format(keyword)
    for prefix, name in (bag for bag, _ in KEYWORD_BAGS):  # a bag left empty by beholder goes
        for element in holder.iter(tag("rdf", "Description")):
            for child in element.findall(tag(prefix, name)):
                if all(len(bag) == 0 for bag in child.findall(tag("rdf", "Bag"))) and not (child.text or "").strip() and len(child):
                    element.remove(child)


def xmp_sidecar(rating: int, band: str, score: float, existing: bytes | None = None, overwrite_ratings: bool = False,
                keywords: tuple[str, ...] = (), stars: bool = False) -> bytes:
    """An XMP packet with beholder's decision: the star rating (``xmp:Rating``), a colour label
    (Green = keep, Yellow = review, Red = reject; ``xmp:Label``), digiKam's pick label (3 accepted,
    0 none, 1 rejected) and beholder's own fields (score, band). Lightroom, darktable and digiKam read
    these. ``existing``: a sidecar already there. Everything in it stays; the rating, label and pick
    are set only where the photographer has set none (beholder remembers what it set, so a later run
    updates its own), unless ``overwrite_ratings``. One the photographer changed or cleared after
    beholder set it is theirs from then on (``beholder:Yielded`` names it), cleared or not. A photo
    the photographer rated is theirs to judge: beholder gives it no label or pick of its own (and
    takes back one it gave before they rated it), so a soft photo they rated 5 stars is not marked
    rejected, nor their 2 stars marked kept.
    ``keywords``: why beholder judged it so (``out of focus``), under its own name in the keyword
    bags the tools filter on (:func:`set_keywords`). ``stars=False`` (what predict and ``ratings
    write`` do unless asked): no star rating from beholder, and one it wrote before is taken back,
    so that a star filter in the photographer's tool shows their own stars only."""
    label, pick = BAND_LABELS[band]
    ours = dict(zip(RATING_FIELDS, (str(rating), label, str(pick))))
    root, holder, (start, end), prefixes = parse(existing or EMPTY_XMP)
    description = holder.find(tag("rdf", "Description"))
    if description is None:
        description = ET.SubElement(holder, tag("rdf", "Description"), {tag("rdf", "about"): ""})
    values = {("beholder", "Score"): f"{score:.6f}", ("beholder", "Band"): band, ("beholder", "Keep"): str(band == "keep").lower()}
    yielded = set((property_of(holder, "beholder", "Yielded") or "").split())
    dropped = []
    their_stars, stars_set_before = property_of(holder, "xmp", "Rating"), property_of(holder, "beholder", "SetRating")
    rated = their_stars not in (None, "", *UNSET["Rating"]) and (their_stars != stars_set_before or "Rating" in yielded)
    for prefix, name in RATING_FIELDS:
        present, set_before = property_of(holder, prefix, name), property_of(holder, "beholder", f"Set{name}")
        if name == "Rating" and not stars:
            if set_before is not None:  # beholder's stars of an earlier run go; the photographer's stay
                dropped += [("beholder", "SetRating")] + ([(prefix, name)] if present == set_before else [])
            continue
        if rated and name != "Rating" and not overwrite_ratings and name not in yielded:
            if set_before is not None:  # beholder's own from before the photographer rated it goes; theirs stays
                dropped += [("beholder", f"Set{name}")] + ([(prefix, name)] if present == set_before else [])
            continue
        if overwrite_ratings or (name not in yielded and (present == set_before or (set_before is None and present in (None, "", *UNSET.get(name, ()))))):
            values[(prefix, name)] = values[("beholder", f"Set{name}")] = ours[(prefix, name)]
            yielded.discard(name)
        elif set_before is not None:  # the photographer changed or cleared what beholder had set: theirs from now on
            dropped.append(("beholder", f"Set{name}"))
            yielded.add(name)
    if yielded:
        values[("beholder", "Yielded")] = " ".join(sorted(yielded))
    else:
        dropped.append(("beholder", "Yielded"))
    for prefix, name in [*values, *dropped]:
        for element in holder.iter(tag("rdf", "Description")):  # the same property in another form or Description
            element.attrib.pop(tag(prefix, name), None)
            for child in element.findall(tag(prefix, name)):
                element.remove(child)
    for (prefix, name), value in values.items():
        description.set(tag(prefix, name), value)
    set_keywords(holder, description, keywords)
    body = serialise(root, {**prefixes, **NAMESPACES})
    if not existing:
        return WRAPPER[0].encode() + body + WRAPPER[1].encode()
    before, after = existing[:start], existing[end:] if end is not None else b""
    return ((before if b"<?xpacket" in before else before + WRAPPER[0].encode()) + body
            + (after if b"<?xpacket" in after else WRAPPER[1].encode() + after))


MERGE_ATTEMPTS = 5  # reads and merges of one sidecar that another program keeps writing meanwhile


def write_sidecars(store, rows: list[dict], targets: dict[str, list[str]], kept: int, overwrite_ratings: bool = False,
                   gallery: str | None = None, folder: str | None = None, stars: bool = False) -> dict:
    """Each row's (image, rank, band, score) decision merged into each of its sidecars at
    ``targets[image]`` (written whole or not at all, keeping the file's permissions). A new sidecar
    of an image in a local ``gallery`` starts from the XMP inside the image, so the rating and
    keywords the photographer put there are the sidecar's too (tools that read the sidecar would
    otherwise see beholder's stars instead). Returns how many were ``created`` and ``merged`` into,
    and why each one ``left_alone`` was: not XMP, read-only, not a regular file, not writable,
    outside ``folder`` (a local folder every write stays in, links followed), or written by another
    program on every attempt to merge into it. A sidecar that already holds exactly this decision is
    ``unchanged`` (not written again). ``stars``: also star ratings for the unrated (:func:`xmp_sidecar`).
    A sidecar that is a link is written where it points.
    Temporary files that an earlier, killed run left in these folders are removed first."""
    left_alone, cleaned, counts = [], set(), {"created": 0, "merged": 0, "unchanged": 0}
    for row in rows:
        for target in targets[row["image"]]:
            try:
                if not is_s3(target):
                    target = real_target(target, folder)
                    if os.path.dirname(target) not in cleaned:
                        cleaned.add(os.path.dirname(target))
                        remove_stale_temporaries(os.path.dirname(target) or ".")
                image = os.path.join(gallery, row["image"]) if gallery and not is_s3(gallery) else None
                counts[merge_sidecar(store, target, row, kept, overwrite_ratings, image, stars)] += 1
            except (UnreadableSidecar, OSError, RecursionError) as error:
                left_alone.append(f"{target}: {reason(error)}")
    return {**counts, "left_alone": left_alone}


def real_target(target: str, folder: str | None) -> str:
    """Where a local sidecar is really written: a link's target (the link stays a link), refused when
    that is outside ``folder`` (a sub-folder linked to another library, a sidecar linked elsewhere)."""
    if folder is not None and not within(folder, target):
        raise UnreadableSidecar(f"reached through a link to {os.path.dirname(os.path.realpath(target))}, outside {folder}; "
                                "nothing is written there")
    return os.path.realpath(target) if os.path.islink(target) else target


def merge_sidecar(store, target: str, row: dict, kept: int, overwrite_ratings: bool, image: str | None, stars: bool = False) -> str:
    """Read, merge and write one sidecar, and again when another program wrote it meanwhile (the
    write checks the file still holds what was read): ``created``, ``merged`` or ``unchanged``."""
    for attempt in range(MERGE_ATTEMPTS):
        existing = read_existing(store, target)
        base = existing or (inside_packet(image) if image else None)
        packet = xmp_sidecar(star_rating(row["rank"], kept, row["band"]), row["band"], row["score"], base, overwrite_ratings,
                             tuple(row.get("keywords", ())), stars)
        if packet == existing:
            return "unchanged"
        try:
            store.write(target, packet, expect=existing)
            return "created" if existing is None else "merged"
        except ChangedMeanwhile:
            if attempt == MERGE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def inside_packet(image: str) -> bytes | None:
    """The XMP inside an image file, if it has one that can be read."""
    try:
        packet = packet_in_file(image)
        if packet:
            parse(packet)
        return packet
    except (UnreadableSidecar, OSError, ValueError):
        return None


def read_existing(store, target: str) -> bytes | None:
    """The sidecar at ``target``, None if there is none; a read-only one is refused (the
    photographer locked it), as is anything but a regular file of at most ``MAX_BYTES``."""
    if is_s3(target):
        return store.read(target) if store.exists(target) else None
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return None
    if info.st_mode & 0o222 == 0:
        raise UnreadableSidecar("read-only")
    return read_local_file(target, MAX_BYTES)
