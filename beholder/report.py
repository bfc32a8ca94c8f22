"""What prediction hands to people and photo tools: scores.csv, skipped.csv, a contact sheet, XMP."""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from beholder.images import UnreadableImage, decode_image


def scores_csv(ranked: list[dict], probability_names: list[str]) -> bytes:
    """``ranked``: rows best first, each with image, score, tier, probabilities, keep, rank."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "score", "tier", *probability_names, "keep", "rank"])
    for row in ranked:
        probabilities = [f"{p:.4f}" for p in row["probabilities"]] if probability_names else []
        writer.writerow([row["image"], f"{row['score']:.6f}", row["tier"], *probabilities, str(row["keep"]).lower(), row["rank"]])
    return buffer.getvalue().encode()


def skipped_csv(skipped: dict[str, str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "reason"])
    writer.writerows(sorted(skipped.items()))
    return buffer.getvalue().encode()


def star_rating(rank: int, kept: int, keep: bool) -> int:
    """1 star for a rejected image; kept ones get 5 (their best 10 %), 4 (next 20 %), 3 (next 30 %)
    or 2 stars."""
    if not keep:
        return 1
    share = (rank - 1) / max(kept, 1)
    return 5 if share < 0.1 else 4 if share < 0.3 else 3 if share < 0.6 else 2


XMP_NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "beholder": "https://github.com/beholder/ns/1.0/",
}
EMPTY_XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'


class UnreadableSidecar(ValueError):
    """An existing sidecar that is not XMP we can merge into: it is left as it is."""


def sidecar_names(images: list[str]) -> dict[str, str]:
    """Each image's sidecar path: ``<path without extension>.xmp`` (what Lightroom reads), or
    ``<path>.xmp`` (darktable's and digiKam's form) for images that share a stem, such as
    ``dup.jpg`` and ``dup.png``, so that no two images write one sidecar (case-insensitively)."""
    stems: dict[str, int] = {}
    for image in images:
        stem = os.path.splitext(image)[0].lower()
        stems[stem] = stems.get(stem, 0) + 1
    return {image: (os.path.splitext(image)[0] if stems[os.path.splitext(image)[0].lower()] == 1 else image) + ".xmp" for image in images}


def xmp_sidecar(rating: int, keep: bool, score: float, existing: bytes | None = None) -> bytes:
    """An XMP packet with the star rating (``xmp:Rating``), a colour label (Green = keep, Red =
    reject; ``xmp:Label``) and digiKam's pick label (3 accepted, 1 rejected). Lightroom, darktable
    and digiKam read these. ``existing``: a sidecar already there, whose other properties
    (keywords, edits, the photographer's own fields) are kept; only these fields are replaced."""
    label, pick = ("Green", 3) if keep else ("Red", 1)
    values = {("xmp", "Rating"): str(rating), ("xmp", "Label"): label, ("digiKam", "PickLabel"): str(pick),
              ("beholder", "Score"): f"{score:.6f}", ("beholder", "Keep"): str(keep).lower()}
    data = existing or EMPTY_XMP
    try:
        for _, (prefix, uri) in ET.iterparse(io.BytesIO(data), events=("start-ns",)):
            if prefix and not re.fullmatch(r"ns\d+", prefix):
                ET.register_namespace(prefix, uri)  # write the file's own prefixes back
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise UnreadableSidecar(f"not XML ({error})") from None
    for prefix, uri in XMP_NAMESPACES.items():
        ET.register_namespace(prefix, uri)
    rdf = XMP_NAMESPACES["rdf"]
    holder = root if root.tag == f"{{{rdf}}}RDF" else root.find(f".//{{{rdf}}}RDF")
    if holder is None:
        raise UnreadableSidecar("no rdf:RDF element")
    description = holder.find(f"{{{rdf}}}Description")
    if description is None:
        description = ET.SubElement(holder, f"{{{rdf}}}Description", {f"{{{rdf}}}about": ""})
    for (prefix, name), value in values.items():
        tag = f"{{{XMP_NAMESPACES[prefix]}}}{name}"
        for element in description.findall(tag):  # the same property written as an element
            description.remove(element)
        description.set(tag, value)
    body = ET.tostring(root, encoding="unicode")
    return f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n{body}\n<?xpacket end="w"?>\n'.encode()


def thumbnail(data: bytes, max_width: int = 900, max_height: int = 220) -> tuple[str, int, int] | None:
    """A JPEG data URI of the image scaled to fit, with its width and height; None if unreadable."""
    try:
        image = decode_image(data, min_size=(max_width // 4, max_height // 4))
    except UnreadableImage:
        return None
    image.thumbnail((max_width, max_height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), *image.size


def highlights_html(sections: list[tuple[str, list[dict]]], read, summary: str) -> bytes:
    """A self-contained contact sheet: each section a title and rows (image, score, rank, keep);
    ``read(image)`` gives an image's bytes. Wide images (panoramas) take a whole row."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>beholder highlights</title><style>",
        "body{font-family:sans-serif;background:#222;color:#eee;margin:1em}",
        ".sheet{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;background:#333;padding:4px}",
        "figure.wide{flex-basis:100%}figure.wide img{width:100%;height:auto}",
        "img{display:block;max-height:220px}figcaption{font-size:12px;padding-top:2px;word-break:break-all}",
        ".reject{outline:3px solid #c33}.keep{outline:3px solid #3a3}</style></head><body>",
        f"<h1>beholder highlights</h1><p>{html.escape(summary)}</p>",
    ]
    for title, rows in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><div class='sheet'>")
        for row in rows:
            picture = thumbnail(read(row["image"]))
            if picture is None:
                continue
            uri, width, height = picture
            wide = " wide" if width > 2.5 * height else ""
            state = "keep" if row["keep"] else "reject"
            caption = f"#{row['rank']} · {row['score']:.3f} · {row['image']}"
            parts.append(
                f"<figure class='{state}{wide}' data-image={quoteattr(row['image'])}>"
                f"<img src='{uri}' alt={quoteattr(row['image'])}><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts).encode()

