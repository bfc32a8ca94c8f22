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


GROUP_FIELDS = ["group", "group_rank", "group_size"]


def scores_csv(ranked: list[dict], probability_names: list[str]) -> bytes:
    """``ranked``: rows best first, each with image, score, tier, probabilities, band, reason (of a
    reject: ``score`` or ``burst``), rank, and when grouped, group, group_rank, group_size (``keep``
    is the band ``keep``)."""
    grouped = bool(ranked) and "group" in ranked[0]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "score", "tier", *probability_names, "band", "keep", "reason", "rank", *(GROUP_FIELDS if grouped else [])])
    for row in ranked:
        probabilities = [f"{p:.4f}" for p in row["probabilities"]] if probability_names else []
        writer.writerow([row["image"], f"{row['score']:.6f}", row["tier"], *probabilities, row["band"], str(row["band"] == "keep").lower(),
                         row["reason"], row["rank"], *([row[field] for field in GROUP_FIELDS] if grouped else [])])
    return buffer.getvalue().encode()


def skipped_csv(skipped: dict[str, str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "reason"])
    writer.writerows(sorted(skipped.items()))
    return buffer.getvalue().encode()


def star_rating(rank: int, kept: int, band: str) -> int:
    """Kept images get 5 stars (their best 10 %), 4 (next 20 %) or 3; those to review 2; rejected 1."""
    if band != "keep":
        return 2 if band == "review" else 1
    share = (rank - 1) / max(kept, 1)
    return 5 if share < 0.1 else 4 if share < 0.3 else 3


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


BAND_LABELS = {"keep": ("Green", 3), "review": ("Yellow", 0), "reject": ("Red", 1)}  # colour, digiKam pick


def xmp_sidecar(rating: int, band: str, score: float, existing: bytes | None = None) -> bytes:
    """An XMP packet with the star rating (``xmp:Rating``), a colour label (Green = keep, Yellow =
    review, Red = reject; ``xmp:Label``) and digiKam's pick label (3 accepted, 0 none, 1 rejected).
    Lightroom, darktable and digiKam read these. ``existing``: a sidecar already there, whose other
    properties (keywords, edits, the photographer's own fields) are kept; only these fields change."""
    label, pick = BAND_LABELS[band]
    values = {("xmp", "Rating"): str(rating), ("xmp", "Label"): label, ("digiKam", "PickLabel"): str(pick),
              ("beholder", "Score"): f"{score:.6f}", ("beholder", "Band"): band, ("beholder", "Keep"): str(band == "keep").lower()}
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


BAND_COLOURS = {"keep": "#3a3", "review": "#db3", "reject": "#c33"}


def score_histogram_svg(scores: list[float], keep_at: float, reject_below: float, bins: int = 40) -> str:
    """An inline SVG histogram of the scores, bars coloured by band, the two thresholds marked."""
    width, height, low, high = 720, 140, min(scores), max(scores)
    span = (high - low) or 1.0
    counts = [0] * bins
    for score in scores:
        counts[min(int((score - low) / span * bins), bins - 1)] += 1
    tallest, step = max(counts), width / bins
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 20}' role='img' "
             f"aria-label='score distribution'><rect width='100%' height='100%' fill='#2a2a2a'/>"]
    for i, count in enumerate(counts):
        middle = low + (i + 0.5) * span / bins
        band = "keep" if middle >= keep_at else "review" if middle >= reject_below else "reject"
        bar = count / tallest * height
        parts.append(f"<rect x='{i * step:.1f}' y='{height - bar:.1f}' width='{step - 1:.1f}' height='{bar:.1f}' "
                     f"fill='{BAND_COLOURS[band]}'><title>{count} images near {middle:.3f}</title></rect>")
    marks = [(keep_at, "threshold", 12)] if keep_at == reject_below else [(keep_at, "keep from", 12), (reject_below, "reject below", height + 14)]
    for value, name, y in marks:  # two labels on two rows, so that close thresholds stay readable
        if low <= value <= high:
            x = (value - low) / span * width
            anchor = "end" if x > width / 2 else "start"
            parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='0' y2='{height}' stroke='#fff' stroke-dasharray='4 3'/>"
                         f"<text x='{x + (-3 if anchor == 'end' else 3):.1f}' y='{y}' text-anchor='{anchor}' fill='#eee' "
                         f"font-size='11'>{name} {value:.3f}</text>")
    parts.append("</svg>")
    return "".join(parts)


def highlights_html(sections: list[tuple[str, list[dict]]], read, summary: str, histogram: str = "", title: str = "beholder highlights") -> bytes:
    """A self-contained contact sheet: the score histogram, then each section a title and rows
    (image, score, rank, band, and ``hidden``: near-copies culled); ``read(image)`` gives an image's bytes. Wide images (panoramas) take a whole row."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;background:#222;color:#eee;margin:1em}",
        ".sheet{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;background:#333;padding:4px}",
        "figure.wide{flex-basis:100%}figure.wide img{width:100%;height:auto}",
        "img{display:block;max-height:220px}figcaption{font-size:12px;padding-top:2px;word-break:break-all}",
        "".join(f".{band}{{outline:3px solid {colour}}}" for band, colour in BAND_COLOURS.items()),
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>{histogram}",
    ]
    for title, rows in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><div class='sheet'>")
        for row in rows:
            picture = thumbnail(read(row["image"]))
            if picture is None:
                continue
            uri, width, height = picture
            wide = " wide" if width > 2.5 * height else ""
            hidden = f" · +{row['hidden']} near-cop{'y' if row['hidden'] == 1 else 'ies'} hidden" if row.get("hidden") else ""
            caption = f"#{row['rank']} · {row['score']:.3f} · {row['band']}{hidden} · {row['image']}"
            parts.append(
                f"<figure class='{row['band']}{wide}' data-image={quoteattr(row['image'])}>"
                f"<img src='{uri}' alt={quoteattr(row['image'])}><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts).encode()
