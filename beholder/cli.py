"""The beholder command: one word per step, each a module's ``main``.

train and predict are Hydra applications (``key=value`` overrides, ``-m`` to sweep) and get their
arguments untouched; the others take ``--flags``. Only the command asked for is imported, so the
light ones (ratings, label export, ingest, demo), ``--help`` and a misread option start without torch.
"""

from __future__ import annotations

import importlib
import sys

from beholder.core.extras import EXTRAS, needs
from beholder.core.vocabulary import note

# words -> (module, its main function, what it does)
COMMANDS = {
    "train": ("beholder.train.cli", "main", "train a model on labelled photos (Hydra: gallery=... labels=... head=..., -m sweeps)"),
    "predict": ("beholder.predict.cli", "main", "score a gallery: keep / review / reject, best first (Hydra: gallery=... output=... ckpt=...)"),
    "label": ("beholder.label.cli", "main", "label a gallery in the browser, round by round"),
    "label export": ("beholder.label.export", "main", "the labeller's database as a labels CSV for beholder train"),
    "review": ("beholder.label.cli", "review", "confirm or overturn a model's decisions in the browser"),
    "ratings": ("beholder.ratings.cli", "main", "star ratings: import them as labels, or write scores into XMP sidecars"),
    "similar": ("beholder.search.cli", "main", "the photos most like one, from a predict output's embeddings"),
    "ingest": ("beholder.data.ingest", "main", "copy a web archive (folder listings) to S3 or a folder"),
    "demo": ("beholder.data.demo", "main", "make the demo gallery of synthetic webcam panoramas"),
}
HYDRA = ("train", "predict")
RENAMED = {"label review": "review"}  # what python -m beholder.label review was


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: beholder COMMAND [ARGS ...]   (beholder COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {words:<{width}}  {about}" for words, (_, _, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    words = " ".join(argv[:2])
    if words in RENAMED:
        note(f"'{words}' is now 'beholder {RENAMED[words]}'")
        words, argv = RENAMED[words], [RENAMED[words], *argv[2:]]
    elif words not in COMMANDS:
        words = argv[0]
    if words not in COMMANDS:
        print(f"beholder: error: no command {argv[0]!r}; the commands: {', '.join(c for c in COMMANDS if ' ' not in c)}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[words]
    rest = argv[len(words.split()):]
    try:
        entry = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as error:  # an optional part not installed (beholder/core/extras.py)
        if error.name not in EXTRAS:
            raise
        print(f"beholder: error: beholder {words} {needs(error.name)}", file=sys.stderr)
        return 2
    if words in HYDRA:  # Hydra reads sys.argv itself
        sys.argv = [f"beholder {words}", *rest]
        entry()
        return 0
    return entry(rest, prog=f"beholder {words}") or 0


if __name__ == "__main__":
    sys.exit(main())
