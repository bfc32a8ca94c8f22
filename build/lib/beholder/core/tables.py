"""The one CSV writer: every table beholder writes (scores, skipped, labels, manifests, sweep
summaries) is UTF-8, comma-separated, a header row first, lines ending in ``\\n``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable


def csv_text(fields: list[str], rows: Iterable[dict], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def csv_bytes(fields: list[str], rows: Iterable[dict]) -> bytes:
    return csv_text(fields, rows).encode()
