"""The optional parts of beholder and the extra that installs each: camera RAW and HEIC files
(``formats``), the labeller's and the review's web pages (``web``), FAISS search for large galleries
(``index``). ``pip install 'beholder[all]'`` installs them all; without one, what needs it says so in one line."""

from __future__ import annotations

EXTRAS = {"rawpy": "formats", "pillow_heif": "formats", "fastapi": "web", "uvicorn": "web", "pydantic": "web", "faiss": "index"}


def needs(module: str) -> str:
    """What to install for ``module``, one of :data:`EXTRAS`."""
    return f"needs {module}: pip install 'beholder[{EXTRAS[module]}]'"
