"""A contact sheet: sections of photos as thumbnails with captions, outlined by band. predict's
highlights.html and similar's similar.html are both one."""

from __future__ import annotations

import base64
import html
import io
from xml.sax.saxutils import quoteattr

from beholder.data.images import UnreadableImage, decode_image

READABLE_REASONS = {"lowest": "among your lowest ratings", "burst": "lesser frame of a burst", "rated": "your rating"}
BAND_COLOURS = {"keep": "#3a3", "review": "#db3", "reject": "#c33"}


def thumbnail(data: bytes | None, max_width: int = 900, max_height: int = 220) -> tuple[str, int, int] | None:
    """A JPEG data URI of the image scaled to fit, with its width and height; None if unreadable
    (or ``data`` is None)."""
    if data is None:
        return None
    try:
        image = decode_image(data, min_size=(max_width // 4, max_height // 4))
    except UnreadableImage:
        return None
    image.thumbnail((max_width, max_height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(), *image.size


def highlights_html(sections: list[tuple[str, list[dict]]], read, summary: str, histogram: str = "", title: str = "beholder highlights") -> bytes:
    """A self-contained contact sheet: the score histogram, then each section a title and rows
    (image, score, rank, band, and ``hidden``: near-copies culled; or a ``caption`` of its own); ``read(image)`` gives an image's bytes
    (None: not shown). Wide images (panoramas) take a whole row."""
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
            try:
                picture = thumbnail(read(row["image"]))
            except OSError:  # deleted since it was scored
                picture = None
            if picture is None:
                continue
            uri, width, height = picture
            wide = " wide" if width > 2.5 * height else ""
            hidden = f" · +{row['hidden']} near-cop{'y' if row['hidden'] == 1 else 'ies'} hidden" if row.get("hidden") else ""
            why = f" · {READABLE_REASONS.get(row['reason'], row['reason'])}" if row.get("reason") not in ("", "score", None) else ""
            caption = row.get("caption") or f"#{row['rank']} · {row['score']:.3f} · {row['band']}{why}{hidden} · {row['image']}"
            parts.append(
                f"<figure class='{row['band']}{wide}' data-image={quoteattr(row['image'])}>"
                f"<img src='{uri}' alt={quoteattr(row['image'])}><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts).encode()
