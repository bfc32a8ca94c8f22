"""The one CSV writer and its reader: every table beholder writes (scores, skipped, labels, manifests,
sweep summaries) is UTF-8, comma-separated, a header row first, lines ending in ``\\n``.

Two things a file name can hold are made safe on the way out and undone on the way in
(:func:`read_csv`): a carriage return (the csv module quotes a field only for the characters of its
own line ending, and a bare CR would end the row for every reader), and a leading ``=``, ``+``,
``-``, ``@``, tab or CR, which a spreadsheet opening scores.csv runs as a formula
(``=HYPERLINK(...)``): such a text gets a ``'`` in front, as spreadsheets themselves write it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def cell(value):
    """A value as written: a text a spreadsheet would run as a formula gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not is_number(value):
        return "'" + value
    return value


def uncell(text: str | None) -> str | None:
    """A cell as beholder wrote it, back to its value (:func:`cell` undone)."""
    if text and text.startswith("'") and text[1:].startswith(FORMULA_STARTS) and not is_number(text[1:]):
        return text[1:]
    return text


def csv_text(fields: list[str], rows: Iterable[dict], header: bool = True) -> str:
    buffer = io.StringIO()
    plain = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    quoted = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", quoting=csv.QUOTE_ALL)
    if header:
        plain.writeheader()
    for row in rows:
        row = {key: cell(value) for key, value in row.items()}
        carriage_return = any(isinstance(value, str) and "\r" in value for value in row.values())
        (quoted if carriage_return else plain).writerow(row)
    return buffer.getvalue()


def csv_bytes(fields: list[str], rows: Iterable[dict]) -> bytes:
    return csv_text(fields, rows).encode()


def read_csv(text: str) -> tuple[list[str], list[dict]]:
    """The header and the rows of a table beholder wrote (or one of the same form), each cell as it
    was meant (:func:`uncell`); a row longer than the header holds its extra cells under None."""
    columns, rows = csv_rows(io.StringIO(text, newline=""))
    return columns, list(rows)


def csv_rows(lines: Iterable[str]) -> tuple[list[str], Iterator[dict]]:
    """:func:`read_csv` a line at a time (a file opened with ``newline=""``): the header, and the rows
    as they are read, so that a table larger than memory is never held whole."""
    reader = csv.DictReader(lines)
    columns = list(reader.fieldnames or [])
    return columns, ({key: uncell(value) if isinstance(value, str) else value for key, value in row.items()} for row in reader)
